"""The GPU pass in one call: pre-training step speed, memory and MFU, FSDP, CUDA parity, a short bf16 run, and
how many CPU cores of decoding one GPU needs.

    python bench/gpu.py --json gpu.json                  # on a machine with one CUDA device (<= ~9 minutes)
    python bench/gpu.py --device cpu --quick             # smoke run of every section on the CPU (tiny model)

Sections, in this order (each is timed; one that fails is reported with its error and the others still run;
once `--budget-s` is spent the remaining rows and sections are listed as skipped):

1. parity:   the converted official tiny checkpoints on the device in float32 with TF32 off, against the
             official outputs (`../shared/parity/official-tiny`, or `--parity DIR`): max abs error, goal <= 1e-4.
2. training: a short bf16 run of the real loop (`vatt.pretrain.pretrain`, tiny model, a fixed pool of clips):
             the loss must fall.
3. step:     the BBS pre-training step exactly as `vatt pretrain` runs it (`Trainer.train_step`: forward of the three
             backbones and the FAC head under bf16 autocast, AsymmetricNCE, backward, NaN check, Adam), on
             in-memory random clips already on the device, attention through `F.scaled_dot_product_attention`
             (flash kernel on CUDA), eager. Batch sizes doubling until out of memory, with and without
             activation checkpointing. Per row: median step time, clips/s, peak memory (CUDA:
             `max_memory_allocated`; CPU: peak RSS of the process), and MFU = matrix-product FLOPs of the
             step (torch's FlopCounterMode on the device) x steps/s / the device's dense bf16 peak (table
             below; the measured peak of a large bf16 matmul is printed too).
4. fsdp:     the Large step (`tx_fac_lbs`) with the model under FSDP2 (`fully_shard` per layer, as
             `run.parallel=fsdp`) in a one-rank process group on the one device.
5. decoding: clips/s of the pre-training data pipeline on real H.264 + AAC files with one worker per core
             (`bench/pipeline.py`), against the clips/s the step consumes: cores needed per GPU.
6. compile:  (CUDA) the step under `torch.compile` at the two largest batch sizes that fitted eagerly, with
             and without checkpointing; last, because compiling takes minutes per shape.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train_speed import RandomClips, overrides  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, matched in this order
# against torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = [
    ("B200", 2250.0), ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
    ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
    ("RTX A6000", 155.0), ("A40", 150.0),
]


def known_bf16_peak(name: str) -> float | None:
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 1.0) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
            count += 1
        sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start)


def peak_rss_bytes() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# --------------------------------------------------------------------------------------------------
# 1-2: the pre-training step
# --------------------------------------------------------------------------------------------------

def make_run(preset: str, batch: int, device: torch.device, precision: str, compile: bool, ckpt: bool,
             fsdp: bool = False, extra: tuple[str, ...] = ()):
    """A `Trainer` of the pre-training task and one batch of random clips on the device."""
    from vatt.data.sampling import collate
    from vatt.pretrain.config import load_config
    from vatt.distributed import DistEnv
    from vatt.engine.loop import Trainer
    from vatt.pretrain.task import PretrainTask
    from vatt.engine.optim import build_optimizer

    out = tempfile.mkdtemp(prefix="vatt-gpu-bench-")
    cfg = load_config(None, overrides(preset, batch, 1000, precision, True, out) + [
        f"run.device={device.type}", f"model.compile={str(compile).lower()}",
        f"model.grad_checkpointing={str(ckpt).lower()}", *extra])
    data = RandomClips(preset, n=batch, pool=min(batch, 8))
    run = Trainer(cfg, PretrainTask(cfg, data), DistEnv(0, 0, 1, device), data)
    if fsdp:  # wrap_model leaves a one-rank model unwrapped; shard it as run.parallel=fsdp does on many ranks
        from torch.distributed.fsdp import fully_shard
        for m in list(run.raw_model.modules()):
            if isinstance(m, torch.nn.ModuleList):
                for layer in m:
                    fully_shard(layer)
        fully_shard(run.raw_model)
        run.model = run.raw_model
        run.optimizer = build_optimizer(run.raw_model, cfg.optim)
        run.params = [p for p in run.raw_model.parameters() if p.requires_grad]
    clips = collate([data[(0, i)] for i in range(batch)])
    clips = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in clips.items()}
    return run, clips


def step_flops(preset: str, batch: int, device: torch.device) -> float:
    """Matrix-product FLOPs of one forward + backward + loss of `batch` clips, counted on the device."""
    from bench.model_speed import flop_counter
    run, clips = make_run(preset, batch, device, "bf16", False, False)
    run.model.train()
    with flop_counter() as counter:
        run.task.loss(clips)["loss"].backward()
    del run
    return float(counter.get_total_flops())


def time_steps(run, clips, device: torch.device, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    losses = []
    for _ in range(warmup):
        losses.append(run.train_step([clips])["loss"])
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        losses.append(run.train_step([clips])["loss"])  # ends with .tolist(): the step is finished on the device
        times.append(time.perf_counter() - start)
    return times, losses


def measure_step(preset: str, batch: int, device: torch.device, compile: bool, ckpt: bool, steps: int,
                 warmup: int, fsdp: bool = False) -> dict:
    row = {"preset": preset, "batch": batch, "compile": compile, "grad_checkpointing": ckpt, "fsdp": fsdp}
    run = None
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run, clips = make_run(preset, batch, device, "bf16", compile, ckpt, fsdp)
        times, losses = time_steps(run, clips, device, steps, warmup)
        seconds = statistics.median(times)
        row.update(step_s=seconds, clips_per_s=batch / seconds, finite=all(math.isfinite(x) for x in losses),
                   peak_memory_gb=(torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                                   else peak_rss_bytes()) / 2**30)
    except Exception as e:  # noqa: BLE001 -- an out-of-memory ends the sweep; anything else is reported
        if not is_oom(e):
            raise
        row.update(oom=True)
    finally:
        del run
        free_memory(device)
    return row


def step_sweep(args, device: torch.device, peak: float, report, compile: bool, eager_rows: list[dict],
               out_of_time) -> list[dict]:
    """Eager: batch sizes doubling until out of memory, with and without activation checkpointing.
    Compiled (minutes of compilation per shape): the two largest batch sizes that fitted eagerly."""
    preset = "tx_fac_tiny" if args.quick else "tx_fac_bbs"
    flops_per_clip = step_flops(preset, 2, device) / 2
    report(f"{preset}: {flops_per_clip / 1e9:.4g} GFLOP per clip (forward + backward + loss)")
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for ckpt in (False, True):
        sweep = batches
        if compile:
            fitted = [r["batch"] for r in eager_rows if r["grad_checkpointing"] == ckpt and "clips_per_s" in r]
            sweep = fitted[-2:] or batches[:1]
        for batch in sweep:
            if out_of_time():
                rows.append({"preset": preset, "batch": batch, "compile": compile, "grad_checkpointing": ckpt,
                             "skipped": "--budget-s spent"})
                report(f"  batch {batch} {'ckpt ' if ckpt else ''}skipped: budget spent")
                break
            row = measure_step(preset, batch, device, compile, ckpt, args.steps, args.warmup)
            if not record_step_row(row, rows, flops_per_clip, peak, report):
                break
    return rows


def record_step_row(row: dict, rows: list[dict], flops_per_clip: float, peak: float, report) -> bool:
    """Add throughput and MFU to a measured step, keep and report it; False once the batch ran out of memory."""
    if not row.get("oom"):
        row["mfu"] = flops_per_clip * row["clips_per_s"] / peak
        row["tflops"] = flops_per_clip * row["clips_per_s"] / 1e12
    rows.append(row)
    report(format_step_row(row))
    return not row.get("oom")


def format_step_row(r: dict) -> str:
    name = (f"{r['preset']} batch {r['batch']:4d} {'compile' if r['compile'] else 'eager  '} "
            f"{'ckpt' if r['grad_checkpointing'] else '    '}{' fsdp' if r['fsdp'] else ''}")
    if r.get("oom"):
        return f"  {name}: out of memory"
    return (f"  {name}: {r['step_s'] * 1e3:8.1f} ms/step {r['clips_per_s']:8.2f} clips/s "
            f"{r.get('tflops', float('nan')):7.3g} TFLOP/s MFU {r.get('mfu', float('nan')):.3f} "
            f"peak mem {r['peak_memory_gb']:.1f} GiB")


def fsdp_step(args, device: torch.device, peak: float, report) -> list[dict]:
    import warnings

    import torch.distributed as dist

    # as vatt.engine.parallel.wrap_model: the model returns views, and the loop never modifies them in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    preset = "tx_fac_tiny" if args.quick else "tx_fac_lbs"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)
    try:
        flops_per_clip = step_flops(preset, 2, device) / 2
        rows = []
        for batch in [int(b) for b in args.fsdp_batches.split(",")]:
            row = measure_step(preset, batch, device, False, False, args.steps, args.warmup, fsdp=True)
            if not record_step_row(row, rows, flops_per_clip, peak, report):
                break
        return rows
    finally:
        if owns:
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# 3: parity on the device
# --------------------------------------------------------------------------------------------------

def parity(args, device: torch.device, report) -> dict:
    import numpy as np

    import vatt
    from vatt.cli import main as cli

    folder = Path(args.parity)
    if not folder.exists():
        return {"skipped": f"{folder} not found (the official parity data; --parity DIR)"}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("tx_fac", "ut_fac"):
            out = Path(tmp) / name
            rc = cli(["convert-tf", str(folder / name / "ckpt" / "ckpt-1"), "--official-config",
                      str(folder / name / "config.json"), "--out", str(out)])
            if rc:
                return {"error": f"convert-tf {name} exited with {rc}"}
            model = vatt.load(out).to(device).eval()
            inputs = np.load(folder / name / "inputs.npz")
            ref = np.load(folder / name / "outputs.npz")
            with torch.no_grad():
                o = model(video=torch.from_numpy(inputs["video"]).to(device),
                          audio=torch.from_numpy(inputs["audio"]).to(device),
                          text=torch.from_numpy(inputs["text"]).long().to(device))
            got = {"video/features_pooled": o.video.features_pooled, "audio/features_pooled": o.audio.features_pooled,
                   "text/features_pooled": o.text.features_pooled, "head_stack/bridge/video/toaud": o.video_va,
                   "head_stack/bridge/video/totxt": o.video_vt, "head_stack/bridge/audio/tovid": o.audio_va,
                   "head_stack/bridge/text/tovid": o.text_vt, "video/features": o.video.features,
                   "audio/features": o.audio.features, "text/features": o.text.features}
            errors[name] = max(float(np.abs(v.double().cpu().numpy() - ref[k]).max()) for k, v in got.items())
            report(f"  {name}: max abs error vs official outputs {errors[name]:.2e} (float32, TF32 off)")
    return {"max_abs_error": errors, "ok": max(errors.values()) <= 1e-4}


# --------------------------------------------------------------------------------------------------
# 4: a short bf16 training run
# --------------------------------------------------------------------------------------------------

def short_training(args, device: torch.device, report) -> dict:
    from vatt.pretrain.config import load_config
    from vatt.pretrain.task import pretrain

    steps = 30 if args.quick else 60
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, overrides("tx_fac_tiny", 16, steps, "bf16", True, out) + [
            f"run.device={device.type}", "optim.lr=1e-3", "optim.warmup_steps=5"])
        result = pretrain(cfg, train_dataset=RandomClips("tx_fac_tiny", n=16 * steps, pool=16))
    losses = [r["loss"] for r in result.history]
    first, last = statistics.mean(losses[:5]), statistics.mean(losses[-5:])
    report(f"  tx_fac_tiny, bf16, {steps} steps of 16 clips: loss {first:.3f} (first 5) -> {last:.3f} (last 5)")
    return {"steps": steps, "loss_first5": first, "loss_last5": last, "falls": last < first}


# --------------------------------------------------------------------------------------------------
# 5: decoding against consumption
# --------------------------------------------------------------------------------------------------

def decoding(args, step_rows: list[dict], report) -> dict:
    from bench.pipeline import cpu_cores, measure

    cores = cpu_cores()
    counts = [1] if args.quick else sorted({1, cores})
    result = measure(clips=4 if args.quick else 48, worker_counts=counts, seconds=6.0 if args.quick else 30.0)
    best = max((r["clips_per_s"] for r in step_rows if "clips_per_s" in r), default=None)
    per_core = result["rows"][0]["clips_per_s"]
    for r in result["rows"]:
        report(f"  {r['workers']} workers: {r['clips_per_s']:.2f} clips/s ({r['clips_per_s_per_worker']:.2f} per "
               f"worker)")
    out = {"cores": cores, "rows": result["rows"], "clips_per_s_per_core": per_core}
    if best:
        out.update(step_clips_per_s=best, cores_per_device=best / per_core,
                   all_cores_feed_fraction=result["rows"][-1]["clips_per_s"] / best)
        report(f"  the fastest step row consumes {best:.1f} clips/s = {best / per_core:.1f} cores of decoding at "
               f"{per_core:.2f} clips/s per core; this machine's {cores} cores deliver "
               f"{result['rows'][-1]['clips_per_s']:.1f} clips/s")
    return out


# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny model, small batches: a smoke run")
    parser.add_argument("--batches", default="", help="step batch sizes (default 8,16,...,512; quick: 2,4)")
    parser.add_argument("--fsdp-batches", default="", help="default 8,16,32,64 (quick: 2)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per row (default 5; quick 2)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 3; quick 1)")
    parser.add_argument("--sections", default="",
                        help="default parity,training,step,fsdp,decoding,compile (compile: CUDA only)")
    parser.add_argument("--parity", default=str(ROOT.parent / "shared" / "parity" / "official-tiny"))
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="after this many seconds, skip what is left (rows and sections)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    args.batches = args.batches or ("2,4" if args.quick else "8,16,32,64,128,256,512")
    args.fsdp_batches = args.fsdp_batches or ("2" if args.quick else "8,16,32,64")
    args.sections = args.sections or ("parity,training,step,fsdp,decoding" +
                                      (",compile" if args.device == "cuda" else ""))
    args.steps = args.steps or (2 if args.quick else 5)
    args.warmup = args.warmup or (1 if args.quick else 3)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: torch sees no CUDA device (use --device cpu --quick for the smoke run)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    started = time.perf_counter()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        measured = matmul_peak(device, torch.bfloat16, 8192)
        known = known_bf16_peak(name)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
        measured = matmul_peak(device, torch.bfloat16, 1024 if args.quick else 2048)
        known = None
    peak = known or measured
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{name}; torch {torch.__version__}; load average {load:.1f}; bf16 matmul measured "
          f"{measured / 1e12:.3g} TFLOP/s; MFU against {peak / 1e12:.3g} TFLOP/s "
          f"({'data-sheet dense bf16 peak' if known else 'the measured matmul'})", flush=True)
    results: dict = {"device": name, "torch": torch.__version__, "load_average": load,
                     "bf16_matmul_measured": measured, "bf16_peak_used": peak, "peak_source":
                     "data sheet" if known else "measured", "sections": {}}

    def report(line: str) -> None:
        print(line, flush=True)

    step_rows: list[dict] = []

    def out_of_time() -> bool:
        return time.perf_counter() - started > args.budget_s

    for section in args.sections.split(","):
        if out_of_time():
            results["sections"][section] = {"skipped": f"--budget-s {args.budget_s:g} spent"}
            print(f"[{section}] skipped: budget spent", flush=True)
            continue
        print(f"[{section}]", flush=True)
        t0 = time.perf_counter()
        try:
            if section in ("step", "compile"):
                rows = step_sweep(args, device, peak, report, section == "compile", step_rows, out_of_time)
                if section == "step":
                    step_rows = rows
                value: object = rows
            elif section == "fsdp":
                value = fsdp_step(args, device, peak, report)
            elif section == "parity":
                value = parity(args, device, report)
                if "skipped" in value or "error" in value:
                    report(f"  {value}")
            elif section == "training":
                value = short_training(args, device, report)
            elif section == "decoding":
                value = decoding(args, step_rows, report)
            else:
                raise ValueError(f"unknown section {section!r}")
        except Exception as e:  # noqa: BLE001 -- one failing section must not hide the others' figures
            value = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            print(f"  failed: {type(e).__name__}: {e}", flush=True)
        results["sections"][section] = value
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    failed = [s for s, v in results["sections"].items() if isinstance(v, dict) and "error" in v]
    if failed:
        print(f"sections that failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
