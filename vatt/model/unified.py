"""The modality-agnostic backbone (`unified/uvatt.py`): one Transformer shared by video, audio and text.

Each modality keeps its own raw tokenizer, Dense+GELU pre-projection, positional tables, AGG token and
Dense+GELU post-projection (applied to every output token); only the encoder is shared. Modalities run
through it separately (no cross-modal attention). Text uses the generic encoder with a padding mask (not
T5) and, like the official code, gets no DropToken.
"""
from __future__ import annotations

import torch
from torch import nn

from vatt.configs import UnifiedConfig
from vatt.model.backbones import GELUDense, agg_token
from vatt.model.droptoken import DropToken
from vatt.model.outputs import BackboneOutput
from vatt.model.positional import FactorizedPositionalEmbedding
from vatt.model.tokenizers import VoxelPatchEmbedding, WaveformPatchEmbedding, WordEmbedding
from vatt.model.transformer import TransformerEncoder

MODALITIES = ("video", "audio", "text")


class UnifiedTransformer(nn.Module):
    def __init__(self, cfg: UnifiedConfig):
        super().__init__()
        tx = cfg.transformer
        d, eps, p = tx.d_model, tx.layer_norm_eps, cfg.pos_dropout_rate
        s = cfg.max_video_spatial_buckets
        self.tokenizers = nn.ModuleDict({
            "video": VoxelPatchEmbedding(d, cfg.video_temporal_patch_size, cfg.video_spatial_patch_size),
            "audio": WaveformPatchEmbedding(d, cfg.audio_temporal_patch_size),
            "text": WordEmbedding(cfg.vocab_size, cfg.d_embedding, cfg.trainable_embeddings),
        })
        self.pre_proj = nn.ModuleDict({"video": GELUDense(d, d), "audio": GELUDense(d, d),
                                       "text": GELUDense(cfg.d_embedding, d)})
        self.pos_embedding = nn.ModuleDict({
            "video": FactorizedPositionalEmbedding(("temporal", "vertical", "horizontal"),
                                                   (cfg.max_video_temporal_buckets, s, s), d, eps, p),
            "audio": FactorizedPositionalEmbedding(("temporal",), (cfg.max_audio_temporal_buckets,), d, eps, p),
            "text": FactorizedPositionalEmbedding(("temporal",), (cfg.max_text_temporal_buckets,), d, eps, p),
        })
        self.droptoken = nn.ModuleDict({
            "video": DropToken(cfg.droptoken, cfg.max_video_temporal_buckets * s * s),
            "audio": DropToken(cfg.droptoken, cfg.max_audio_temporal_buckets),
        })
        self.agg_token = nn.ParameterDict({m: agg_token(d) for m in MODALITIES})
        self.transformer = TransformerEncoder(tx)
        self.post_proj = nn.ModuleDict({m: GELUDense(d, cfg.d_post_proj) for m in MODALITIES})
        self.d_out = cfg.d_post_proj

    def forward(self, x: torch.Tensor, modality: str) -> BackboneOutput:
        tokens = self.pre_proj[modality](self.tokenizers[modality](x))  # [B, *grid, D]
        grid = tokens.shape[1:-1]
        tokens = self.pos_embedding[modality](tokens)  # [B, N, D]
        mask = None
        if modality == "text":
            word_mask = (x != 0).long()
            mask = torch.cat([torch.ones_like(word_mask[:, :1]), word_mask], dim=1)  # AGG is always attended
        else:
            tokens = self.droptoken[modality](tokens)
        b = tokens.shape[0]
        h = torch.cat([self.agg_token[modality].to(tokens.dtype).expand(b, 1, -1), tokens], dim=1)
        h = self.post_proj[modality](self.transformer(h, mask))
        pooled, features = h[:, 0], h[:, 1:]
        if features.shape[1] == grid.numel():
            features = features.reshape(b, *grid, features.shape[-1])
        return BackboneOutput(pooled, features, None if mask is None else mask[:, 1:])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.set_grad_checkpointing(enable)
