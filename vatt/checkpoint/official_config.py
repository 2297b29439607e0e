"""Translate an official (resolved) TF config into our config dataclasses.

Accepts the JSON the official config classes produce with `as_dict()`: either a model config
(`model_config` with `backbone_config` / `head_config`) alongside the resolved backbone configs
(`effective_backbone_configs`, as in the parity folders), or a bare backbone config of a fine-tuning
model (with `num_classes`).
"""
from __future__ import annotations

from typing import Any

from vatt.configs import (AudioConfig, ClassifierConfig, DropTokenConfig, FACHeadConfig, TextConfig,
                          TransformerConfig, UnifiedConfig, VATTConfig, VideoConfig)


def _transformer(c: dict[str, Any], use_bias: bool | None = None) -> TransformerConfig:
    return TransformerConfig(
        d_model=c["d_model"], num_layers=c["num_layers"], num_heads=c["num_heads"], d_ff=c["d_ff"],
        d_kv=c.get("d_kv", 64), dropout_rate=c.get("dropout_rate", 0.1),
        layer_norm_eps=c.get("layer_norm_epsilon", 1e-6),
        use_bias=c.get("use_bias", True) if use_bias is None else use_bias,
    )


def _droptoken(c: dict[str, Any]) -> DropTokenConfig:
    return DropTokenConfig(enabled=c.get("random_patch_sampling", True), keep_rate=c.get("patch_sampling_rate", 0.5))


def _video(c: dict[str, Any]) -> VideoConfig:
    return VideoConfig(
        name=c.get("name", "vit"), transformer=_transformer(c),
        temporal_patch_size=c.get("temporal_patch_size", 4), spatial_patch_size=c.get("spatial_patch_size", 16),
        max_temporal_buckets=c["max_temporal_buckets"], max_vertical_buckets=c["max_vertical_buckets"],
        max_horizontal_buckets=c["max_horizontal_buckets"], droptoken=_droptoken(c),
        pre_projection=c.get("pre_projection", False), post_projection=c.get("post_projection", False),
        d_post_proj=c.get("d_post_proj", 1024),
    )


def _audio(c: dict[str, Any]) -> AudioConfig:
    if c.get("name", "").startswith("spt"):
        raise ValueError("the official SpT (spectrogram) path cannot run (it calls the removed tf.log); "
                         "no SpT checkpoint can exist to convert")
    return AudioConfig(
        name=c.get("name", "wat"), transformer=_transformer(c),
        temporal_patch_size=c.get("temporal_patch_size", 128), max_temporal_buckets=c["max_temporal_buckets"],
        droptoken=_droptoken(c), pre_projection=c.get("pre_projection", False),
        post_projection=c.get("post_projection", False), d_post_proj=c.get("d_post_proj", 1024),
    )


def _text(c: dict[str, Any]) -> TextConfig:
    if not c.get("name", "t5").startswith("t5"):
        raise ValueError(f"only the T5 text model has official checkpoints, got {c.get('name')!r}")
    if c.get("d_pre_proj", c["d_model"]) != c["d_model"]:
        raise ValueError("d_pre_proj must equal d_model for the T5 text model")
    return TextConfig(
        name=c.get("name", "t5_small"), kind="t5", transformer=_transformer(c, use_bias=False),
        vocab_size=c["vocab_size"], d_embedding=c["d_embedding"],
        trainable_embeddings=c.get("trainable_embeddings", False),
        num_relative_buckets=c.get("num_relative_buckets", 32),
        max_relative_distance=c.get("max_relative_distance", 64),
    )


def _head(model_config: dict[str, Any]) -> FACHeadConfig:
    bridge = model_config["head_config"]["bridge"][0]
    bn = bridge.get("bn_config", {})
    return FACHeadConfig(
        d_va=bridge["vid_to_aud_txt_kwargs"]["d_model"], d_vt=bridge["txt_to_vid_aud_kwargs"]["d_model"],
        bn_momentum=1.0 - bn.get("momentum", 0.9), bn_eps=bn.get("epsilon", 1e-5),
    )


def _unified(c: dict[str, Any], head: FACHeadConfig) -> UnifiedConfig:
    return UnifiedConfig(
        name=c.get("name", "ut"), transformer=_transformer(c),
        video_temporal_patch_size=c.get("vid_temporal_patch_size", 4),
        video_spatial_patch_size=c.get("vid_spatial_patch_size", 16),
        max_video_temporal_buckets=c["max_vid_temporal_buckets"],
        max_video_spatial_buckets=c["max_vid_spatial_buckets"],
        audio_temporal_patch_size=c.get("aud_temporal_patch_size", 128),
        max_audio_temporal_buckets=c["max_aud_temporal_buckets"],
        max_text_temporal_buckets=c["max_txt_temporal_buckets"],
        vocab_size=c["txt_vocab_size"], d_embedding=c["txt_embedding_dim"],
        trainable_embeddings=c.get("txt_embedding_trainable", False),
        d_post_proj=c["d_post_proj"], droptoken=_droptoken(c), head=head,
    )


def _classifier(c: dict[str, Any]) -> ClassifierConfig:
    name = c.get("name", "")
    if name.startswith("vit"):
        return ClassifierConfig(kind="video_classifier", video=_video(c), num_classes=c["num_classes"],
                                classifier_dropout=c.get("cls_dropout_rate", 0.5), output="softmax")
    return ClassifierConfig(kind="audio_classifier", audio=_audio(c), num_classes=c["num_classes"],
                            classifier_dropout=c.get("cls_dropout_rate", 0.0), output="sigmoid")


def from_official_config(d: dict[str, Any]):
    """Our config for an official config dict (see the module docstring for the accepted forms)."""
    effective = d.get("effective_backbone_configs")
    model_config = d.get("model_config", d)
    if model_config.get("num_classes"):  # a fine-tuning model
        c = dict(model_config)
        if effective:  # the resolved backbone config is authoritative
            c = {**next(iter(effective.values())), "num_classes": model_config["num_classes"]}
        return _classifier(c)
    if effective is None:
        raise ValueError("need the resolved backbone configs ('effective_backbone_configs') of a pre-training model")
    if "unified" in effective:
        return _unified(effective["unified"], _head(model_config))
    return VATTConfig(video=_video(effective["video"]), audio=_audio(effective["audio"]),
                      text=_text(effective["text"]), head=_head(model_config))
