import os
import socket
from pathlib import Path

import pytest
import torch

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
