"""The CPU training engine keeps freed memory blocks for reuse (`vatt.engine.memory`)."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from vatt.engine import memory

# Allocates and touches six 16 MB blocks and frees them all, as a step frees its activations, twice, and
# reports how much of the 96 MB the process still holds (resident) after that. With glibc's
# defaults the heap's free top is over the trim threshold (twice the largest block freed so far), so it
# goes back to the kernel, and the next step's blocks are new pages again.
_PROBE = """
import json, sys
import numpy as np
if sys.argv[1] == "reuse":
    from vatt.engine.memory import reuse_freed_memory
    assert reuse_freed_memory()
def rss():
    return next(int(l.split()[1]) << 10 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
def step():
    blocks = [np.ones(1 << 24, dtype=np.uint8) for _ in range(6)]  # np.ones touches every page
    while blocks:  # first to last, so that the last free joins them all to the heap's top
        blocks.pop(0)
before = rss()
step()
step()
print(json.dumps((rss() - before) / (6 << 24)))
"""


def _held(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not Path("/proc/self/status").exists(),
                    reason="mallopt is glibc's; the probe reads /proc")
def test_freed_blocks_stay_with_the_process_for_the_next_step():
    assert _held("default") < 0.1  # glibc's defaults: given back to the kernel
    assert _held("reuse") > 0.9    # kept in the heap


@pytest.mark.parametrize("setting", ["true", "false"])
def test_the_trainer_applies_it_on_cpu_unless_the_config_says_not(monkeypatch, tmp_path, setting):
    from tests.test_pretrain_task import SynthClips, tiny_config
    from vatt.pretrain.task import pretrain
    calls = []
    monkeypatch.setattr(memory, "reuse_freed_memory", lambda: calls.append(1) or True)
    cfg = tiny_config(tmp_path / "run", "optim.total_steps=1", "optim.warmup_steps=0", "checkpoint.enabled=false",
                      f"run.reuse_freed_memory={setting}")
    pretrain(cfg, train_dataset=SynthClips(8))
    assert len(calls) == (setting == "true")
