"""The GPU pass (`bench/gpu.py`) runs on the CPU in its smoke mode, so the one-call GPU run is exercised here."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_smoke_mode_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--quick", "--sections",
                           "step,fsdp,training", "--batches", "2", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    steps = result["sections"]["step"]
    assert [(r["batch"], r["grad_checkpointing"]) for r in steps] == [(2, False), (2, True)]
    for row in steps + result["sections"]["fsdp"]:
        assert row["finite"] and row["clips_per_s"] > 0 and 0 < row["mfu"] < 1 and row["peak_memory_gb"] > 0
    assert result["sections"]["fsdp"][0]["fsdp"]
    assert result["sections"]["training"]["falls"]
