"""Modality-specific backbones: ViT (video), WaT / SpT (audio) and the text models (T5, BERT-style, linear).

Video and audio backbones share one recipe (`vitx3d.py`, `autx1d.py`, `autx2d.py`):
    tokenize -> [pre_proj] -> + positional code -> DropToken -> prepend AGG token -> Transformer
    -> [post_proj] -> split into the pooled AGG output and the token outputs.
The AGG token is prepended after positions and DropToken, so it gets no positional code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vatt.configs import AudioConfig, TextConfig, VideoConfig
from vatt.model.droptoken import DropToken
from vatt.model.outputs import BackboneOutput
from vatt.model.positional import FactorizedPositionalEmbedding
from vatt.model.tokenizers import (SpectrogramPatchEmbedding, VoxelPatchEmbedding, WaveformPatchEmbedding,
                                   WordEmbedding)
from vatt.model.transformer import T5Encoder, TransformerEncoder


class GELUDense(nn.Sequential):
    """Dense(d, activation=gelu) with the exact erf GELU: the official pre/post projections."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__(nn.Linear(d_in, d_out, bias=bias), nn.GELU())


def agg_token(d: int) -> nn.Parameter:
    # Keras glorot_normal on a (d,) vector: fan_in = fan_out = d; a normal truncated at two of its σ, with σ
    # = sqrt(1/d) / 0.8796 so that the truncated values have std sqrt(1/d).
    sigma = d**-0.5 / 0.87962566103423978
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(d), std=sigma, a=-2 * sigma, b=2 * sigma))


class PatchTransformer(nn.Module):
    """A Transformer over patch tokens of one modality, with the official positional code and DropToken."""

    def __init__(self, tokenizer: nn.Module, axes: tuple[str, ...], max_buckets: tuple[int, ...], cfg,
                 droptoken: bool = True):
        super().__init__()
        tx = cfg.transformer
        d = tx.d_model
        self.tokenizer = tokenizer
        self.pre_proj = GELUDense(d, d) if cfg.pre_projection else None
        self.pos_embedding = FactorizedPositionalEmbedding(axes, max_buckets, d, tx.layer_norm_eps,
                                                           cfg.pos_dropout_rate)
        self.droptoken = DropToken(cfg.droptoken, math.prod(max_buckets)) if droptoken else None
        self.agg_token = agg_token(d)
        self.transformer = TransformerEncoder(tx)
        self.post_proj = GELUDense(d, cfg.d_post_proj) if cfg.post_projection else None
        self.d_out = cfg.d_post_proj if cfg.post_projection else d

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        tokens = self.tokenizer(x)  # [B, *grid, D]
        grid = tokens.shape[1:-1]
        if self.pre_proj is not None:
            tokens = self.pre_proj(tokens)
        tokens = self.pos_embedding(tokens)  # [B, N, D]
        if self.droptoken is not None:
            tokens = self.droptoken(tokens)
        b = tokens.shape[0]
        h = torch.cat([self.agg_token.to(tokens.dtype).expand(b, 1, -1), tokens], dim=1)
        h = self.transformer(h)
        if self.post_proj is not None:
            h = self.post_proj(h)
        pooled, features = h[:, 0], h[:, 1:]
        if features.shape[1] == math.prod(grid):  # no tokens dropped: back onto the grid
            features = features.reshape(b, *grid, features.shape[-1])
        return BackboneOutput(features_pooled=pooled, features=features)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.set_grad_checkpointing(enable)


def video_transformer(cfg: VideoConfig) -> PatchTransformer:
    """ViT over 4x16x16 voxel patches; tables temporal 8, vertical 14, horizontal 14 at the official size."""
    d = cfg.transformer.d_model
    return PatchTransformer(
        VoxelPatchEmbedding(d, cfg.temporal_patch_size, cfg.spatial_patch_size),
        ("temporal", "vertical", "horizontal"),
        (cfg.max_temporal_buckets, cfg.max_vertical_buckets, cfg.max_horizontal_buckets),
        cfg,
    )


def audio_transformer(cfg: AudioConfig) -> PatchTransformer:
    """WaT over 128-sample waveform patches, or SpT over 16x5 log-mel patches (SpT has no DropToken)."""
    d = cfg.transformer.d_model
    if cfg.input == "waveform":
        return PatchTransformer(WaveformPatchEmbedding(d, cfg.temporal_patch_size), ("temporal",),
                                (cfg.max_temporal_buckets,), cfg)
    return PatchTransformer(
        SpectrogramPatchEmbedding(d, cfg.temporal_patch_size, cfg.spectral_patch_size, cfg.sample_rate),
        ("temporal", "spectral"), (cfg.max_temporal_buckets, cfg.max_spectral_buckets), cfg,
        droptoken=cfg.droptoken.enabled,
    )


class T5TextModel(nn.Module):
    """Official tx_fac text model: frozen word2vec -> prepend AGG (300-d) -> Dense(512, gelu, no bias) -> T5.

    The AGG token lives in the word-embedding space and is always attended. `features_pooled` is the AGG
    output; `features` the word outputs (padding positions are computed normally, not zeroed).
    """

    def __init__(self, cfg: TextConfig):
        super().__init__()
        tx = cfg.transformer
        self.embedding = WordEmbedding(cfg.vocab_size, cfg.d_embedding, cfg.trainable_embeddings)
        self.agg_token = agg_token(cfg.d_embedding)
        self.pre_proj = GELUDense(cfg.d_embedding, tx.d_model, bias=False)
        self.transformer = T5Encoder(tx, cfg.num_relative_buckets, cfg.max_relative_distance)
        self.d_out = tx.d_model

    def forward(self, ids: torch.Tensor) -> BackboneOutput:
        mask = (ids != 0).long()  # pad id 0
        x = self.embedding(ids)
        b = x.shape[0]
        x = torch.cat([self.agg_token.to(x.dtype).expand(b, 1, -1), x], dim=1)
        mask_with_agg = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        h = self.transformer(self.pre_proj(x), mask_with_agg)
        return BackboneOutput(features_pooled=h[:, 0], features=h[:, 1:], attention_mask=mask)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.set_grad_checkpointing(enable)


class BertTextModel(nn.Module):
    """BERT-style text model (`text/bert.py`): learned 1-D positions (16 buckets) and the generic encoder.

    No official BERT checkpoint was released; this follows the code's structure and is not parity-tested.
    """

    def __init__(self, cfg: TextConfig):
        super().__init__()
        tx = cfg.transformer
        self.embedding = WordEmbedding(cfg.vocab_size, cfg.d_embedding, cfg.trainable_embeddings)
        self.pre_proj = GELUDense(cfg.d_embedding, tx.d_model)
        self.pos_embedding = FactorizedPositionalEmbedding(("temporal",), (cfg.max_words,), tx.d_model,
                                                           tx.layer_norm_eps, tx.dropout_rate)
        self.agg_token = agg_token(tx.d_model)
        self.transformer = TransformerEncoder(tx)
        self.d_out = tx.d_model

    def forward(self, ids: torch.Tensor) -> BackboneOutput:
        mask = (ids != 0).long()
        x = self.pos_embedding(self.pre_proj(self.embedding(ids)))
        b = x.shape[0]
        x = torch.cat([self.agg_token.to(x.dtype).expand(b, 1, -1), x], dim=1)
        h = self.transformer(x, torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1))
        return BackboneOutput(features_pooled=h[:, 0], features=h[:, 1:], attention_mask=mask)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.set_grad_checkpointing(enable)


class LinearTextModel(nn.Module):
    """The MMV linear text model: 1x1 Conv1D(2048) -> ReLU -> max over all positions (padding included)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embedding = WordEmbedding(cfg.vocab_size, cfg.d_embedding, cfg.trainable_embeddings)
        self.proj = nn.Linear(cfg.d_embedding, cfg.d_linear)
        self.d_out = cfg.d_linear

    def forward(self, ids: torch.Tensor) -> BackboneOutput:
        h = F.relu(self.proj(self.embedding(ids)))
        return BackboneOutput(features_pooled=h.amax(dim=1), features=h, attention_mask=(ids != 0).long())

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        pass


def text_model(cfg: TextConfig) -> nn.Module:
    return {"t5": T5TextModel, "bert": BertTextModel, "linear": LinearTextModel}[cfg.kind](cfg)
