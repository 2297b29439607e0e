"""What a run reports: callbacks (for a progress bar or a notebook), metrics.jsonl and TensorBoard.

The library never prints. The training engine (`vatt.engine.loop`) calls `Callback` hooks on rank 0 and
logs messages through the `logging` module (loggers under "vatt"); `vatt pretrain` and `vatt finetune`
install `ProgressBar` and a logging handler that writes above the bar.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
import types
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vatt.atomic import WriteFailed, write_text

log = logging.getLogger("vatt.engine")


class Callback:
    """Hooks the training engine calls on rank 0 (`pretrain`, `finetune`). Override the ones you need: the
    engine calls only those a callback defines (fine-tuning also calls `on_eval_progress(done, total)`)."""

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


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """Progress as plain lines, one every `interval` seconds and one at the end ("desc: 40/300 steps (13%),
    12.0 s, ETA 78 s, loss 4.1"), for output that is not a terminal (a log file, CI, a pipe), where a tqdm
    bar's redraws pile up as one endless line."""

    def __init__(self, desc: str = "", total: int | None = None, unit: str = "it", initial: int = 0,
                 interval: float = 10.0, file: Any = None):
        self.desc, self.total, self.unit, self.n = desc, total, unit, initial
        self.initial, self.interval, self.file = initial, interval, file
        self.postfix = ""
        self.started = self.last = time.monotonic()
        self.closed = False

    def update_to(self, n: int) -> None:
        self.n = n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def _line(self) -> None:
        elapsed = time.monotonic() - self.started
        text = f"{self.desc + ': ' if self.desc else ''}{self.n}"
        if self.total:
            text += f"/{self.total} {self.unit}s ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}s"
        text += f", {elapsed:.1f} s"
        done = self.n - self.initial
        if self.total and 0 < done and self.n < self.total:
            text += f", ETA {elapsed / done * (self.total - self.n):.0f} s"
        if self.postfix:
            text += f", {self.postfix}"
        print(text, file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line()


class ConsoleProgress:
    """A tqdm bar on a terminal, `PlainProgress` lines elsewhere; driven by absolute counts.

    The one progress adapter of the package: the training loop's `ProgressBar` draws one, and the library's
    `progress=` callbacks (`(done, total)`: embedding, feature extraction, indexing) take one as they are,
    `with ConsoleProgress("embedding files", n, "file", leave=False) as bar: embed_files(..., progress=bar)`.
    """

    def __init__(self, desc: str = "", total: int | None = None, unit: str = "it", initial: int = 0,
                 interval: float = 10.0, **tqdm_kwargs: Any):
        self.plain = None if _is_terminal(sys.stderr) else PlainProgress(desc, total, unit, initial, interval)
        self.bar = None
        if self.plain is None:
            self.bar = tqdm(desc=desc or None, total=total, initial=initial, unit=unit, dynamic_ncols=True,
                            **tqdm_kwargs)

    def update_to(self, n: int, total: int | None = None, postfix: str = "") -> None:
        target = self.plain or self.bar
        if total is not None and target.total != total:
            target.total = total
        if self.plain is not None:
            self.plain.set_postfix_str(postfix)
            self.plain.update_to(n)
        else:
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n - self.bar.n)

    def __call__(self, done: int, total: int | None = None) -> None:
        self.update_to(done, total)

    def close(self) -> None:
        (self.plain or self.bar).close()

    def __enter__(self) -> "ConsoleProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ProgressBar(Callback):
    """Step, loss, learning rate, clips/s and ETA: a tqdm bar on a terminal, a plain line every
    `interval` seconds otherwise (see `ConsoleProgress`)."""

    def __init__(self, interval: float = 10.0, **tqdm_kwargs: Any):
        self.kwargs, self.interval = tqdm_kwargs, interval
        self.bar = None

    def on_start(self, start_step: int, total_steps: int) -> None:
        kwargs = {k: v for k, v in self.kwargs.items() if k != "desc"}
        self.bar = ConsoleProgress(self.kwargs.get("desc", "training"), total_steps, "step", start_step,
                                   self.interval, **kwargs)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.bar.update_to(step, postfix=f"loss={metrics['loss']:.4f}, lr={metrics['lr']:.2e}, "
                                         f"clips_s={metrics['clips_per_s']:.1f}")

    def on_end(self, result: Any) -> None:
        if self.bar is not None:
            self.bar.close()


class TqdmLoggingHandler(logging.Handler):
    """Writes log records above a running tqdm bar instead of breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
