import argparse
import csv
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from vatt.data.sample_data import write_sample_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skips when it is absent outside CI, fails under CI=true."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing (CI must have ../shared beside the clone)")
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # One torch thread: tests check behaviour, not speed, and on a shared 2-core machine a tiny model's step
    # with two threads can take ten times longer (each operation waits for a descheduled thread).
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    """A port nothing listens on now, for a torchrun rendezvous (two test runs at once must not meet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest_rows(manifest: Path) -> list[dict]:
    """The rows of a CSV manifest, as the tests read what `vatt sample-data` wrote."""
    with open(manifest, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    """`vatt sample-data` output: 10 clips with captions and labels (real encoded media)."""
    out = tmp_path_factory.mktemp("sample")
    write_sample_dataset(out, num_clips=10, seed=0)
    return out


def kill_when_marked(proc: subprocess.Popen, marker: Path, log: Path, timeout: float = 300) -> None:
    """SIGKILL `proc` (started with start_new_session=True) and its DataLoader workers once it has written
    `marker`; fail with the end of its `log` if it ends or takes longer than `timeout` first."""
    try:
        deadline = time.time() + timeout
        while not marker.exists():
            assert proc.poll() is None, f"the run to be killed ended early:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"the run to be killed never reached its step:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class HangAt:
    """A training callback that marks when step `at` is done, then blocks, so a test can SIGKILL the run."""

    def __init__(self, at: int, marker: str):
        self.at, self.marker = at, marker

    def on_step(self, step, metrics):
        if step == self.at:
            Path(self.marker).write_text("ready")
            time.sleep(600)


def worker_args() -> tuple[Path, list[str], list]:
    """What a test file run as a training worker script is told: (output folder, --set overrides, callbacks)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--hang-at", type=int, default=0)
    parser.add_argument("--marker", default="")
    args = parser.parse_args()
    return Path(args.out), args.set, [HangAt(args.hang_at, args.marker)] if args.hang_at else []
