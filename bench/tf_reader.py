"""Checkpoint conversion speed: our numpy tensor-bundle reader against TensorFlow's own reader.

Builds a Base-size official checkpoint: a randomly initialised `tx_fac_bbs` (ViT-B, WaT-B, T5-Small with
its word table, FAC head) laid out under the official checkpoint keys and shapes (Dense kernels (in, out),
Conv kernels channels-last, separate q/k/v), saved by TensorFlow (`SaveV2`, the op `tf.train.Checkpoint`
uses) — optionally with the two Adam slots per variable, as the released pre-training checkpoints carry.
Then converts it to our parameters (`convert_tf_checkpoint`) with each reader, each run in a fresh process,
alternating, on a warm page cache, and prints read and conversion times, the peak resident memory, and
the ratio TensorFlow / ours. Needs TensorFlow (`pip install "vatt[tf]"`) for writing and for its reader.

    python bench/tf_reader.py               # model variables only (~0.85 GB), 3 rounds
    python bench/tf_reader.py --adam-slots  # plus Adam m and v (~2.6 GB on disk)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vatt.checkpoint import convert_tf as ct  # noqa: E402

# Inverse of each layout in convert_tf: our tensor -> the official checkpoint arrays it comes from.
INVERSE = {
    ct.IDENTITY: lambda a: [a],
    ct.DENSE: lambda a: [a.T],
    ct.CONV3D: lambda a: [a.transpose(2, 3, 4, 1, 0)],
    ct.CONV1D: lambda a: [a.transpose(2, 1, 0)],
    ct.FUSED_DENSE: lambda a: np.split(a.T, 3, axis=1),
    ct.FUSED_BIAS: lambda a: np.split(a, 3, axis=0),
}


def build_model():
    import torch

    from vatt.model import build_model as build

    torch.manual_seed(0)
    return build("tx_fac_bbs")


def official_arrays(model) -> dict[str, np.ndarray]:
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    out = {}
    for name, src in ct.checkpoint_key_map(model, []).items():
        for key, array in zip(src.keys, INVERSE[src.layout](state[name])):
            out[key] = np.ascontiguousarray(array)
    return out


def write_checkpoint(prefix: str, adam_slots: bool) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    arrays = official_arrays(build_model())
    names, tensors = [], []
    for key, array in arrays.items():
        names.append(key + ct.SUFFIX)
        tensors.append(array)
        if adam_slots:
            for slot in "mv":
                names.append(f"{key}/.OPTIMIZER_SLOT/optimizer/{slot}{ct.SUFFIX}")
                tensors.append(np.random.default_rng(len(names)).random(array.shape, np.float32))
    names.append("optimizer/iter" + ct.SUFFIX)
    tensors.append(np.array(500000, np.int64))
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(t) for t in tensors])
    return sum(t.nbytes for t in tensors)


def measure(reader: str, prefix: str) -> dict:
    """One conversion in this process: import, read, read + map onto the model."""
    model = build_model()
    t0 = time.perf_counter()
    if reader == "tf":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow  # noqa: F401  timed apart: a user pays it once per process
    t1 = time.perf_counter()
    arrays = ct.read_tf_checkpoint(prefix, reader)
    checksum = float(sum(float(a.ravel()[-1]) for a in arrays.values()))  # touch every tensor
    t2 = time.perf_counter()
    state, report = ct.convert_arrays(model, arrays)
    t3 = time.perf_counter()
    assert not report.missing, report.missing
    return {"import_s": t1 - t0, "read_s": t2 - t1, "convert_s": t3 - t1, "checksum": checksum,
            "tensors": len(state), "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adam-slots", action="store_true", help="also save Adam m and v for every variable")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--measure", nargs=2, metavar=("READER", "PREFIX"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "ckpt-500000")
        t = time.perf_counter()
        nbytes = write_checkpoint(prefix, args.adam_slots)
        print(f"wrote a tx_fac_bbs checkpoint{' with Adam slots' if args.adam_slots else ''}: "
              f"{nbytes / 1e9:.2f} GB in {time.perf_counter() - t:.0f} s")
        runs: dict[str, list[dict]] = {"native": [], "tf": []}
        for r in range(args.rounds):
            for reader in ("native", "tf") if r % 2 == 0 else ("tf", "native"):
                done = subprocess.run([sys.executable, __file__, "--measure", reader, prefix],
                                      capture_output=True, text=True, check=True)
                runs[reader].append(json.loads(done.stdout.strip().splitlines()[-1]))
        assert runs["native"][0]["checksum"] == runs["tf"][0]["checksum"]
        med = {reader: {k: statistics.median(run[k] for run in rs) for k in ("import_s", "read_s", "convert_s",
                                                                              "max_rss_gb")}
               for reader, rs in runs.items()}
        print(f"{runs['native'][0]['tensors']} tensors; median of {args.rounds} fresh processes each, "
              "warm page cache")
        print(f"{'reader':8s} {'import s':>9s} {'read s':>8s} {'convert s':>10s} {'peak RSS GB':>12s}")
        for reader, m in med.items():
            print(f"{reader:8s} {m['import_s']:9.2f} {m['read_s']:8.2f} {m['convert_s']:10.2f} {m['max_rss_gb']:12.2f}")
        n, tf = med["native"], med["tf"]
        print(f"TensorFlow / ours: read {tf['read_s'] / n['read_s']:.1f}x, convert {tf['convert_s'] / n['convert_s']:.2f}x, "
              f"convert incl. import {(tf['convert_s'] + tf['import_s']) / (n['convert_s'] + n['import_s']):.2f}x")


if __name__ == "__main__":
    main()
