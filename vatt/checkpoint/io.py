"""Model folders: `model.safetensors` + `config.json` (+ `vocab.txt`) + `manifest.json`. No pickle anywhere
on the load path.

`vocab.txt` (one word per line, the official vocabulary format) is the word tokenizer the text model was
trained with; `load` attaches it as `model.tokenizer` so that text can be embedded from strings.

A folder may come from anyone, so reading one checks it before any large allocation:
1. `manifest.json` (sizes and SHA-256 of the files, `vatt.checkpoint.manifest`): a damaged or incomplete
   folder is refused naming the file; a folder without one loads with a one-line notice;
2. `config.json`: the model it describes is built on the `meta` device (no memory) and refused if it
   has more than `MAX_PARAMETERS` parameters or more than `MAX_LAYERS` layers in a Transformer;
3. the safetensors header of `model.safetensors` (read alone, bounded): every tensor must have the
   shape the config gives, a dtype of the same kind (float / integer), and lie inside the file; missing
   and unexpected tensors are refused (unless `strict=False`).
Only then are the weights read and the model built.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors.torch import load_file
from torch import nn

from vatt import configs
from vatt.atomic import atomic_write, write_text
from vatt.checkpoint.manifest import DamagedFolder, verify_folder, write_manifest
from vatt.data.text import WordTokenizer
from vatt.model.factory import build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
VOCAB = "vocab.txt"

# An untrusted config.json may ask for anything; these bound what `load` agrees to build. The largest
# official model (tx_fac_lbs) has 432M parameters and 24 layers.
MAX_PARAMETERS = 20_000_000_000
MAX_LAYERS = 1024
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header


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


def save(model: nn.Module, directory: str | os.PathLike, config=None, tokenizer=None,
         extra_files: dict[str, str] | None = None) -> Path:
    """Write `<directory>/model.safetensors`, `config.json`, with a tokenizer `vocab.txt`, the
    `extra_files` (name -> text, e.g. classes.txt), and last `manifest.json` listing them all.

    Each file is written to a temporary name and renamed (`vatt.atomic`), so a crash or a full disk never
    leaves a half-written file; a failed write raises `WriteFailed`. `tokenizer` defaults to
    `model.tokenizer` when the model has one.
    """
    directory = Path(directory)
    config = config if config is not None else model.config
    write_weights(directory / WEIGHTS, {k: v.detach() for k, v in model.state_dict().items()})
    write_text(directory / CONFIG, json.dumps(configs.to_dict(config), indent=2) + "\n", what="model config")
    names = [WEIGHTS, CONFIG]
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save(directory / VOCAB)
        names.append(VOCAB)
    for name, text in (extra_files or {}).items():
        write_text(directory / name, text)
        names.append(name)
    write_manifest(directory, names)
    return directory


def write_weights(path: str | os.PathLike, state: dict[str, torch.Tensor], what: str = "weights") -> Path:
    """A safetensors file, written atomically (safetensors' own file writer does not report a full disk
    as an OSError, so the bytes are made in memory and written through `vatt.atomic`)."""
    data = safetensors.torch.save({k: v.detach().contiguous().cpu() for k, v in state.items()},
                                  metadata={"format": "pt"})
    with atomic_write(path, what=what) as f:
        f.write(data)
    return Path(path)


def load_config(directory: str | os.PathLike):
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json (a vatt model folder holds model.safetensors + config.json)")
    if path.stat().st_size > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes is not a model config")
    try:
        config = configs.config_from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid config: {e}") from e
    _check_layers(config, path)
    return config


def _check_layers(config: Any, path: Path, where: str = "") -> None:
    # Building a module per layer is the one cost that the meta device does not remove.
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        name = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            _check_layers(value, path, name)
        elif f.name == "num_layers" and value > MAX_LAYERS:
            raise ValueError(f"{path}: {name}={value} layers is beyond what vatt loads (at most {MAX_LAYERS}); "
                             "refusing to build it")


def expected_tensors(config: Any, path: str | os.PathLike = CONFIG,
                     max_parameters: int = MAX_PARAMETERS) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)} of the model `config` describes, built on the meta device (no memory).

    Refuses a model of more than `max_parameters` parameters, naming its largest tensor.
    """
    with torch.device("meta"):
        state = build_model(config).state_dict()
    total = sum(t.numel() for t in state.values())
    if total > max_parameters:
        name, largest = max(state.items(), key=lambda kv: kv[1].numel())
        raise ValueError(f"{path}: the config asks for a model of {total:.3g} parameters, more than the "
                         f"{max_parameters:.3g} vatt agrees to build (largest tensor {name} "
                         f"{list(largest.shape)}); refusing it before allocating anything")
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def read_header(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)} from a safetensors file's header, checked against the file's size (reads
    only the header: a lying or truncated file is refused before any tensor is allocated)."""
    path = Path(path)
    size = path.stat().st_size
    folder, name = path.parent, path.name

    def bad(reason: str) -> DamagedFolder:
        return DamagedFolder(folder, name, reason)

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes is not a safetensors file (truncated?)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise bad(f"header length {n} does not fit the file's {size} bytes (truncated or not safetensors)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise bad(f"unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise bad("unreadable safetensors header")
    out, end = {}, 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            lo, hi = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {key}: unreadable or unsupported entry {entry!r}") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if min(shape, default=0) < 0 or lo < 0 or hi - lo != nbytes:
            raise bad(f"tensor {key}: shape {list(shape)} {entry['dtype']} does not match its {hi - lo} bytes")
        end = max(end, hi)
        out[key] = (shape, dtype)
    if 8 + n + end != size:
        raise bad(f"{size} bytes, the header describes {8 + n + end} (truncated or incomplete copy?)")
    return out


def check_weights(path: str | os.PathLike, expected: dict[str, tuple[tuple[int, ...], torch.dtype]],
                  strict: bool = True) -> None:
    """Refuse a weights file whose tensors do not fit the model of its config, naming the first misfits."""
    found = read_header(path)
    problems = []
    for key, (shape, dtype) in found.items():
        if key not in expected:
            continue
        want_shape, want_dtype = expected[key]
        if shape != want_shape:
            problems.append(f"{key} has shape {list(shape)}, the config gives {list(want_shape)}")
        elif dtype.is_floating_point != want_dtype.is_floating_point:  # fp16/bf16 weights are cast, ints are not
            problems.append(f"{key} is {str(dtype).replace('torch.', '')}, the model has "
                            f"{str(want_dtype).replace('torch.', '')}")
    if strict:
        missing = [k for k in expected if k not in found and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in found if k not in expected]
        if missing:
            problems.append(f"{len(missing)} tensors of the model are missing, e.g. {', '.join(missing[:4])}")
        if unexpected:
            problems.append(f"{len(unexpected)} tensors have no place in the model, e.g. {', '.join(unexpected[:4])}")
    if problems:
        raise ValueError(f"{path}: the weights do not match config.json: " + "; ".join(problems[:4]))


def read_weights(directory: str | os.PathLike, config: Any = None, map_location: str | torch.device = "cpu",
                 strict: bool = True, verify: bool = True,
                 max_parameters: int = MAX_PARAMETERS) -> dict[str, torch.Tensor]:
    """The state dict of a model folder, after the checks of the module docstring (`verify=False` skips
    the manifest, for a folder verified just before)."""
    directory = Path(directory)
    weights = directory / WEIGHTS
    if verify:
        verify_folder(directory, required=[WEIGHTS, CONFIG])
    if config is None:
        config = load_config(directory)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no weights file")
    check_weights(weights, expected_tensors(config, directory / CONFIG, max_parameters), strict=strict)
    try:
        return load_file(str(weights), device=str(map_location))
    except safetensors.SafetensorError as e:
        raise DamagedFolder(directory, WEIGHTS, f"unreadable ({e})") from None


def load(directory: str | os.PathLike, map_location: str | torch.device = "cpu", strict: bool = True,
         max_parameters: int = MAX_PARAMETERS) -> nn.Module:
    """Build the model described by `<directory>/config.json` and load `<directory>/model.safetensors`.

    Returns the model in eval mode, with `model.tokenizer` set from `vocab.txt` when the folder has one.
    With `strict=True` (default) any missing or unexpected key is an error. The folder is checked first
    (module docstring): `DamagedFolder` (a ValueError) names a damaged or missing file, a ValueError an
    absurd config or weights that do not fit it.
    """
    directory = Path(directory)
    verify_folder(directory, required=[WEIGHTS, CONFIG])
    config = load_config(directory)
    state = read_weights(directory, config, map_location, strict=strict, verify=False, max_parameters=max_parameters)
    model = build_model(config)
    load_state(model, state, strict=strict)
    model.tokenizer = None
    if (directory / VOCAB).is_file():
        model.tokenizer = WordTokenizer.from_vocab_file(directory / VOCAB)
    return model.to(map_location).eval()


def model_folder(path: str | os.PathLike) -> Path:
    """A model folder as given, or the latest checkpoint of a run folder (`vatt pretrain`, `vatt demo`)."""
    # Imported here: vatt.engine.checkpoint imports this module (checkpoints are model folders).
    from vatt.engine.checkpoint import latest_checkpoint

    folder = Path(path)
    if (folder / CONFIG).is_file():
        return folder
    latest = latest_checkpoint(folder / "checkpoints") or latest_checkpoint(folder / "run" / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"{path}: neither a model folder (config.json + model.safetensors) nor a run folder "
                                "with checkpoints/step_*")
    return latest


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", vocab: str | None = None) -> nn.Module:
    """`load` of a model folder or a run folder's latest checkpoint (`model_folder`), with an optional
    vocabulary file for models saved without vocab.txt."""
    model = load(model_folder(path), map_location=map_location)
    if vocab:
        model.tokenizer = WordTokenizer.from_vocab_file(vocab)
    return model
