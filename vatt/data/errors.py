"""The one error type the media pipeline raises for a file it cannot use.

Datasets catch `MediaError`, skip the sample and count skips by `reason`, so `reason` is a short,
stable, machine-readable code; `detail` is for people. Programming errors (a negative start time, a
bad argument) stay `ValueError`: they are bugs in the caller, not bad files.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import sys

# The reason codes in use. A dataset may count skips per code; keep these strings stable.
REASONS = frozenset({
    "missing_file",       # the path does not exist
    "unreadable",         # exists but cannot be read (permissions, a directory, I/O error)
    "empty_file",         # zero bytes
    "corrupt",            # not a media container we can parse, truncated, or no decodable frame
    "no_video_stream",    # video was required but the file has none (e.g. a wav named .mp4)
    "no_audio_stream",    # audio was required but the file has none
    "unsupported_codec",  # the stream's codec has no decoder in this FFmpeg build
    "too_short",          # the requested clip starts after the last frame
    "too_large",          # frame size above the caller's `max_pixels` guard
    "bad_caption",        # caption text missing or unusable (raised by the datasets)
})


class MediaError(Exception):
    """A media file that cannot be used, with the file and a reason code.

    `str(err)` is "<path>: <reason>: <detail>".
    """

    def __init__(self, path: str | os.PathLike, reason: str | None = None, detail: str = ""):
        if reason is None:
            # torch's DataLoader re-raises a worker's exception as `MediaError(message)`, the message being the
            # worker's formatted traceback; recover the fields from its last line so the caller still gets
            # a MediaError with the file and the reason (TypeError makes torch fall back to RuntimeError).
            found = re.findall(rf"MediaError: (.+?): ({'|'.join(sorted(REASONS))})(?:: (.*))?$", str(path), re.M)
            if not found:
                raise TypeError("MediaError needs (path, reason[, detail])")
            path, reason, detail = found[-1]
        if reason not in REASONS:
            # A typo here would silently create a new skip category; fail loudly instead.
            raise ValueError(f"unknown MediaError reason {reason!r}; expected one of {sorted(REASONS)}")
        self.path = os.fspath(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}: {detail}" if detail else f"{self.path}: {reason}")

    def __reduce__(self):
        # DataLoader workers pickle exceptions to send them to the main process; the default
        # reduce would call __init__ with the formatted message only.
        return (type(self), (self.path, self.reason, self.detail))


class DataWorkerDied(RuntimeError):
    """A DataLoader worker process died without an error of its own: killed by a signal (the kernel's
    out-of-memory killer, a SIGKILL). The message says what happened and how to go on."""


def is_worker_death(err: BaseException) -> bool:
    """True for the error torch's DataLoader raises in the main process when a worker process dies
    ("DataLoader worker (pid N) is killed by signal: Killed.", "... exited unexpectedly"), as opposed
    to an exception raised by the dataset inside a worker (re-raised as "Caught X in DataLoader worker").

    A worker that dies while handing a batch over can also surface as a broken connection (or EOF) in the
    file-descriptor passing of multiprocessing's resource sharer, before torch's own check sees it."""
    if isinstance(err, DataWorkerDied):
        return False
    if isinstance(err, RuntimeError):
        return str(err).startswith("DataLoader worker (pid")
    if isinstance(err, (ConnectionError, EOFError)):
        return _in_resource_sharer(err.__traceback__)
    return False


def _in_resource_sharer(tb) -> bool:
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(os.path.join("multiprocessing", "resource_sharer.py")):
            return True
        tb = tb.tb_next
    return False


def quiet_resource_sharer_errors() -> None:
    """Keep a worker's death during a batch handover from printing a thread's traceback.

    The resource sharer's server thread (in the main process) reports a connection that a dying worker left
    half-open through `sys.excepthook`; the training loop reports the death itself, in one line, with what to
    do next. Other exceptions reach the previous hook unchanged."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if isinstance(value, (OSError, EOFError, multiprocessing.AuthenticationError)) and _in_resource_sharer(tb):
            return
        previous(kind, value, tb)

    sys.excepthook = hook


# What the loops catch around their data iteration to recognise a dead worker (see `is_worker_death`).
WORKER_DEATH_ERRORS = (RuntimeError, ConnectionError, EOFError)


def worker_died(err: BaseException, what_next: str) -> DataWorkerDied:
    """The `DataWorkerDied` to raise for torch's worker-death error `err`; `what_next` tells the user
    where the run stopped and how to continue."""
    reason = str(err).strip() if isinstance(err, RuntimeError) else f"its connection broke ({err})"
    return DataWorkerDied(f"a data-loading worker process died: {reason} (a process killed from outside, "
                          f"usually by the out-of-memory killer: fewer data workers or a smaller batch need less "
                          f"memory). {what_next}")
