"""What a run reports: callbacks (for a progress bar or a notebook), metrics.jsonl and TensorBoard.

The library never prints. The loop calls `Callback` hooks on rank 0 and logs messages through the
`logging` module (logger "vatt.train"); the `vatt pretrain` command installs `ProgressBar` and a logging
handler that writes above the bar.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import types
from pathlib import Path
from typing import Any

from vatt.atomic import WriteFailed, write_text

log = logging.getLogger("vatt.train")


class Callback:
    """Hooks called by `pretrain` on rank 0. Override the ones you need."""

    def on_start(self, start_step: int, total_steps: int) -> None: ...

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """After every optimiser step: step (1-based), loss, lr, clips_per_s, skipped (bool)."""

    def on_log(self, step: int, record: dict[str, Any]) -> None:
        """After every `log.every_steps` steps, with the record written to metrics.jsonl."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_end(self, result: Any) -> None: ...


class MetricsWriter:
    """Appends training records to `<dir>/metrics.jsonl`, held-out checks to `<dir>/eval.jsonl`, and both to
    TensorBoard (`<dir>/tensorboard`, as train/* and eval/*)."""

    FILES = {"train": "metrics.jsonl", "eval": "eval.jsonl"}

    def __init__(self, directory: str | Path, tensorboard: bool = True, resume_step: int | None = None):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.files = {}
        for kind, name in self.FILES.items():
            path = directory / name
            if resume_step is None:
                write_text(path, "")  # a fresh run starts fresh files
            elif path.exists():
                _truncate_after(path, resume_step)
            self.files[kind] = path.open("a")
        self.paths = {kind: directory / name for kind, name in self.FILES.items()}
        self.tb = None
        if tensorboard:
            # TensorBoard imports TensorFlow when it is installed (the [tf] extra): 7 s, ~0.5 GB per rank and
            # log spam, only to write event files. Its `notf` marker module selects its own stub instead.
            sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(directory / "tensorboard"), purge_step=resume_step)

    def write(self, record: dict[str, Any], kind: str = "train") -> None:
        # NaN (a skipped step's loss) is not JSON: write null.
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        try:  # appended: a failed write leaves at most a torn last line, which a resume drops
            self.files[kind].write(json.dumps(clean) + "\n")
            self.files[kind].flush()
        except OSError as e:
            raise WriteFailed(self.paths[kind], e, "metrics") from e
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(f"{kind}/{key}", value, record["step"])

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        if self.tb is not None:
            self.tb.close()


def _truncate_after(path: Path, step: int) -> None:
    # A resumed run redoes the steps after its checkpoint; drop the old records of those steps, and a last
    # line torn by a crash or a full disk in the middle of writing it.
    kept = []
    for line in path.read_text().splitlines():
        try:
            if line.strip() and json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            log.warning("%s: dropped an incomplete record (%r)", path, line[:80])
    write_text(path, "".join(line + "\n" for line in kept), what="metrics")


def read_metrics(directory: str | Path, kind: str = "train") -> list[dict[str, Any]]:
    """The records of `<dir>/metrics.jsonl` (kind "train") or `<dir>/eval.jsonl` (kind "eval")."""
    path = Path(directory) / MetricsWriter.FILES[kind]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ProgressBar(Callback):
    """A tqdm bar: step, loss, learning rate, clips/s and ETA."""

    def __init__(self, **tqdm_kwargs: Any):
        self.kwargs = tqdm_kwargs
        self.bar = None

    def on_start(self, start_step: int, total_steps: int) -> None:
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, **self.kwargs)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                             clips_s=f"{metrics['clips_per_s']:.1f}", refresh=False)

    def on_end(self, result: Any) -> None:
        if self.bar is not None:
            self.bar.close()


class TqdmLoggingHandler(logging.Handler):
    """Writes log records above a running tqdm bar instead of breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm
        try:
            tqdm.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
