"""Fault-injection points, for tests of what a crash does to a run. Inert unless `VATT_FAULT` is set.

    VATT_FAULT=<point>:<n>[:group]

makes the process SIGKILL itself the n-th time it reaches `<point>` (for points with a key, e.g. a
step number, when the key equals n). With `:group` it kills its whole process group — the run with
its DataLoader workers, as a node failure would; without, only itself (a DataLoader worker killed by
the out-of-memory killer, when the point is reached in a worker). Points:

    data.decode          a media file is opened for decoding (counted per process)
    train.step           after optimiser step n's update, before its log record and checkpoint
    checkpoint.write     checkpoint n is half-written (weights in its temporary folder, nothing else)
    checkpoint.written   checkpoint n is in place, before older ones are pruned
    resume.loaded        a resumed run has loaded its checkpoint and not yet taken a step (n = 1)
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "VATT_FAULT"
_reached: Counter[str] = Counter()


def point(name: str, key: int | None = None) -> None:
    """Die here if `VATT_FAULT` names this point (see the module docstring)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, _, rest = spec.partition(":")
    if wanted != name:
        return
    n, _, target = rest.partition(":")
    if key is None:
        _reached[name] += 1
        key = _reached[name]
    if key == int(n or 1):
        if target == "group":
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
