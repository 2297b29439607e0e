"""The pre-training loop: `pretrain(config)`, from one CPU process to many GPUs under torchrun.

One optimiser step:
  1. set the learning rate for the step (warm-up + cosine, a function of the step);
  2. seed the model's random draws (dropout, DropToken) from (seed, step, rank), so a resumed run
     draws what an uninterrupted one would;
  3. for each of `grad_accum_steps` micro-batches: forward under bf16 autocast (if on), AsymmetricNCE
     in float32 with negatives gathered from all ranks and clips lacking audio or text masked, backward
     (gradients are averaged over ranks by DDP/FSDP on the last micro-batch only);
  4. if the loss or the gradient norm is NaN/Inf on any rank: skip the update (and undo the BatchNorm
     statistics of the step), count it, and stop after `run.max_consecutive_bad_steps` in a row.
     The official code instead zeroes NaN gradients and applies the update, which hides divergence;
  5. else clip (if asked) and update.
Checkpoints, metrics and the held-out retrieval check happen between steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vatt import faults
from vatt.precision import autocast_dtype
from vatt.checkpoint.io import load_state
from vatt.data.datasets import collate, sample_seed
from vatt.data.errors import WORKER_DEATH_ERRORS, is_worker_death, worker_died
from vatt.engine import checkpoint as ckpt
from vatt.pretrain.config import PretrainConfig
from vatt.pretrain.data import MicroBatches
from vatt.engine.distributed import (DistEnv, all_reduce, barrier, convert_batchnorm, init_distributed,
                                    shutdown_distributed, wrap_model)
from vatt.engine.optim import build_optimizer, set_learning_rate
from vatt.engine.progress import Callback, MetricsWriter

log = logging.getLogger("vatt.pretrain")


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class TrainState:
    """Counters saved in every checkpoint (the data position is saved beside them, per rank)."""

    step: int = 0  # optimiser steps done, skipped ones included
    skipped_steps: int = 0
    consecutive_skipped: int = 0


@dataclass
class PretrainResult:
    output_dir: Path
    step: int
    skipped_steps: int
    last_checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)  # the metrics.jsonl records of this call
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False  # run.time_limit_minutes ended it before optim.total_steps (or run.stop_at_step)


def pretrain(config: PretrainConfig, *, resume: bool = False, callbacks: Iterable[Callback] = (),
             train_dataset: Dataset | None = None, heldout_dataset: Dataset | None = None,
             collate_fn: Any = None, tokenizer: Any = None, overwrite: bool = False) -> PretrainResult:
    """Pre-train a VATT model as `config` says; with `resume`, continue from the latest checkpoint.

    `train_dataset` / `heldout_dataset` replace the datasets named in `config.data`: map-style datasets
    keyed by (epoch, index) pairs, or iterable ones, of dicts as `vatt.data.datasets` yields them (video
    [T, H, W, 3] in [-1, 1], audio [N], text [L, n_words] ids, audio_mask and text_mask floats), stacked by
    `collate_fn` (default `vatt.data.datasets.collate`); `tokenizer` is the word tokenizer that made their
    text ids, saved with every checkpoint as vocab.txt so that the model folder can embed captions.
    A new run (not `resume`) refuses an `run.output_dir` that already holds files, unless `overwrite`
    (which deletes what an earlier run wrote there). Returns once `optim.total_steps` steps are done;
    raises TrainingDiverged if the loss or gradient stays non-finite.
    """
    config.validate()
    env = init_distributed(config.run.device)
    try:
        ckpt.prepare_output_dir(config.run.output_dir, resume=resume, overwrite=overwrite, is_main=env.is_main)
        barrier()  # rank 0 may be deleting an earlier run
        run = _Run(config, env, list(callbacks) if env.is_main else [], train_dataset, heldout_dataset, collate_fn)
        if tokenizer is not None:
            run.tokenizer = tokenizer
        return run.train(resume)
    finally:
        shutdown_distributed(env)


class _Run:
    """State of one `pretrain` call: model, optimiser, data, counters, writers."""

    def __init__(self, cfg: PretrainConfig, env: DistEnv, callbacks: list[Callback],
                 train_dataset: Dataset | None, heldout_dataset: Dataset | None, collate_fn: Any):
        import vatt.model
        from vatt.losses import AsymmetricNCE

        self.cfg, self.env, self.callbacks = cfg, env, callbacks
        self.out = Path(cfg.run.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.state = TrainState()

        self.model_config = cfg.model.build_config()
        torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
        model = vatt.model.build_model(self.model_config)
        if cfg.model.word_embeddings:
            from vatt.checkpoint.word2vec import load_word_embeddings
            load_word_embeddings(model, cfg.model.word_embeddings)
        if cfg.model.init_from:
            load_state(model, ckpt.load_weights(cfg.model.init_from), strict=True)  # checked as vatt.load does
        if cfg.model.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model = convert_batchnorm(model.to(env.device))  # FAC-head BN over the global batch, as SyncBN
        self.raw_model = model  # unwrapped: for state dicts and evaluation
        self.model = wrap_model(model, cfg.run.parallel, env)
        if cfg.model.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(self.raw_model, cfg.optim)
        self.params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.bn_layers = [m for m in self.raw_model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.loss_fn = AsymmetricNCE(temperature=cfg.loss.temperature, vid_txt_weight=cfg.loss.video_text_weight,
                                     vid_aud_weight=cfg.loss.video_audio_weight)
        self.amp_dtype = autocast_dtype(cfg.run.precision, env.device)

        self.tokenizer = None  # known when the run reads captions itself (saved with each checkpoint)
        if train_dataset is None:
            if not cfg.data.train:
                raise ValueError("data.train is empty: name a manifest or a folder of shards in data.train")
            from vatt.pretrain.data import build_dataset, build_tokenizer
            self.tokenizer = build_tokenizer(cfg.data, self.model_config, self.out) if env.is_main else None
            barrier()  # rank 0 may have just written vocab.txt
            if not env.is_main:
                self.tokenizer = build_tokenizer(cfg.data, self.model_config, self.out)
            train_dataset = build_dataset(cfg.data, self.model_config, self.tokenizer, "train", cfg.run.seed)
            if heldout_dataset is None and cfg.eval.every_steps:
                heldout_dataset = build_dataset(cfg.data, self.model_config, self.tokenizer, "heldout", cfg.run.seed)
        self.collate_fn = collate_fn = collate_fn or collate
        self.heldout = heldout_dataset
        if cfg.eval.every_steps and self.heldout is None:
            raise ValueError("eval.every_steps is set but there is no held-out data: name a manifest in data.heldout, "
                             "or set eval.every_steps=0")
        self.data = MicroBatches(train_dataset, collate_fn, cfg.data.batch_size, env.world_size, env.rank,
                                 cfg.optim.grad_accum_steps, cfg.run.seed, cfg.data.num_workers,
                                 pin_memory=env.device.type == "cuda")
        self.micro_batch = cfg.data.batch_size // (env.world_size * cfg.optim.grad_accum_steps)

    # ------------------------------------------------------------------------------------------------
    def train(self, resume: bool) -> PretrainResult:
        if resume:
            self._resume()
        cfg, state = self.cfg, self.state
        writer = MetricsWriter(self.out, cfg.log.tensorboard, state.step if resume else None) if self.env.is_main else None
        result = PretrainResult(self.out, state.step, state.skipped_steps, ckpt.latest_checkpoint(self.ckpt_root))
        end = cfg.run.stop_at_step or cfg.optim.total_steps  # the schedule stays that of optim.total_steps
        self._emit("on_start", state.step, end)
        window: list[dict[str, float]] = []
        micro_batches = iter(self.data)
        started = time.monotonic()
        try:
            while state.step < end:
                t0 = time.perf_counter()
                batches = [next(micro_batches) for _ in range(cfg.optim.grad_accum_steps)]
                data_seconds = time.perf_counter() - t0
                step_metrics = self._step(batches)
                seconds = time.perf_counter() - t0
                step_metrics.update(seconds=seconds, data_seconds=data_seconds, clips_per_s=cfg.data.batch_size / seconds)
                state.step += 1
                window.append(step_metrics)
                faults.point("train.step", state.step)
                self._emit("on_step", state.step, step_metrics)
                last = state.step == end
                out_of_time = not last and self._out_of_time(started)
                if state.step % cfg.log.every_steps == 0 or last or out_of_time:
                    record = self._log_record(window)
                    window = []
                    result.history.append(record)
                    if writer:
                        writer.write(record)
                    self._emit("on_log", state.step, record)
                if cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0:
                    metrics = self.evaluate()
                    log.info("step %d: %s", state.step, format_heldout(metrics))
                    result.eval_history.append({"step": state.step, **metrics})
                    if writer:
                        writer.write({"step": state.step, **metrics}, kind="eval")
                    self._emit("on_eval", state.step, metrics)
                every = cfg.checkpoint.every_steps
                periodic = every and state.step % every == 0 and not state.consecutive_skipped  # not mid-streak
                if cfg.checkpoint.enabled and (periodic or last or out_of_time):
                    result.last_checkpoint = self.save()
                if out_of_time:
                    log.warning("step %d: run.time_limit_minutes=%g reached; stopped with a checkpoint "
                                "(resume to continue)", state.step, cfg.run.time_limit_minutes)
                    result.stopped_early = True
                    break
        except WORKER_DEATH_ERRORS as e:
            # torch raises this from wherever the main process is when a worker dies (its SIGCHLD handler)
            if not is_worker_death(e):
                raise
            raise worker_died(e, f"Pre-training stopped after step {state.step}; the last checkpoint is "
                                 f"{ckpt.latest_checkpoint(self.ckpt_root) or 'none'}: run again with --resume "
                                 "(resume=True) to continue from it.") from None
        finally:
            if writer:
                writer.close()
        result.step, result.skipped_steps = state.step, state.skipped_steps
        self._emit("on_end", result)
        return result

    def _out_of_time(self, started: float) -> bool:
        limit = self.cfg.run.time_limit_minutes
        if not limit:
            return False
        over = torch.tensor(float(time.monotonic() - started > 60 * limit), device=self.env.device)
        return bool(all_reduce(over, "max").item())  # every rank stops at the same step

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    # ------------------------------------------------------------------------------------------------
    def _step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        cfg, env, state = self.cfg, self.env, self.state
        lr = set_learning_rate(self.optimizer, state.step, cfg.optim)
        self.model.train()
        torch.manual_seed(sample_seed(cfg.run.seed, state.step, env.rank, 1))
        bn_stats = [{k: v.clone() for k, v in m.state_dict().items()} for m in self.bn_layers]

        n = len(micro_batches)
        totals = torch.zeros(3, device=env.device)  # total, video-text, video-audio (means over micro-batches)
        for i, batch in enumerate(micro_batches):
            with self._grad_sync(i == n - 1):
                res = self._loss(batch)
                (res.total / n).backward()
            parts = [res.total, res.video_text, res.video_audio]
            totals += torch.stack([p.detach().float() if p is not None else totals.new_zeros(()) for p in parts]) / n

        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP DTensor
        bad = ~(torch.isfinite(totals[0]) & torch.isfinite(grad_norm))
        bad = bool(all_reduce(bad.float(), "max").item())  # every rank skips together
        if bad:
            for m, saved in zip(self.bn_layers, bn_stats):
                m.load_state_dict(saved)
            state.skipped_steps += 1
            state.consecutive_skipped += 1
            log.warning("step %d: loss %.4g, gradient norm %.4g: not finite, update skipped (%d in a row, %d in all)",
                        state.step + 1, totals[0].item(), grad_norm.item(), state.consecutive_skipped,
                        state.skipped_steps)
            if state.consecutive_skipped >= cfg.run.max_consecutive_bad_steps:
                self.optimizer.zero_grad(set_to_none=True)
                last = ckpt.latest_checkpoint(self.ckpt_root)
                raise TrainingDiverged(
                    f"stopped at step {state.step + 1}: {state.consecutive_skipped} consecutive steps had a NaN/Inf "
                    f"loss or gradient (run.max_consecutive_bad_steps={cfg.run.max_consecutive_bad_steps}). "
                    f"Last good checkpoint: {last or 'none written yet'}. Try a lower optim.lr, "
                    f"optim.grad_clip_norm, or run.precision=fp32; check the data for broken clips.")
        else:
            state.consecutive_skipped = 0
            if cfg.optim.grad_clip_norm > 0:
                torch.nn.utils.clip_grads_with_norm_(self.params, cfg.optim.grad_clip_norm, grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        # The loss of the global batch, as one process would see it; one device sync for all the numbers.
        loss, loss_vt, loss_va, norm = torch.cat([all_reduce(totals, "mean"), grad_norm.reshape(1).float()]).tolist()
        return {"loss": loss, "loss_video_text": loss_vt, "loss_video_audio": loss_va, "lr": lr, "grad_norm": norm,
                "skipped": float(bad)}

    def _loss(self, batch: dict[str, Any]):
        device = self.env.device
        video, audio, text = (batch[k].to(device, non_blocking=True) for k in ("video", "audio", "text"))
        with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = self.model(video=video, audio=audio, text=text)
        # The loss runs in float32 outside autocast (AsymmetricNCE also promotes); masks come from the batch,
        # so clips without audio or captions stay in the batch as negatives for the other pair.
        return self.loss_fn(video_va=out.video_va.float(), audio_va=out.audio_va.float(),
                            video_vt=out.video_vt.float(), text_vt=out.text_vt.float(),
                            audio_mask=batch["audio_mask"].to(device), text_mask=batch["text_mask"].to(device))

    def _grad_sync(self, enabled: bool):
        """Gradient all-reduce only on the last micro-batch of a step."""
        if enabled or self.env.world_size == 1:
            return contextlib.nullcontext()
        model = getattr(self.model, "_orig_mod", self.model)  # torch.compile wrapper
        if hasattr(model, "no_sync"):  # DDP
            return model.no_sync()
        return _fsdp_no_sync(model)

    def _log_record(self, window: list[dict[str, float]]) -> dict[str, Any]:
        good = [m for m in window if not m["skipped"]]
        mean = lambda key: sum(m[key] for m in good) / len(good) if good else float("nan")  # noqa: E731
        seconds = sum(m["seconds"] for m in window)
        return {"step": self.state.step, "epoch": self.data.epoch, "loss": mean("loss"),
                "loss_video_text": mean("loss_video_text"), "loss_video_audio": mean("loss_video_audio"),
                "lr": window[-1]["lr"], "grad_norm": mean("grad_norm"),
                "clips_per_s": self.cfg.data.batch_size * len(window) / seconds,
                # the share of the time spent waiting for data: near 1 means the loaders are the bottleneck
                "data_wait": sum(m["data_seconds"] for m in window) / seconds,
                "skipped_steps": self.state.skipped_steps}

    # ------------------------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (a collective call: every rank must call it)."""
        weights, optim_state = self._state_dicts()
        per_rank = [{"rng": ckpt.rng_state(), "data": self.data.position()}]
        if self.env.world_size > 1:
            import torch.distributed as dist
            per_rank = [None] * self.env.world_size
            dist.all_gather_object(per_rank, {"rng": ckpt.rng_state(), "data": self.data.position()})
        folder = None
        if self.env.is_main:
            train_state = {"progress": dataclasses.asdict(self.state), "optimizer": optim_state,
                           "scheduler": {"step": self.state.step}, "ranks": per_rank,
                           "config": self.cfg.to_dict()}
            import vatt.configs
            folder = ckpt.save_checkpoint(self.ckpt_root, self.state.step, weights,
                                          vatt.configs.to_dict(self.model_config), train_state,
                                          self.cfg.checkpoint.keep_last, self.tokenizer)
            log.info("step %d: checkpoint %s", self.state.step, folder)
        barrier()
        return folder

    def _state_dicts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Full (unsharded) model and optimiser state; keyed by parameter name, so DDP and FSDP agree."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True, cpu_offload=self.env.world_size > 1)
        return (get_model_state_dict(self.raw_model, options=options),
                get_optimizer_state_dict(self.raw_model, self.optimizer, options=options))

    def _resume(self) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        # Rank 0 checks the checkpoints' manifests (and sets damaged ones aside); the others follow its choice.
        if self.env.is_main:
            ckpt.resumable_checkpoint(self.ckpt_root)
        barrier()
        folder = ckpt.latest_checkpoint(self.ckpt_root)
        if folder is None:
            log.info("resume: no checkpoint under %s; starting from step 0", self.ckpt_root)
            return
        saved = ckpt.load_train_state(folder)
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.raw_model, ckpt.load_weights(folder, verify=False), options=options)
        set_optimizer_state_dict(self.raw_model, self.optimizer, saved["optimizer"], options=options)
        self.state = TrainState(**saved["progress"])
        ranks = saved["ranks"]
        if not ranks:  # converted from an official checkpoint: no data position or random state of ours
            log.info("resume: %s was converted from %s; the data are read from the start",
                     folder, saved.get("converted_from", "another run"))
        elif len(ranks) == self.env.world_size:
            ckpt.set_rng_state(ranks[self.env.rank]["rng"])
            self.data.set_position(ranks[self.env.rank]["data"])
        elif not self.data.streaming:
            # The manifest order is a function of the global step alone, whatever the number of ranks.
            epoch, step_in_epoch = divmod(self.state.step, self.data.sampler.steps_per_epoch)
            self.data.set_position({"epoch": epoch, "batches_in_epoch": step_in_epoch * self.cfg.optim.grad_accum_steps})
            log.warning("resume: checkpoint written by %d ranks, now %d; RNG states not restored (model "
                        "randomness is seeded per step anyway)", len(ranks), self.env.world_size)
        else:
            raise ValueError(f"resume: the checkpoint was written by {len(ranks)} ranks reading shards; "
                             f"resume with the same number of ranks (now {self.env.world_size})")
        log.info("resumed from %s at step %d (epoch %d)", folder, self.state.step, self.data.epoch)
        faults.point("resume.loaded")

    # ------------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Zero-shot retrieval on the held-out clips (all ranks compute it; FSDP needs every rank)."""
        from vatt.eval.retrieval import heldout_retrieval
        from vatt.inference import embed_clips
        keys = [(0, i) for i in range(min(len(self.heldout), self.cfg.eval.max_clips))]  # (epoch, index), as in training
        loader = DataLoader(self.heldout, sampler=keys, batch_size=max(self.micro_batch, 16), collate_fn=self.collate_fn,
                            num_workers=self.cfg.data.num_workers)
        embeddings = embed_clips(self.raw_model, loader, self.env.device, self.amp_dtype)
        self.model.train()
        return heldout_retrieval(embeddings)


def format_heldout(metrics: dict[str, float]) -> str:
    """The periodic held-out check in one line: R@1, R@5 and median rank per direction, beside chance."""
    parts = []
    for direction in ("text->video", "audio->video"):
        if f"{direction}/R@1" not in metrics:
            continue
        n = int(metrics[f"{direction}/num_items"])
        parts.append(f"{direction.replace('->', '→')} R@1 {100 * metrics[f'{direction}/R@1']:.1f}% "
                     f"R@5 {100 * metrics[f'{direction}/R@5']:.1f}% MedR {metrics[f'{direction}/MedR']:g} "
                     f"(chance: R@1 {100 / n:.1f}%, MedR {(n + 1) / 2:g} of {n})")
    return "held-out retrieval, one window per clip: " + "; ".join(parts)


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
