"""Training checkpoints: written atomically, the last K kept, read without unsafe unpickling.

Layout of `<output_dir>/checkpoints/`:

    step_00001000/
        model.safetensors   weights (a model folder: `vatt.load(folder)` reads these three)
        config.json         the model config
        vocab.txt           the word vocabulary of the captions (when the run built or read one)
        train_state.pt      optimiser, schedule, RNG and data-position state, counters, the run config
    step_00002000/ ...

A checkpoint is written into a hidden temporary folder, flushed to disk, then renamed into place: a
folder named `step_*` is always complete, so a crash mid-write leaves the previous one as the latest.
`train_state.pt` holds only tensors and plain Python values and is read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vatt.checkpoint.io import CONFIG as MODEL_CONFIG
from vatt.checkpoint.io import VOCAB, WEIGHTS

_STEP_DIR = re.compile(r"^step_(\d{8,})$")
TRAIN_STATE = "train_state.pt"


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(root: str | Path, step: int, weights: dict[str, torch.Tensor], model_config: dict[str, Any],
                    train_state: dict[str, Any], keep_last: int, tokenizer: Any = None) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep_last`. Returns its folder."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        # The same files as `vatt.save`, so that `vatt.load(folder)` reads a checkpoint as a model folder.
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt"})
        (tmp / MODEL_CONFIG).write_text(json.dumps(model_config, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp / VOCAB)
        torch.save(train_state, tmp / TRAIN_STATE)
        for f in tmp.iterdir():
            _fsync(f)
        if final.exists():  # re-saving a step (e.g. after a resume): move the old one out of the way first
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=root))
            os.replace(final, old / final.name)
            shutil.rmtree(old)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep_last, final)
    return final


def _prune(root: Path, keep_last: int, written: Path) -> None:
    # The checkpoint just written is always kept, even if older runs left higher step numbers behind.
    others = [p for p in list_checkpoints(root) if p != written]
    for old in others[:max(len(others) - (keep_last - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step_*"):  # left behind by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)


# What a pre-training or fine-tuning run writes into its output folder; `overwrite` deletes these only.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "eval.jsonl", "tensorboard", "vocab.txt", "config.json", "best",
               "final", "results.json", "evaluation.json")


class OutputDirNotEmpty(ValueError):
    """A new run was pointed at a folder that already holds an earlier run's files."""


def prepare_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """Refuse a new run into a non-empty folder (its checkpoints and logs would mix with the earlier
    run's, and pruning by step number would keep the wrong ones); with `overwrite`, delete the earlier
    run's files first (rank 0 only). Resuming continues in place."""
    out = Path(output_dir)
    if resume or not out.is_dir():
        return
    found = sorted(p.name for p in out.iterdir())
    if not found:
        return
    if not overwrite:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise OutputDirNotEmpty(f"{out} is not empty ({shown}): resume the run there, overwrite it, or choose "
                                f"another run.output_dir")
    if is_main:
        for name in RUN_OUTPUTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / WEIGHTS))


def load_train_state(folder: str | Path) -> dict[str, Any]:
    return torch.load(Path(folder) / TRAIN_STATE, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------
# RNG state as plain values (weights_only=True rejects numpy arrays)
# ---------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    # random.setstate needs tuples; a round trip through torch.save keeps them, but be lenient with lists.
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
