"""Where a classifier's weights start: a pre-trained model, a classifier, an official checkpoint, or nothing.

Sources (`init_classifier(model, source)`):
- a vatt model folder of a **tx_fac** model: its `video_backbone` (ViT) or `audio_backbone` (WaT) becomes
  the classifier's `backbone`, as the official `restore.assign_weight_from_ckpt` restores `vid_backbone`
  / `aud_backbone`; the FAC head and the other towers are left out; the classification layer starts
  from its initialisation;
- a vatt model folder of a **ut_fac** model: the shared Transformer plus the modality's raw tokenizer,
  pre-projection, positional tables, AGG token and post-projection (the official `_KRS_TO_UT_CKPT` map:
  `pre_proj/video` -> `pre_tx_projection`, ...); the classifier must have `pre_projection` and
  `post_projection` on (preset `vit_medium_from_ut_classifier`);
- a vatt model folder of a **classifier** (a fine-tuned model): every weight; the classification layer
  only if its class count matches, else it keeps its initialisation (reported);
- a pre-training run folder (`<run>/checkpoints/step_*`): its latest checkpoint;
- anything else is taken as an **official TensorFlow checkpoint prefix** and converted on the fly
  (`vatt.checkpoint.convert_tf`, which needs TensorFlow).
Positional tables of another length (another frame count, resolution or audio length) are resampled with
the official spline (`resize_table`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vatt.checkpoint.convert_tf import convert_tf_checkpoint
from vatt.checkpoint.io import CONFIG, load_config, read_weights
from vatt.engine.checkpoint import latest_checkpoint
from vatt.model.positional import resize_table


@dataclass
class InitReport:
    source: str
    kind: str  # tx_fac, ut_fac, video_classifier, audio_classifier, tf_checkpoint, scratch
    loaded: int = 0  # tensors copied
    left_at_init: list[str] = field(default_factory=list)  # model tensors that kept their initialisation
    ignored: int = 0  # source tensors not used (other towers, the FAC head, ...)
    resized: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == "scratch":
            return "random initialisation"
        if self.kind == "unknown":  # resumed from a checkpoint that did not record it
            return "unknown (resumed from a checkpoint that does not record where its weights started)"
        left = ", ".join(self.left_at_init[:6]) + (" ..." if len(self.left_at_init) > 6 else "")
        text = f"{self.loaded} tensors from {self.kind} {self.source}; {self.ignored} source tensors not used"
        if self.left_at_init:
            text += f"; at initialisation: {left}"
        if self.resized:
            text += f"; positional tables resampled: {', '.join(self.resized)}"
        return text


def _unified_map(modality: str) -> dict[str, str]:
    """Classifier backbone prefix -> ut_fac prefix (PyTorch names of `UnifiedTransformer`)."""
    u = "unified_backbone"
    return {
        "backbone.tokenizer.": f"{u}.tokenizers.{modality}.",
        "backbone.pre_proj.": f"{u}.pre_proj.{modality}.",
        "backbone.pos_embedding.": f"{u}.pos_embedding.{modality}.",
        "backbone.agg_token": f"{u}.agg_token.{modality}",
        "backbone.transformer.": f"{u}.transformer.",
        "backbone.post_proj.": f"{u}.post_proj.{modality}.",
    }


def _source_name(ours: str, kind: str, modality: str) -> str | None:
    """The source tensor that our tensor `ours` comes from, for a source model of `kind`."""
    if kind == "tx_fac":
        return f"{modality}_backbone." + ours[len("backbone."):] if ours.startswith("backbone.") else None
    if kind == "ut_fac":
        for mine, theirs in _unified_map(modality).items():
            if ours.startswith(mine):
                return theirs + ours[len(mine):]
        return None
    return ours  # a classifier: same names


def _fit_table(name: str, value: torch.Tensor, target: torch.Tensor, report: InitReport) -> torch.Tensor:
    if ".pos_embedding." in name and ".tables." in name and value.dim() == 2 and value.shape[1] == target.shape[1] \
            and value.shape[0] != target.shape[0]:
        report.resized.append(f"{name} {value.shape[0]}->{target.shape[0]}")
        return resize_table(value.float(), target.shape[0]).to(target.dtype)
    return value


def state_from_model(model: nn.Module, state: dict[str, torch.Tensor], source_config,
                     source: str = "") -> tuple[dict, InitReport]:
    """Map a source model's state dict (with its config) onto a `Classifier`'s names.

    Raises when the source cannot give the backbone (wrong modality, missing pre/post projections,
    shape mismatch), naming what is wrong.
    """
    kind = getattr(source_config, "kind", None)
    modality = model.modality
    report = InitReport(source=source, kind=str(kind))
    if kind in ("video_classifier", "audio_classifier"):
        src_modality = "video" if kind == "video_classifier" else "audio"
        if src_modality != modality:
            raise ValueError(f"{source}: a {src_modality} classifier cannot initialise a {modality} classifier")
    elif kind == "tx_fac":
        pass
    elif kind == "ut_fac":
        cfg = getattr(model.config, modality)
        if not (cfg.pre_projection and cfg.post_projection):
            raise ValueError(f"{source}: a ut_fac model initialises a classifier with pre_projection and "
                             "post_projection on (preset vit_medium_from_ut_classifier, or model.overrides "
                             f"{modality}.pre_projection / {modality}.post_projection = true)")
        if cfg.d_post_proj != source_config.d_post_proj:
            raise ValueError(f"{source}: post-projection width {source_config.d_post_proj} != the classifier's "
                             f"{cfg.d_post_proj} ({modality}.d_post_proj)")
    else:
        raise ValueError(f"{source}: cannot initialise a classifier from a {kind!r} model")
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, target in own.items():
        src = _source_name(name, kind, modality)
        if src is None or src not in state:
            if not name.endswith("num_batches_tracked"):
                report.left_at_init.append(name)
            continue
        value = _fit_table(name, state[src], target, report)
        if value.shape != target.shape:
            if name.startswith("head.classification"):  # another class count: keep the fresh head
                report.left_at_init.append(name)
                continue
            raise ValueError(f"{source}: shape mismatch for {name}: the classifier has {tuple(target.shape)}, "
                             f"{src} has {tuple(value.shape)}")
        out[name] = value.to(target.dtype)
        used.add(src)
    missing_backbone = [n for n in report.left_at_init if n.startswith("backbone.")]
    if missing_backbone:
        raise ValueError(f"{source}: the {kind} weights lack {len(missing_backbone)} backbone tensors of the "
                         f"classifier, e.g. {', '.join(missing_backbone[:4])} (a model with another architecture?)")
    report.loaded = len(out)
    report.ignored = len([k for k in state if k not in used])
    return out, report


def _resolve_folder(path: Path) -> Path:
    """A model folder, or the latest checkpoint of a run folder."""
    if (path / CONFIG).is_file():
        return path

    for root in (path / "checkpoints", path):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    raise FileNotFoundError(f"{path}: neither a model folder (config.json + model.safetensors) nor a run folder "
                            "with checkpoints/step_*")


def init_classifier(model: nn.Module, source: str | os.PathLike | None) -> InitReport:
    """Load `source` (see the module docstring) into `model` in place; returns what was done."""
    if not source:
        return InitReport(source="", kind="scratch")
    path = Path(source)
    if path.is_dir():
        folder = _resolve_folder(path)
        config = load_config(folder)
        state = read_weights(folder, config)  # manifest, sizes and shapes checked as vatt.load does
        mapped, report = state_from_model(model, state, config, str(folder))
    else:
        if not any(Path(str(path) + suffix).exists() for suffix in (".index", ".meta")) and not path.exists():
            raise FileNotFoundError(f"model.init_from: {source} is neither a model folder nor a TensorFlow "
                                    "checkpoint prefix (no <prefix>.index)")
        mapped, conversion = convert_tf_checkpoint(str(path), model)
        report = InitReport(source=str(path), kind="tf_checkpoint", loaded=len(mapped),
                            left_at_init=list(conversion.missing), ignored=len(conversion.unexpected),
                            resized=list(conversion.resized))
        missing_backbone = [n for n in conversion.missing if n.startswith("backbone.")]
        if missing_backbone:
            raise ValueError(f"{source}: the checkpoint lacks backbone tensors, e.g. {', '.join(missing_backbone[:4])}")
    model.load_state_dict(mapped, strict=False)
    return report
