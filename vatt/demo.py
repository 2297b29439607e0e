"""The demo behind `vatt demo`: pre-train the tiny model on the sample dataset, then show that it learned.

1. Write the sample dataset (`vatt.data.sample_data`: coloured shapes that move, beep and are described).
2. Decode every clip once into memory. Two CPU cores cannot decode and augment clips as fast as the tiny
   model trains, so the demo samples windows from decoded clips (a random 0.8 s window with its synced
   audio plus the official audio noise) instead of streaming them through the full augmentation of
   `vatt pretrain`. No flips or colour jitter: the captions name colours and directions.
   Each training clip also gets paraphrases of its caption (`describe_clip` with other seeds: the same
   colour, shape and motion in other words), one drawn per epoch. With a single fixed caption per clip,
   a few hundred clips seen for dozens of epochs are learnt by heart (caption -> that very clip: R@1
   near 100% on training clips, a few % on held-out ones); real corpora give several sentences per
   clip for the same reason (the official loader uses 5, `max_context_sentences`).
3. Pre-train `tx_fac_tiny` with `vatt.pretrain.pretrain` (the same engine as `vatt pretrain`) for a time
   budget: the step count is fixed up front from the measured speed of a few steps, so the schedule
   (warm-up, cosine) runs to its end.
4. Compare the pre-trained model with the same model at its random initialisation on the held-out clips:
   zero-shot text→video and audio→video retrieval (R@1, R@5, MedR) and a linear probe (logistic
   regression) on the "colour shape" labels (16 classes), trained on the training clips' features.
   Plus a t-SNE picture of the held-out video features, coloured by label, for each model.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader, Dataset

from vatt.atomic import write_json
from vatt.checkpoint.io import load
from vatt.configs import get_preset, input_spec
from vatt.data.manifest import read_manifest
from vatt.data.sampling import collate, sample_generator
from vatt.data.decoding import decode_clip
from vatt.data.sample_data import CLASSES, SampleDataConfig, describe_clip, write_sample_dataset
from vatt.data.text import WordTokenizer
from vatt.eval.linear_probe import evaluate_splits
from vatt.eval.retrieval import heldout_retrieval
from vatt.eval.visualize import plot_features_2d, project_2d
from vatt.inference import embed_clips
from vatt.model.factory import build_model
from vatt.precision import autocast_dtype
from vatt.pretrain.config import load_config
from vatt.pretrain.task import pretrain

log = logging.getLogger("vatt.demo")

PRESET = "tx_fac_tiny"


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"
    num_clips: int = 640  # every fifth is held out
    train_minutes: float = 4.0  # time budget of the pre-training
    steps: int = 0  # fixed number of steps instead of the time budget (reproducible results)
    captions_per_clip: int = 4  # the manifest's caption + paraphrases, for training clips
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    workers: int = 2  # processes writing and decoding the sample clips
    precision: str = "auto"


@dataclass
class DemoResult:
    metrics: dict[str, dict[str, float]]  # "pretrained" / "random_init" -> metric -> value
    chance: dict[str, float]
    steps: int
    seconds: dict[str, float]  # wall time of each phase
    num_train: int
    num_heldout: int
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Metric name -> (key in the evaluation dict, higher is better).
METRICS = {
    "text→video R@1": ("text->video/R@1", True),
    "text→video R@5": ("text->video/R@5", True),
    "text→video MedR": ("text->video/MedR", False),
    "audio→video R@1": ("audio->video/R@1", True),
    "audio→video R@5": ("audio->video/R@5", True),
    "audio→video MedR": ("audio->video/MedR", False),
    "linear probe top-1": ("probe/top1", True),
}


class DecodedClips(Dataset):
    """Sample clips decoded once; item (epoch, i) is a random window of clip i (train) or its middle one.

    Returns the dicts of `vatt.data.pretraining.PretrainDataset` (video [T, S, S, 3] in [-1, 1], audio [N],
    text [1, 16], masks) plus `label_index`.
    """

    def __init__(self, clips: Sequence[dict[str, Any]], num_frames: int, audio_samples: int, fps: float,
                 sample_rate: int, train: bool, seed: int, audio_noise: float = 0.01):
        self.clips, self.train, self.seed, self.audio_noise = clips, train, seed, audio_noise
        self.num_frames, self.audio_samples = num_frames, audio_samples
        self.samples_per_frame = sample_rate / fps

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, i = key
        clip = self.clips[i]
        frames, audio = clip["frames"], clip["audio"]
        last_start = min(frames.shape[0] - self.num_frames,
                         int((audio.shape[0] - self.audio_samples) / self.samples_per_frame))
        g = sample_generator(self.seed, epoch, i)
        start = int(torch.randint(0, last_start + 1, (), generator=g)) if self.train else last_start // 2
        video = frames[start:start + self.num_frames].float() * (2 / 255) - 1
        a0 = int(round(start * self.samples_per_frame))
        wave = audio[a0:a0 + self.audio_samples]
        if self.train and self.audio_noise > 0:
            wave = wave + self.audio_noise * wave.abs().max() * torch.randn(wave.shape, generator=g)
        captions = clip["text"]  # [K, 16]: the manifest's caption, then paraphrases
        pick = int(torch.randint(0, captions.shape[0], (), generator=g)) if self.train else 0
        return {"video": video, "audio": wave, "text": captions[pick:pick + 1], "label_index": clip["label_index"],
                "audio_mask": torch.tensor(clip["audio_mask"]), "text_mask": torch.tensor(1.0)}


class _DecodeFiles(Dataset):
    def __init__(self, rows, captions: list[list[str]], tokenizer, duration_s: float, fps: float, sample_rate: int):
        self.rows, self.captions, self.tokenizer = rows, captions, tokenizer
        self.duration_s, self.fps, self.sample_rate = duration_s, fps, sample_rate

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        clip = decode_clip(row.video, 0.0, num_frames=int(self.duration_s * self.fps), fps=self.fps,
                           audio_samples=int(self.duration_s * self.sample_rate), sample_rate=self.sample_rate,
                           video_pad="last", audio_pad="zeros")
        return {"frames": clip.frames, "audio": clip.audio, "audio_mask": clip.audio_mask,
                "text": self.tokenizer.encode(self.captions[i]), "label_index": int(row.fields["label_index"])}


def _decode_all(rows, captions, tokenizer, duration_s: float, fps: float, sample_rate: int, workers: int) -> list[dict]:
    loader = DataLoader(_DecodeFiles(rows, captions, tokenizer, duration_s, fps, sample_rate), batch_size=None,
                        num_workers=workers)
    return list(loader)


def paraphrases(rows, seed: int, count: int) -> list[list[str]]:
    """For each manifest row (clip i of the sample dataset): its caption, then `count - 1` other wordings."""
    out = []
    for i, row in enumerate(rows):
        others = [describe_clip(i, seed + k) for k in range(1, count)]
        if any((c.colour, c.shape, c.motion) != (row.fields["colour"], row.fields["shape"], row.fields["motion"])
               for c in others):
            raise ValueError(f"{row.video}: the manifest does not list the sample clips in order")
        out.append([row.captions[0]] + [c.caption for c in others])
    return out


def _embed(model, clips: Dataset, amp_dtype, batch_size: int = 64) -> dict[str, np.ndarray]:
    keys = [(0, i) for i in range(len(clips))]
    loader = DataLoader(clips, sampler=keys, batch_size=batch_size, collate_fn=collate)
    return embed_clips(model, loader, torch.device("cpu"), amp_dtype)


def evaluate_model(model, train_clips: Dataset, heldout_clips: Dataset, amp_dtype) -> tuple[dict[str, float], dict]:
    """Zero-shot retrieval on the held-out clips and a logistic-regression probe (train → held-out)."""
    heldout = _embed(model, heldout_clips, amp_dtype)
    train = _embed(model, train_clips, amp_dtype)
    metrics = heldout_retrieval(heldout)
    probe = evaluate_splits([((train["video_features"], train["label_index"]),
                              (heldout["video_features"], heldout["label_index"]))],
                            classifier="logistic", num_classes=16, dataset="sample-data colour+shape")
    metrics["probe/top1"] = probe.mean["top1"]
    return metrics, heldout


def measure_step_seconds(settings: list[str], dataset: Dataset, steps: int = 6) -> float:
    """Median seconds of a step of the real loop (data, forward, loss, backward, update), no checkpoints."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, settings + [f"run.output_dir={tmp}", f"optim.total_steps={steps}",
                                            "optim.warmup_steps=1", "log.every_steps=1",
                                            "checkpoint.enabled=false", "run.time_limit_minutes=0"])
        history = pretrain(cfg, train_dataset=dataset).history
    return float(np.median([cfg.data.batch_size / r["clips_per_s"] for r in history[1:]]))


def run_demo(cfg: DemoConfig, *, callbacks: Sequence[Any] = (),
             report: Callable[[str], None] = lambda message: None) -> DemoResult:
    """Run the whole demo; `report` receives one line per phase. Writes into `cfg.out_dir`:
    data/ (the sample dataset), run/ (checkpoints, metrics), results.json, tsne_pretrained.png, tsne_random_init.png.
    """
    out = Path(cfg.out_dir)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. the sample dataset
    data_dir = out / "data"
    manifest = data_dir / "manifest.csv"
    sample_cfg = SampleDataConfig()
    if not manifest.exists() or len(read_manifest(manifest)) != cfg.num_clips:
        report(f"writing {cfg.num_clips} sample clips to {data_dir}")
        write_sample_dataset(data_dir, num_clips=cfg.num_clips, seed=cfg.seed, config=sample_cfg,
                             num_workers=cfg.workers)
    rows = read_manifest(manifest)
    captions = paraphrases(rows, cfg.seed, cfg.captions_per_clip)
    train = [i for i, r in enumerate(rows) if r.fields["split"] == "train"]
    heldout = [i for i, r in enumerate(rows) if r.fields["split"] == "test"]
    seconds["sample data"] = time.perf_counter() - t0

    # 2. decode once
    t1 = time.perf_counter()
    model_config = get_preset(PRESET)
    spec = input_spec(model_config)
    tokenizer = WordTokenizer.build((c for i in train for c in captions[i]), max_size=model_config.text.vocab_size)
    report(f"decoding {len(rows)} clips ({len(train)} for training, {len(heldout)} held out)")
    decode = dict(tokenizer=tokenizer, duration_s=sample_cfg.duration_s, fps=spec.fps, sample_rate=spec.sample_rate,
                  workers=cfg.workers)
    train_decoded = _decode_all([rows[i] for i in train], [captions[i] for i in train], **decode)
    # Held out: the manifest's caption only (the one evaluated).
    heldout_decoded = _decode_all([rows[i] for i in heldout], [captions[i][:1] for i in heldout], **decode)
    window = dict(num_frames=spec.num_frames, audio_samples=spec.audio_samples, fps=spec.fps,
                  sample_rate=spec.sample_rate, seed=cfg.seed)
    train_clips = DecodedClips(train_decoded, train=True, **window)
    seconds["decoding"] = time.perf_counter() - t1

    # 3. pre-train
    amp_dtype = autocast_dtype(cfg.precision, torch.device("cpu"))
    run_dir = out / "run"
    settings = [
        f"model.preset={PRESET}", f"run.seed={cfg.seed}", f"run.precision={cfg.precision}",
        f"data.batch_size={cfg.batch_size}", "data.num_workers=0", f"optim.lr={cfg.lr}", f"optim.final_lr={cfg.lr / 10}",
        "log.tensorboard=false",
        # A tiny model on a small dataset for a few minutes learns fastest without dropout.
        "model.overrides.video.transformer.dropout_rate=0", "model.overrides.audio.transformer.dropout_rate=0",
        "model.overrides.text.transformer.dropout_rate=0", "model.overrides.video.pos_dropout_rate=0",
        "model.overrides.audio.pos_dropout_rate=0"]
    # The tiny model's many small operations gain little from a second thread (measured: 0.13 s vs 0.15 s a
    # step on a quiet 2-core machine), but when other processes share the cores, threads waiting at each
    # operation's barrier made a step 5-10x slower. Measure both; take more threads only if clearly faster.
    all_threads = threads = torch.get_num_threads()
    steps = cfg.steps
    if not steps:  # a time budget: measure the speed of the real loop
        step_s = {}
        for threads in sorted({1, all_threads}):
            torch.set_num_threads(threads)
            step_s[threads] = measure_step_seconds(settings, train_clips)
        threads = all_threads if step_s[all_threads] * 1.5 < step_s[1] else 1
        torch.set_num_threads(threads)
        steps = int(min(max(cfg.train_minutes * 60 / step_s[threads], 50), 5000))
        report(f"a step of {cfg.batch_size} clips takes {step_s[threads]:.2f} s with {threads} thread(s) "
               f"({', '.join(f'{t}: {s:.2f} s' for t, s in step_s.items())}): {steps} steps fit "
               f"{cfg.train_minutes:g} min")
    config = load_config(None, settings + [
        f"run.output_dir={run_dir}", f"optim.warmup_steps={max(steps // 20, 1)}", f"optim.total_steps={steps}",
        f"log.every_steps={max(steps // 50, 1)}", f"checkpoint.every_steps={max(steps // 4, 1)}",
        "checkpoint.keep_last=1",
        # If the machine gets busier than when the speed was measured, stop (with a checkpoint) rather than overrun.
        f"run.time_limit_minutes={0 if cfg.steps else 1.2 * cfg.train_minutes}"])
    report(f"pre-training {PRESET} for {steps} steps of {cfg.batch_size} clips "
           f"({'bf16 autocast' if amp_dtype else 'fp32'}) into {run_dir}")
    t2 = time.perf_counter()
    # The demo's run folder is its own: a second `vatt demo` starts it over. The tokenizer goes into every
    # checkpoint (vocab.txt), so the model folder works with `vatt embed` / `vatt eval retrieval` on captions.
    result = pretrain(config, train_dataset=train_clips, callbacks=callbacks, tokenizer=tokenizer, overwrite=True)
    seconds["pre-training"] = time.perf_counter() - t2
    if result.stopped_early:
        report(f"the time limit stopped pre-training at step {result.step} of {steps}")

    # 4. compare with the random initialisation
    t3 = time.perf_counter()
    report("evaluating the pre-trained and the randomly initialised model on the held-out clips")
    torch.manual_seed(cfg.seed)  # the initial weights of the run (the loop seeds the same way)
    random_init = build_model(config.model.build_config())
    pretrained = load(result.last_checkpoint)
    probe_train = DecodedClips(train_decoded, train=False, **window)
    heldout_clips = DecodedClips(heldout_decoded, train=False, **window)
    metrics, files = {}, {}
    with threadpool_limits(threads):  # scikit-learn's OpenMP/BLAS pools suffer from busy cores like torch's
        for name, model in (("pretrained", pretrained), ("random_init", random_init)):
            metrics[name], emb = evaluate_model(model, probe_train, heldout_clips, amp_dtype)
            png = out / f"tsne_{name}.png"
            plot_features_2d(emb["video_features"], emb["label_index"], png, class_names=CLASSES,
                             coords=project_2d(emb["video_features"], "tsne", cfg.seed, tsne_method="exact"),
                             title=f"t-SNE of held-out video features, {name.replace('_', ' ')}")
            files[f"tsne_{name}"] = str(png)
    seconds["evaluation"] = time.perf_counter() - t3
    torch.set_num_threads(all_threads)
    seconds["total"] = time.perf_counter() - t0

    n = len(heldout)
    chance = {"text→video R@1": 1 / n, "text→video R@5": 5 / n, "text→video MedR": (n + 1) / 2,
              "audio→video R@1": 1 / n, "audio→video R@5": 5 / n, "audio→video MedR": (n + 1) / 2,
              "linear probe top-1": 1 / len(CLASSES)}
    named = {model: {label: metrics[model][key] for label, (key, _) in METRICS.items()} for model in metrics}
    demo = DemoResult(named, chance, result.step, seconds, len(train), n, files)
    files["results"] = str(out / "results.json")
    files["metrics"] = str(run_dir / "metrics.jsonl")
    files["checkpoint"] = str(result.last_checkpoint)
    write_json(out / "results.json", demo.as_dict(), what="results", ensure_ascii=False)
    return demo


def format_table(result: DemoResult) -> str:
    """The comparison as a text table: pre-trained, random init, chance, and whether pre-training won."""
    rows = [("metric", "pre-trained", "random init", "chance", "better")]
    for label, (_, higher) in METRICS.items():
        p, r, c = result.metrics["pretrained"][label], result.metrics["random_init"][label], result.chance[label]
        fmt = (lambda v: f"{v:.1f}") if label.endswith("MedR") else (lambda v: f"{100 * v:.1f}%")
        won = p > r if higher else p < r
        rows.append((label, fmt(p), fmt(r), fmt(c), "yes" if won else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{result.num_heldout} held-out clips (retrieval among all of them; MedR: lower is better); "
                 f"probe: logistic regression on {result.num_train} training clips' video features, 16 classes")
    return "\n".join(lines)


def all_better(result: DemoResult) -> bool:
    return all((result.metrics["pretrained"][k] > result.metrics["random_init"][k]) if higher
               else (result.metrics["pretrained"][k] < result.metrics["random_init"][k])
               for k, (_, higher) in METRICS.items())
