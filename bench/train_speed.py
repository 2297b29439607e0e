"""Clips per second of a full pre-training step, with every comparison measured in the same run.

    python bench/train_speed.py                       # tiny: fp32/bf16 x DropToken on/off x 1/2 processes;
                                                      # Base (BBS): fp32/bf16 x DropToken on/off, 1 process,
                                                      # and bf16 DropToken on in 2 processes / glibc defaults
    python bench/train_speed.py --sizes tiny          # quick
    python bench/train_speed.py --json out.json

A step is what `vatt pretrain` does (it runs `vatt.pretrain.pretrain` itself): forward of the three
backbones and the FAC head, AsymmetricNCE, backward, NaN check, Adam update, on in-memory random clips
of the model's input size (no decoding). clips/s is the median over the timed steps. "2 processes" is
`torchrun --nproc_per_node 2` (gloo, one thread each) on the same global batch, vs one process with
the default thread count (and with one thread, which matters when other processes share the cores).
"glibc defaults" is the bf16 Base step with `run.reuse_freed_memory=false` (`vatt.engine.memory`).

Achieved FLOP/s = matrix-product FLOPs of one step (counted by torch's FlopCounterMode on a forward +
backward: linear, conv, attention) x steps/s, shown as a fraction of the FLOP/s of a 2048^3 fp32
matrix product measured in this process just before and just after the row, the larger of the two
(and of a bf16 one, the ceiling of bf16 autocast). A Base row times 8 steps and takes the median of the
last 5.

One-process rows are also measured against a yardstick in the step's own process: the fp32 and bf16 peaks
(1 s each) before the first step and after every step, outside the step's timing; each timed step is
compared with the larger of the peaks just before and just after it, and the row gives the median. A row
takes minutes, over which this machine's matmul peak was seen to drift by 10 %; the per-step yardstick
follows the drift. (Only for rows with the default thread count, the parent's yardstick's: not for 2-process
rows, where one rank measuring alone would stall the other, nor for one-thread rows.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"tiny": "tx_fac_tiny", "base": "tx_fac_bbs"}
NO_DROPTOKEN = ["model.overrides.video.droptoken.enabled=false", "model.overrides.audio.droptoken.enabled=false"]


class RandomClips(torch.utils.data.Dataset):
    """A pool of random clips of the model's input size; item (epoch, i) is pool[i % len(pool)]."""

    def __init__(self, preset: str, n: int, pool: int = 8):
        from vatt import configs
        from vatt.configs import input_spec

        spec = input_spec(configs.get_preset(preset))
        g = torch.Generator().manual_seed(0)
        self.n = n
        self.pool = [{"video": torch.rand(spec.num_frames, spec.size, spec.size, 3, generator=g) * 2 - 1,
                      "audio": torch.randn(spec.audio_samples, generator=g),
                      "text": torch.randint(4, 1000, (1, 16), generator=g),
                      "audio_mask": torch.tensor(1.0), "text_mask": torch.tensor(1.0)} for _ in range(pool)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        return self.pool[key[1] % len(self.pool)]


def overrides(preset: str, batch: int, steps: int, precision: str, droptoken: bool, out: str,
              reuse_memory: bool = True) -> list[str]:
    return [f"model.preset={preset}", f"data.batch_size={batch}", "data.num_workers=0", f"optim.total_steps={steps}",
            "optim.warmup_steps=0", f"run.precision={precision}", f"run.output_dir={out}", "log.every_steps=1",
            "log.tensorboard=false", "checkpoint.enabled=false", f"run.reuse_freed_memory={str(reuse_memory).lower()}"
            ] + ([] if droptoken else NO_DROPTOKEN)


def peak_rss_gb() -> float | None:
    """Peak resident memory of this process (VmHWM), in GiB; None where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


class StepYardstick:
    """A training callback: the 2048^3 fp32 and bf16 matmul peaks in this process before the first step and after
    every step (outside the step's timing), so that each step has a yardstick measured seconds before and after
    it in the same process. The machine's speed drifts over a row of minutes; this cancels the drift. `seconds`
    holds each step's time as the loop measured it."""

    SECONDS = 1.0  # per dtype and measurement

    def __init__(self):
        self.peaks: list[dict[str, float]] = []
        self.seconds: list[float] = []

    def measure(self) -> None:
        from bench.model_speed import matmul_peak
        self.peaks.append({"fp32": matmul_peak(torch.float32, seconds=self.SECONDS),
                           "bf16": matmul_peak(torch.bfloat16, seconds=self.SECONDS)})

    def on_start(self, step: int, end: int) -> None:
        self.measure()

    def on_step(self, step: int, metrics: dict) -> None:
        self.seconds.append(metrics["seconds"])
        self.measure()


def run_steps(preset: str, batch: int, steps: int, warmup: int, precision: str, droptoken: bool,
              reuse_memory: bool = True, yardstick: StepYardstick | None = None) -> float:
    """Median clips/s of steps after `warmup`, in this process (or this rank, under torchrun); with `yardstick`,
    matmul peaks are measured around each step."""
    from vatt.pretrain.config import load_config
    from vatt.pretrain.task import pretrain

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, overrides(preset, batch, steps, precision, droptoken, out, reuse_memory))
        result = pretrain(cfg, train_dataset=RandomClips(preset, n=batch * steps),
                          callbacks=[yardstick] if yardstick else ())
    return statistics.median(r["clips_per_s"] for r in result.history[warmup:])


def run_processes(preset: str, batch: int, steps: int, warmup: int, precision: str, droptoken: bool,
                  processes: int, threads: int, reuse_memory: bool = True, step_yardstick: bool = False) -> dict:
    """clips/s (and the peak RSS of rank 0) in fresh processes: 1, or `torchrun --nproc_per_node N`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                    str(29400 + os.getpid() % 1000)] if processes > 1 else []
        cmd = [sys.executable, *launcher, __file__, "--worker", str(out), "--preset", preset, "--batch",
               str(batch), "--steps", str(steps), "--warmup", str(warmup), "--precision", precision,
               *([] if droptoken else ["--no-droptoken"]), *([] if reuse_memory else ["--glibc-defaults"]),
               *(["--step-yardstick"] if step_yardstick else [])]
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True,
                              text=True)
        if proc.returncode:
            raise RuntimeError(f"benchmark process failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def step_flops(preset: str, batch: int, droptoken: bool) -> float:
    """Matrix-product FLOPs of one forward + backward (+ loss) of `batch` clips, counted by torch."""
    from bench.model_speed import flop_counter
    import vatt.model
    from vatt.losses import AsymmetricNCE
    from vatt.pretrain.config import load_config

    cfg = load_config(None, overrides(preset, batch, 1, "fp32", droptoken, "unused"))
    model = vatt.model.build_model(cfg.model.build_config()).train()
    data = RandomClips(preset, n=batch, pool=1)
    batch_data = {k: torch.stack([data[(0, i)][k] for i in range(batch)]) for k in data.pool[0]}
    with flop_counter() as counter:
        out = model(video=batch_data["video"], audio=batch_data["audio"], text=batch_data["text"])
        AsymmetricNCE()(video_va=out.video_va, audio_va=out.audio_va, video_vt=out.video_vt,
                        text_vt=out.text_vt).total.backward()
    return float(counter.get_total_flops())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,base", help="comma-separated: tiny, base")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--tiny-batch", type=int, default=32)
    parser.add_argument("--tiny-steps", type=int, default=12)
    parser.add_argument("--base-batch", type=int, default=2)
    parser.add_argument("--base-steps", type=int, default=8)
    # worker mode (one torchrun rank)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--no-droptoken", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--glibc-defaults", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--step-yardstick", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        yardstick = StepYardstick() if args.step_yardstick else None
        clips = run_steps(args.preset, args.batch, args.steps, args.warmup, args.precision, not args.no_droptoken,
                          not args.glibc_defaults, yardstick)
        if int(os.environ.get("RANK", "0")) == 0:  # every rank logs the same global-batch rate
            steps = {"step_seconds": yardstick.seconds, "step_peaks": yardstick.peaks} if yardstick else {}
            Path(args.worker).write_text(json.dumps({"clips_per_s": clips, "peak_rss_gb": peak_rss_gb(), **steps}))
        return 0

    default_threads = torch.get_num_threads()
    from bench.model_speed import matmul_peak  # the yardstick of the model benchmark, measured here too

    peak = first_peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{default_threads} threads, load average {os.getloadavg()[0]:.1f}; 2048^3 matmul: fp32 "
          f"{peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s", flush=True)
    rows = []
    for size in args.sizes.split(","):
        preset = SIZES[size]
        batch, steps = (args.tiny_batch, args.tiny_steps) if size == "tiny" else (args.base_batch, args.base_steps)
        warmup = 2 if size == "tiny" else 3  # a Base step settles over its first three (first-touch page faults)
        flops = {dt: step_flops(preset, batch, dt) for dt in (True, False)}
        for droptoken in (True, False):
            for precision in ("fp32", "bf16"):
                variants = [("1 proc", default_threads, True)]
                if size == "tiny":
                    variants += [("1 proc", 1, True), ("2 procs", 1, True)]
                elif droptoken and precision == "bf16":
                    # run.reuse_freed_memory=false: glibc's malloc defaults, the baseline of vatt.engine.memory
                    variants += [("2 procs", 1, True), ("1 proc", default_threads, False)]
                for procs, threads, reuse_memory in variants:
                    # the yardstick again just before each row, so that a change of load between rows
                    # moves both (the first-measured peaks are kept in the JSON as "peak_flops")
                    before = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
                    t0 = time.perf_counter()
                    # each row in fresh processes, so its peak RSS is its own
                    # the per-step yardstick where the row uses the threads the parent's yardstick used (under
                    # torchrun a rank measuring alone would stall the other in the gradient all-reduce)
                    result = run_processes(preset, batch, steps, warmup, precision, droptoken,
                                           2 if procs == "2 procs" else 1, threads, reuse_memory,
                                           step_yardstick=procs == "1 proc" and threads == default_threads)
                    clips, rss = result["clips_per_s"], result["peak_rss_gb"]
                    # and just after; the larger of the two is the yardstick, so that a yardstick measured in a
                    # slow moment cannot flatter the row
                    after = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
                    peak = {k: max(before[k], after[k]) for k in before}
                    achieved = flops[droptoken] / batch * clips
                    # the same-process figure: each timed step against the larger of the peaks measured in its own
                    # process just before and just after it; the median over the timed steps
                    in_process = {}
                    if "step_seconds" in result:
                        p = result["step_peaks"]
                        for dt in ("fp32", "bf16"):
                            in_process[dt] = statistics.median(
                                flops[droptoken] / t / max(p[i][dt], p[i + 1][dt])
                                for i, t in enumerate(result["step_seconds"]) if i >= warmup)
                    row = {"size": size, "preset": preset, "batch": batch, "precision": precision,
                           "droptoken": droptoken, "processes": 2 if procs == "2 procs" else 1, "threads": threads,
                           "reuse_freed_memory": reuse_memory,
                           "clips_per_s": clips, "step_gflop": flops[droptoken] / 1e9,
                           "achieved_gflop_s": achieved / 1e9, "frac_fp32_matmul": achieved / peak["fp32"],
                           "frac_bf16_matmul": achieved / peak["bf16"], "wall_s": time.perf_counter() - t0,
                           "fp32_matmul_gflop_s": peak["fp32"] / 1e9, "bf16_matmul_gflop_s": peak["bf16"] / 1e9,
                           "peak_rss_gb": rss,
                           "frac_fp32_matmul_in_process": in_process.get("fp32"),
                           "frac_bf16_matmul_in_process": in_process.get("bf16"),
                           "step_seconds": result.get("step_seconds"), "step_peaks": result.get("step_peaks")}
                    rows.append(row)
                    memory = f", peak RSS {rss:.1f} GiB{' (rank 0)' if procs == '2 procs' else ''}" if rss else ""
                    print(f"{size:4s} {precision} droptoken={'on ' if droptoken else 'off'} {procs} x {threads} thr"
                          f"{'' if reuse_memory else ', glibc defaults'}: "
                          f"{clips:8.2f} clips/s  {achieved / 1e9:7.1f} GFLOP/s = {row['frac_fp32_matmul']:.2f} of "
                          f"fp32 matmul ({before['fp32'] / 1e9:.0f} / {after['fp32'] / 1e9:.0f} GFLOP/s "
                          f"before / after), "
                          f"{row['frac_bf16_matmul']:.2f} of bf16 "
                          f"({row['wall_s']:.0f} s{memory})",
                          flush=True)
                    if in_process:
                        print(f"     in-process yardstick around each step: {in_process['fp32']:.2f} of fp32 matmul, "
                              f"{in_process['bf16']:.2f} of bf16 (median of the timed steps)", flush=True)

    def rate(size, precision, droptoken, processes=1, threads=default_threads, reuse_memory=True):
        for r in rows:
            if (r["size"], r["precision"], r["droptoken"], r["processes"], r["threads"], r["reuse_freed_memory"]) == \
                    (size, precision, droptoken, processes, threads, reuse_memory):
                return r["clips_per_s"]
        return None

    ratios = {}
    for size in args.sizes.split(","):
        pairs = {
            "bf16 / fp32 (DropToken on)": (rate(size, "bf16", True), rate(size, "fp32", True)),
            "bf16 / fp32 (DropToken off)": (rate(size, "bf16", False), rate(size, "fp32", False)),
            "DropToken on / off (fp32)": (rate(size, "fp32", True), rate(size, "fp32", False)),
            "DropToken on / off (bf16)": (rate(size, "bf16", True), rate(size, "bf16", False)),
            f"2 procs x 1 thread / 1 proc x {default_threads} threads (bf16, DropToken on)":
                (rate(size, "bf16", True, 2, 1), rate(size, "bf16", True)),
            "2 procs x 1 thread / 1 proc x 1 thread (bf16, DropToken on)":
                (rate(size, "bf16", True, 2, 1), rate(size, "bf16", True, 1, 1)),
            "freed memory reused / glibc defaults (bf16, DropToken on)":
                (rate(size, "bf16", True), rate(size, "bf16", True, reuse_memory=False)),
        }
        for name, (a, b) in pairs.items():
            if a and b:
                ratios[f"{size}: {name}"] = a / b
    print("\nratios (same run):")
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_flops": first_peak, "rows": rows, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
