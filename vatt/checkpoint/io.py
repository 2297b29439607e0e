"""Model folders: `model.safetensors` + `config.json` (+ `vocab.txt`). No pickle anywhere on the load path.

`vocab.txt` (one word per line, the official vocabulary format) is the word tokenizer the text model was
trained with; `load` attaches it as `model.tokenizer` so that text can be embedded from strings.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vatt import configs

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
VOCAB = "vocab.txt"


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)  # model tensors the file did not have (left at init)
    unexpected: list[str] = field(default_factory=list)  # file tensors the model has no place for

    def __str__(self) -> str:
        def short(names: list[str]) -> str:
            return ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        return f"missing: {short(self.missing) or 'none'}; unexpected: {short(self.unexpected) or 'none'}"


def load_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = False) -> LoadReport:
    """Copy `state` into `model`; refuses a shape mismatch naming the key; reports missing/unexpected keys."""
    own = model.state_dict()
    report = LoadReport(
        missing=[k for k in own if k not in state and not k.endswith("num_batches_tracked")],
        unexpected=[k for k in state if k not in own],
    )
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(f"shape mismatch for {k}: model has {tuple(own[k].shape)}, weights have {tuple(v.shape)}")
    if strict and (report.missing or report.unexpected):
        raise KeyError(f"weights do not match the model: {report}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return report


def save(model: nn.Module, directory: str | os.PathLike, config=None, tokenizer=None) -> Path:
    """Write `<directory>/model.safetensors`, `config.json` and, with a tokenizer, `vocab.txt`.

    Each file is written to a temporary name and renamed, so a crash never leaves a half-written file.
    `tokenizer` defaults to `model.tokenizer` when the model has one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = config if config is not None else model.config
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / WEIGHTS)
    tmp = directory / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(configs.to_dict(config), indent=2) + "\n")
    os.replace(tmp, directory / CONFIG)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is not None:
        tmp = directory / (VOCAB + ".tmp")
        tokenizer.save(tmp)
        os.replace(tmp, directory / VOCAB)
    return directory


def load_config(directory: str | os.PathLike):
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json (a vatt model folder holds model.safetensors + config.json)")
    try:
        return configs.config_from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: invalid config: {e}") from e


def load(directory: str | os.PathLike, map_location: str | torch.device = "cpu", strict: bool = True) -> nn.Module:
    """Build the model described by `<directory>/config.json` and load `<directory>/model.safetensors`.

    Returns the model in eval mode, with `model.tokenizer` set from `vocab.txt` when the folder has one.
    With `strict=True` (default) any missing or unexpected key is an error.
    """
    from vatt.model.factory import build_model

    directory = Path(directory)
    model = build_model(load_config(directory))
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no weights file")
    load_state(model, load_file(str(weights), device=str(map_location)), strict=strict)
    model.tokenizer = None
    if (directory / VOCAB).is_file():
        from vatt.data.text import WordTokenizer
        model.tokenizer = WordTokenizer.from_vocab_file(directory / VOCAB)
    return model.to(map_location).eval()
