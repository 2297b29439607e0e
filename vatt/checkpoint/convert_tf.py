"""Official TF2 checkpoints -> this model's parameters.

The official checkpoints are TF2 object-based checkpoints whose keys follow the Python attribute names of
the Keras model (spec section 9), e.g.
    model/layer_with_weights-0/_base_layer/vid_backbone/_base/tx/layers/3/mha/q/kernel/.ATTRIBUTES/VARIABLE_VALUE
`checkpoint_key_map(model)` lists, for every parameter and buffer of our model, the checkpoint key(s) it
comes from and how to lay them out: Dense kernels are (in, out) -> transpose; Conv3D (kt, kh, kw, cin,
cout) -> (cout, cin, kt, kh, kw); Conv1D (k, cin, cout) -> (cout, cin, k); our fused q/k/v projection
concatenates the three official kernels; LayerNorm gamma/beta -> weight/bias; BatchNorm moving_mean /
moving_variance -> running_mean / running_var. Optimizer slots and bookkeeping entries are skipped.

Supported sources: tx_fac pre-training (BBS / MBS / LBS), ut_fac pre-training (Medium), fine-tuned ViT and
WaT classifiers, and a pre-training checkpoint loaded into a classifier (the video or audio backbone of a
tx_fac checkpoint, or the unified backbone of a ut_fac checkpoint into a ViT/WaT with pre/post
projections, as the official `restore.py` does). Reading needs no TensorFlow (`tf_bundle.BundleReader`);
TensorFlow's own reader stays available as a cross-check (`reader="tf"`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from vatt.checkpoint.tf_bundle import BundleReader, checkpoint_prefix
from vatt.model.positional import resize_table
from vatt.model.vatt import VATT, Classifier, UnifiedVATT

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
ROOT = "model/layer_with_weights-0"

Layout = Callable[[list[np.ndarray]], np.ndarray]


def _one(f: Callable[[np.ndarray], np.ndarray]) -> Layout:
    return lambda arrays: f(arrays[0])


IDENTITY = _one(lambda a: a)
DENSE = _one(lambda a: a.T)
CONV3D = _one(lambda a: a.transpose(4, 3, 0, 1, 2))
CONV2D = _one(lambda a: a.transpose(3, 2, 0, 1))
CONV1D = _one(lambda a: a.transpose(2, 1, 0))
FUSED_DENSE = lambda arrays: np.concatenate(arrays, axis=1).T  # noqa: E731  q|k|v kernels -> [3*inner, d]
FUSED_BIAS = lambda arrays: np.concatenate(arrays, axis=0)  # noqa: E731


@dataclass
class Source:
    keys: list[str]  # checkpoint keys, without the `/.ATTRIBUTES/VARIABLE_VALUE` suffix
    layout: Layout = IDENTITY


@dataclass
class ConversionReport:
    """What a conversion did: parameters without a source, checkpoint entries left unused, tables resized."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------
# per-component key maps: {our parameter name: Source}
# ------------------------------------------------------------------------------------------------------
def _norm(ours: str, theirs: str, kind: str = "ln") -> dict[str, Source]:
    if kind == "rms":
        return {f"{ours}.weight": Source([f"{theirs}/weight"])}
    out = {f"{ours}.weight": Source([f"{theirs}/gamma"]), f"{ours}.bias": Source([f"{theirs}/beta"])}
    if kind == "bn":
        out[f"{ours}.running_mean"] = Source([f"{theirs}/moving_mean"])
        out[f"{ours}.running_var"] = Source([f"{theirs}/moving_variance"])
    return out


def _dense(ours: str, theirs: str, bias: bool = True) -> dict[str, Source]:
    out = {f"{ours}.weight": Source([f"{theirs}/kernel"], DENSE)}
    if bias:
        out[f"{ours}.bias"] = Source([f"{theirs}/bias"])
    return out


def _attention(ours: str, theirs: str, bias: bool) -> dict[str, Source]:
    out = {f"{ours}.qkv.weight": Source([f"{theirs}/{n}/kernel" for n in "qkv"], FUSED_DENSE)}
    if bias:
        out[f"{ours}.qkv.bias"] = Source([f"{theirs}/{n}/bias" for n in "qkv"], FUSED_BIAS)
    out.update(_dense(f"{ours}.o", f"{theirs}/o", bias))
    return out


def _transformer(ours: str, theirs: str, num_layers: int, bias: bool = True) -> dict[str, Source]:
    """Generic encoder (`common/transformers.py`): `tx/layers/{i}/...`, `tx/final_layer_norm`."""
    out: dict[str, Source] = {}
    for i in range(num_layers):
        o, t = f"{ours}.layers.{i}", f"{theirs}/layers/{i}"
        out.update(_norm(f"{o}.layer_norm", f"{t}/layer_norm"))
        out.update(_attention(f"{o}.attention", f"{t}/mha", bias))
        out.update(_norm(f"{o}.mlp_layer_norm", f"{t}/feed_forward/layer_norm"))
        out.update(_dense(f"{o}.mlp.wi", f"{t}/feed_forward/mlp/wi", bias))
        out.update(_dense(f"{o}.mlp.wo", f"{t}/feed_forward/mlp/wo", bias))
    out.update(_norm(f"{ours}.final_layer_norm", f"{theirs}/final_layer_norm"))
    return out


def _t5(ours: str, theirs: str, num_layers: int) -> dict[str, Source]:
    out: dict[str, Source] = {}
    for i in range(num_layers):
        o, t = f"{ours}.layers.{i}", f"{theirs}/layers/{i}"
        out.update(_norm(f"{o}.layer_norm", f"{t}/self_attention/layer_norm", "rms"))
        out.update(_attention(f"{o}.attention", f"{t}/self_attention/attention", bias=False))
        out.update(_norm(f"{o}.mlp_layer_norm", f"{t}/feed_forward/layer_norm"))
        out.update(_dense(f"{o}.mlp.wi", f"{t}/feed_forward/mlp/wi", bias=False))
        out.update(_dense(f"{o}.mlp.wo", f"{t}/feed_forward/mlp/wo", bias=False))
    out[f"{ours}.relative_attention_bias.weight"] = Source(
        [f"{theirs}/layers/0/self_attention/attention/relative_attention_bias/embeddings"])
    out.update(_norm(f"{ours}.final_layer_norm", f"{theirs}/final_layer_norm", "rms"))
    return out


def _positions(ours: str, theirs: str, axes: Iterable[str]) -> dict[str, Source]:
    out = {f"{ours}.tables.{a}": Source([f"{theirs}/{a}_position_embeddings/embeddings"]) for a in axes}
    out.update(_norm(f"{ours}.layer_norm", f"{theirs}/layernorm"))
    return out


def _patch_backbone(ours: str, theirs: str, backbone: nn.Module, modality: str) -> dict[str, Source]:
    """ViT (`vitx3d.py`) or WaT (`autx1d.py`) under `theirs`."""
    tok = {"video": ("voxel_to_patch", CONV3D), "audio": ("wave_to_patch", CONV1D)}[modality]
    out = {
        f"{ours}.tokenizer.proj.weight": Source([f"{theirs}/{tok[0]}/kernel"], tok[1]),
        f"{ours}.tokenizer.proj.bias": Source([f"{theirs}/{tok[0]}/bias"]),
        f"{ours}.agg_token": Source([f"{theirs}/agg_embedding"]),
    }
    out.update(_positions(f"{ours}.pos_embedding", f"{theirs}/pos_embedding_lookup", backbone.pos_embedding.axes))
    tx = backbone.transformer
    out.update(_transformer(f"{ours}.transformer", f"{theirs}/tx", len(tx.layers), tx.layers[0].attention.o.bias is not None))
    if backbone.pre_proj is not None:
        out.update(_dense(f"{ours}.pre_proj.0", f"{theirs}/pre_proj"))
    if backbone.post_proj is not None:
        out.update(_dense(f"{ours}.post_proj.0", f"{theirs}/post_proj"))
    return out


def _patch_backbone_from_unified(ours: str, u: str, backbone: nn.Module, modality: str) -> dict[str, Source]:
    """A ViT/WaT with pre/post projections restored from a ut_fac checkpoint (official `_KRS_TO_UT_CKPT`)."""
    short = {"video": "vid", "audio": "aud"}[modality]
    tok = {"video": CONV3D, "audio": CONV1D}[modality]
    out = {
        f"{ours}.tokenizer.proj.weight": Source([f"{u}/raw_to_embeddings/{modality}/kernel"], tok),
        f"{ours}.tokenizer.proj.bias": Source([f"{u}/raw_to_embeddings/{modality}/bias"]),
        f"{ours}.agg_token": Source([f"{u}/{short}_agg_embedding"]),
    }
    out.update(_positions(f"{ours}.pos_embedding", f"{u}/pos_embedding_lookup/{modality}", backbone.pos_embedding.axes))
    out.update(_transformer(f"{ours}.transformer", f"{u}/tx", len(backbone.transformer.layers)))
    if backbone.pre_proj is not None:
        out.update(_dense(f"{ours}.pre_proj.0", f"{u}/pre_proj/{modality}"))
    if backbone.post_proj is not None:
        out.update(_dense(f"{ours}.post_proj.0", f"{u}/post_proj/{modality}"))
    return out


def _fac_head(ours: str, theirs: str) -> dict[str, Source]:
    out = _dense(f"{ours}.video_to_hidden", f"{theirs}/vid_to_hid", bias=False)
    out.update(_norm(f"{ours}.hidden_to_va_pre_bn", f"{theirs}/hid_to_va/pre_bn", "bn"))
    out.update(_dense(f"{ours}.hidden_to_va", f"{theirs}/hid_to_va/dense", bias=False))
    out.update(_norm(f"{ours}.hidden_to_va_bn", f"{theirs}/hid_to_va/bn", "bn"))
    out.update(_dense(f"{ours}.va_to_vt", f"{theirs}/va_to_vat/dense", bias=False))
    out.update(_norm(f"{ours}.va_to_vt_bn", f"{theirs}/va_to_vat/bn", "bn"))
    out.update(_dense(f"{ours}.audio_to_va", f"{theirs}/aud_to_va"))
    out.update(_dense(f"{ours}.text_to_vt", f"{theirs}/txt_to_vat"))
    return out


def _t5_text(ours: str, theirs: str, text: nn.Module) -> dict[str, Source]:
    out = {
        f"{ours}.embedding.weight": Source([f"{theirs}/embedding/embeddings"]),
        f"{ours}.agg_token": Source([f"{theirs}/agg_embedding"]),
        f"{ours}.pre_proj.0.weight": Source([f"{theirs}/pre_proj/kernel"], DENSE),
    }
    out.update(_t5(f"{ours}.transformer", f"{theirs}/base_lm", len(text.transformer.layers)))
    return out


def _unified(ours: str, u: str, backbone: nn.Module) -> dict[str, Source]:
    out = {
        f"{ours}.tokenizers.video.proj.weight": Source([f"{u}/raw_to_embeddings/video/kernel"], CONV3D),
        f"{ours}.tokenizers.video.proj.bias": Source([f"{u}/raw_to_embeddings/video/bias"]),
        f"{ours}.tokenizers.audio.proj.weight": Source([f"{u}/raw_to_embeddings/audio/kernel"], CONV1D),
        f"{ours}.tokenizers.audio.proj.bias": Source([f"{u}/raw_to_embeddings/audio/bias"]),
        f"{ours}.tokenizers.text.weight": Source([f"{u}/raw_to_embeddings/text/embeddings"]),
    }
    for m, short in (("video", "vid"), ("audio", "aud"), ("text", "txt")):
        out.update(_dense(f"{ours}.pre_proj.{m}.0", f"{u}/pre_proj/{m}"))
        out.update(_positions(f"{ours}.pos_embedding.{m}", f"{u}/pos_embedding_lookup/{m}",
                              backbone.pos_embedding[m].axes))
        out[f"{ours}.agg_token.{m}"] = Source([f"{u}/{short}_agg_embedding"])
        out.update(_dense(f"{ours}.post_proj.{m}.0", f"{u}/post_proj/{m}"))
    out.update(_transformer(f"{ours}.transformer", f"{u}/tx", len(backbone.transformer.layers)))
    return out


def checkpoint_key_map(model: nn.Module, checkpoint_keys: Iterable[str]) -> dict[str, Source]:
    """For each of `model`'s tensors, where it comes from in an official checkpoint with these keys."""
    keys = set(checkpoint_keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    base = f"{ROOT}/_base_layer"
    if isinstance(model, VATT):
        if model.config.text.kind != "t5":
            raise ValueError("official tx_fac checkpoints carry a T5 text model; this config's text model is "
                             f"{model.config.text.kind!r}")
        if model.config.audio.input != "waveform":
            raise ValueError("official tx_fac checkpoints carry a waveform (WaT) audio model, not SpT")
        out = _patch_backbone("video_backbone", f"{base}/vid_backbone/_base", model.video_backbone, "video")
        out.update(_patch_backbone("audio_backbone", f"{base}/aud_backbone/_base", model.audio_backbone, "audio"))
        out.update(_t5_text("text_backbone", f"{base}/txt_backbone", model.text_backbone))
        out.update(_fac_head("head", f"{ROOT}/_head_layer/_bridge_heads/0"))
        return out
    if isinstance(model, UnifiedVATT):
        out = _unified("unified_backbone", f"{base}/unified_backbone/unified_transformer", model.unified_backbone)
        out.update(_fac_head("head", f"{ROOT}/_head_layer/_bridge_heads/0"))
        return out
    if isinstance(model, Classifier):
        m = model.modality
        if has(f"{ROOT}/_base/"):  # a fine-tuned classifier checkpoint
            out = _patch_backbone("backbone", f"{ROOT}/_base", model.backbone, m)
            out.update(_dense("head.classification", f"{ROOT}/_ops/cls"))
        elif has(f"{base}/unified_backbone/"):  # fine-tuning starts from a ut_fac checkpoint
            out = _patch_backbone_from_unified("backbone", f"{base}/unified_backbone/unified_transformer",
                                               model.backbone, m)
        else:  # fine-tuning starts from a tx_fac checkpoint
            short = {"video": "vid", "audio": "aud"}[m]
            out = _patch_backbone("backbone", f"{base}/{short}_backbone/_base", model.backbone, m)
        return out
    raise TypeError(f"no official checkpoint layout for {type(model).__name__}")


def _is_model_entry(key: str) -> bool:
    return key.startswith("model/") and ".OPTIMIZER_SLOT" not in key and key.endswith(SUFFIX)


def convert_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map checkpoint arrays (keys without the suffix) onto `model`'s state-dict names.

    Positional tables whose length differs from the model's are resampled with the official spline
    (`restore.interpolate_pos`). Any other shape mismatch raises, naming the key.
    """
    key_map = checkpoint_key_map(model, arrays)
    ours = model.state_dict()
    report = ConversionReport()
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, target in ours.items():
        src = key_map.get(name)
        if src is None or not all(k in arrays for k in src.keys):
            if src is not None or not name.endswith("num_batches_tracked"):
                report.missing.append(name)
            continue
        value = torch.from_numpy(np.ascontiguousarray(src.layout([arrays[k] for k in src.keys])))
        used.update(src.keys)
        if ".pos_embedding." in name and ".tables." in name and value.shape[1:] == target.shape[1:] \
                and value.shape[0] != target.shape[0]:
            value = resize_table(value.float(), target.shape[0])
            report.resized.append(f"{name}: {tuple(value.shape)} <- {src.keys[0]}")
        if value.shape != target.shape:
            raise ValueError(f"shape mismatch for {name}: model has {tuple(target.shape)}, checkpoint "
                             f"{', '.join(src.keys)} gives {tuple(value.shape)}")
        state[name] = value.to(target.dtype)
    report.unexpected = sorted(k for k in arrays if k not in used)
    return state, report


READERS = ("native", "tf")


def read_tf_checkpoint(prefix: str, reader: str = "native") -> dict[str, np.ndarray]:
    """The model entries of a TF checkpoint (optimizer slots and bookkeeping skipped), suffix removed.

    `reader="native"` reads the tensor bundle with numpy (`vatt.checkpoint.tf_bundle`, no TensorFlow);
    `reader="tf"` asks TensorFlow's own reader, as a cross-check.
    """
    prefix = checkpoint_prefix(prefix)
    if reader == "native":
        bundle = BundleReader(prefix)
        return {k[: -len(SUFFIX)]: bundle.read(k) for k in bundle.keys() if _is_model_entry(k)}
    if reader != "tf":
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    # TF's start-up chatter is not ours to print; oneDNN only matters for TF's own maths, not for reading.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf  # optional: only the cross-check reader needs it
    except ImportError as e:
        raise ImportError('reader="tf" needs TensorFlow (pip install "vatt[tf]"); the default reader does not') from e
    try:
        tf_reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # TF raises NotFoundError / DataLossError with long messages
        raise FileNotFoundError(f"{prefix}: not a readable TensorFlow checkpoint prefix ({type(e).__name__}: "
                                f"{str(e).splitlines()[0]})") from e
    return {k[: -len(SUFFIX)]: tf_reader.get_tensor(k) for k in tf_reader.get_variable_to_shape_map()
            if _is_model_entry(k)}


def convert_tf_checkpoint(prefix: str, model: nn.Module,
                          reader: str = "native") -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Read an official TF checkpoint (with `reader`, see `read_tf_checkpoint`) and map it onto `model`."""
    return convert_arrays(model, read_tf_checkpoint(prefix, reader))
