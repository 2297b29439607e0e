"""Training checkpoints: written atomically, the last K kept, read without unsafe unpickling.

Layout of `<output_dir>/checkpoints/`:

    step_00001000/
        model.safetensors   weights (a model folder: `vatt.load(folder)` reads these three)
        config.json         the model config
        vocab.txt           the word vocabulary of the captions (when the run built or read one)
        train_state.pt      optimiser, schedule, RNG and data-position state, counters, the run config
        manifest.json       sizes and SHA-256 of the files above, written last
    step_00002000/ ...

A checkpoint is written into a hidden temporary folder, flushed to disk, then renamed into place
(`vatt.atomic.atomic_folder`): a folder named `step_*` is always complete, so a crash mid-write leaves
the previous one as the latest, and a failed write (a full disk) raises `WriteFailed` saying which
checkpoint is intact. A checkpoint damaged afterwards (a partial copy, bit rot) fails its manifest:
`resumable_checkpoint` then falls back to the newest intact one and renames the damaged ones to
`step_*.damaged` (kept for inspection, never pruned, never resumed from).
`train_state.pt` holds only tensors and plain Python values and is read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from vatt import faults
from vatt.atomic import WriteFailed, atomic_folder, atomic_write, write_text
from vatt.checkpoint.io import CONFIG as MODEL_CONFIG
from vatt.checkpoint.io import VOCAB, WEIGHTS, read_weights, write_weights
from vatt.checkpoint.manifest import DamagedFolder, verify_folder, write_manifest

log = logging.getLogger("vatt.engine")

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


@contextlib.contextmanager
def _worker_death_deferred() -> Iterator[None]:
    """Hold torch's DataLoader SIGCHLD handler until the block ends.

    That handler raises "DataLoader worker ... is killed" wherever the main process is; inside torch.save
    it would leave the zip writer half done and bury the reason under "unexpected pos". Deferred, the
    checkpoint completes and the worker's death is reported right after it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGCHLD)
    if not callable(previous):
        yield
        return
    pending: list[int] = []
    signal.signal(signal.SIGCHLD, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)
        if pending:
            previous(signal.SIGCHLD, None)


def save_checkpoint(root: str | Path, step: int, weights: dict[str, torch.Tensor], model_config: dict[str, Any],
                    train_state: dict[str, Any], keep_last: int, tokenizer: Any = None) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep_last`. Returns its folder.

    A failed write (disk full, no permission) raises `WriteFailed` naming the checkpoint and the newest
    intact one; nothing of the failed checkpoint is left.
    """
    root = Path(root)
    final = checkpoint_dir(root, step)
    try:
        with _worker_death_deferred(), atomic_folder(final, what="checkpoint") as tmp:
            # The same files as `vatt.save`, so that `vatt.load(folder)` reads a checkpoint as a model folder.
            write_weights(tmp / WEIGHTS, weights)
            faults.point("checkpoint.write", step)
            write_text(tmp / MODEL_CONFIG, json.dumps(model_config, indent=2) + "\n")
            if tokenizer is not None:
                tokenizer.save(tmp / VOCAB)
            with atomic_write(tmp / TRAIN_STATE) as f:  # its file object keeps the OSError torch.save hides
                torch.save(train_state, f)
            write_manifest(tmp)  # last: it vouches for the files above
    except WriteFailed as e:
        previous = latest_checkpoint(root)
        name = final / e.path.name if e.path.parent.name.startswith(".tmp-") else e.path  # not the temporary
        raise WriteFailed(name, e.cause, f"checkpoint {final.name} (the previous checkpoint, "
                                           f"{previous or 'none'}, is intact; free space and resume):") from e
    faults.point("checkpoint.written", step)
    _prune(root, keep_last, final)
    return final


def _prune(root: Path, keep_last: int, written: Path) -> None:
    # The checkpoint just written is always kept, even if older runs left higher step numbers behind.
    others = [p for p in list_checkpoints(root) if p != written]
    for old in others[:max(len(others) - (keep_last - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step_*"):  # left behind by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)


def resumable_checkpoint(root: str | Path, quarantine: bool = True) -> Path | None:
    """The newest checkpoint under `root` whose files match its manifest, None if there is none.

    A damaged newer one is logged with the file and the reason and, with `quarantine`, renamed to
    `step_*.damaged` (so that it is neither resumed from nor counted by `keep_last`). If every
    checkpoint is damaged, raises `DamagedFolder` for the newest.
    """
    found = list_checkpoints(root)
    damaged: list[DamagedFolder] = []
    for folder in reversed(found):
        try:
            verify_folder(folder, required=[WEIGHTS, TRAIN_STATE])
        except DamagedFolder as e:
            damaged.append(e)
            continue
        for e in damaged:
            log.warning("checkpoint %s is damaged (%s: %s); resuming from the newest intact one, %s",
                        e.folder.name, e.file, e.reason, folder.name)
            if quarantine:
                os.replace(e.folder, e.folder.with_name(e.folder.name + ".damaged"))
        return folder
    if damaged:
        raise DamagedFolder(damaged[0].folder, damaged[0].file,
                            f"{damaged[0].reason}; and no older checkpoint under {root} is intact")
    return None


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


def load_weights(folder: str | Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint (or model folder), checked as `vatt.checkpoint.io.read_weights` does."""
    return read_weights(folder, verify=verify)


def load_train_state(folder: str | Path) -> dict[str, Any]:
    return torch.load(Path(folder) / TRAIN_STATE, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------
# RNG state as plain values (weights_only=True rejects numpy arrays)
# ---------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    # random.setstate needs tuples; a round trip through torch.save keeps them, but be lenient with lists.
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
