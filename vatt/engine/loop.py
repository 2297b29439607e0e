"""The training engine: one loop for pre-training and fine-tuning, from one CPU process to many GPUs.

A `Task` says what is trained and how it is scored (`vatt.pretrain.task.PretrainTask`,
`vatt.finetune.task.FinetuneTask`); the `Trainer` does everything else. One optimiser step:
  1. set the learning rate for the step (warm-up + cosine, a function of the step);
  2. seed the model's random draws (dropout, DropToken) from (seed, step, rank), so a resumed run draws
     what an uninterrupted one would; the task seeds its own draws (mixup, noise) likewise;
  3. for each of `grad_accum_steps` micro-batches: the task's loss (forward under the autocast policy,
     the loss in float32), backward; gradients are averaged over ranks by DDP/FSDP on the last
     micro-batch only;
  4. the global norm of each of the task's parameter groups; if the loss or a norm is NaN/Inf on any
     rank: skip the update (and undo the BatchNorm statistics of the step), count it, and stop after
     `run.max_consecutive_bad_steps` in a row. The official code instead zeroes NaN gradients and
     applies the update, which hides divergence;
  5. else clip each group to its norm (if asked) and update.
Between steps: the log window (metrics.jsonl, TensorBoard, callbacks), the task's evaluation, and
checkpoints holding the weights, optimiser, schedule, counters, the task's own state and, per rank, the
RNG state and data position, so that a resumed run continues exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.utils.data import Dataset

from vatt import configs as model_configs
from vatt import faults
from vatt.data.sampling import MicroBatches, collate, sample_seed
from vatt.data.errors import WORKER_DEATH_ERRORS, is_worker_death, worker_died
from vatt.distributed import DistEnv, all_reduce, barrier, init_distributed, shutdown_distributed
from vatt.engine import checkpoint as ckpt
from vatt.engine import memory
from vatt.engine.config import ExperimentConfig
from vatt.engine.optim import build_optimizer, set_learning_rate
from vatt.engine.parallel import wrap_model
from vatt.engine.progress import Callback, MetricsWriter
from vatt.precision import autocast, autocast_dtype

log = logging.getLogger("vatt.engine")


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class TrainState:
    """Counters saved in every checkpoint (the data position is saved beside them, per rank)."""

    step: int = 0  # optimiser steps done, skipped ones included
    skipped_steps: int = 0
    consecutive_skipped: int = 0


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    skipped_steps: int
    last_checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)  # the metrics.jsonl records of this call
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False  # run.time_limit_minutes ended it before optim.total_steps (or run.stop_at_step)


@dataclass
class GradGroup:
    """Parameters whose gradients are measured (logged as `name`) and clipped together."""

    name: str
    params: list[torch.Tensor]
    clip_norm: float = 0.0  # 0 = no clipping


class Task:
    """What an experiment supplies to the `Trainer`. Override what differs; the defaults do nothing.

    `train` calls `prepare` first, then the `Trainer` calls `build_model`, sets `trainer`, and calls the rest.
    """

    name = "Training"  # in messages: "<name> stopped after step N"
    logged: tuple[str, ...] = ("loss",)  # the keys of `loss`'s result, in that order, logged per step
    tokenizer: Any = None  # the word tokenizer of the text inputs, saved with every checkpoint as vocab.txt
    trainer: "Trainer"

    def prepare(self, env: DistEnv) -> Dataset:
        """On every rank, before anything else: read the data; the training dataset."""
        raise NotImplementedError

    def build_model(self, device: torch.device) -> nn.Module:
        """The model to train, its weights initialised, on `device` (the trainer wraps it for parallelism)."""
        raise NotImplementedError

    def setup(self) -> None:
        """After the trainer has built the model, optimiser and data: anything that needs them."""

    def begin_step(self, step: int) -> None:
        """Before the micro-batches of optimiser step `step` (0-based): seed the task's own draws."""

    def loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Scalar tensors named as `logged`: "loss" is what is minimised; the others are logged (NaN: none)."""
        raise NotImplementedError

    def grad_groups(self) -> list[GradGroup]:
        """The parameter groups whose gradient norms are checked, logged and clipped; the first is `grad_norm`."""
        return [GradGroup("grad_norm", self.trainer.params, self.trainer.cfg.optim.grad_clip_norm)]

    def evaluate(self, step: int, last: bool) -> tuple[dict[str, float], dict[str, Any]] | None:
        """Metrics to log after `step` (and extra fields for the result's eval history), or None to skip.

        A collective call: every rank takes part."""
        return None

    def state(self) -> dict[str, Any]:
        """The task's own state, saved in every checkpoint."""
        return {}

    def load_state(self, saved: dict[str, Any]) -> None:
        """Restore what `state` saved (given the whole saved train state)."""

    def finish(self, result: TrainResult) -> Any:
        """After the last step (every rank): the result to return (and to pass to `on_end`)."""
        return result


class Trainer:
    """One training run: model, optimiser, data, counters, writers; `run()` trains it."""

    def __init__(self, cfg: ExperimentConfig, task: Task, env: DistEnv, train_dataset: Dataset,
                 callbacks: Sequence[Callback] = (), collate_fn: Any = None):
        self.cfg, self.task, self.env = cfg, task, env
        self.callbacks = list(callbacks)
        self.out = Path(cfg.run.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.state = TrainState()
        task.trainer = self
        if env.device.type == "cpu" and cfg.run.reuse_freed_memory:
            memory.reuse_freed_memory()

        torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
        self.raw_model = task.build_model(env.device)  # unwrapped: for state dicts and evaluation
        self.model = wrap_model(self.raw_model, cfg.run.parallel, env)
        if cfg.model.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(self.raw_model, cfg.optim)
        self.params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.bn_layers = [m for m in self.raw_model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.amp_dtype = autocast_dtype(cfg.run.precision, env.device)
        self.collate_fn = collate_fn or collate
        self.data = MicroBatches(train_dataset, self.collate_fn, cfg.data.batch_size, env.world_size, env.rank,
                                 cfg.optim.grad_accum_steps, cfg.run.seed, cfg.data.num_workers,
                                 pin_memory=env.device.type == "cuda")
        self.micro_batch = cfg.data.batch_size // (env.world_size * cfg.optim.grad_accum_steps)
        task.setup()

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's autocast policy (run.precision) on its device."""
        return autocast(self.env.device, self.amp_dtype)

    # ------------------------------------------------------------------------------------------------
    def run(self, resume: bool) -> Any:
        """Train to `optim.total_steps` (or `run.stop_at_step`, or the time limit); the task's result."""
        if resume:
            self.resume()
        cfg, state = self.cfg, self.state
        writer = MetricsWriter(self.out, cfg.log.tensorboard, state.step if resume else None) if self.env.is_main else None
        result = TrainResult(self.out, state.step, state.skipped_steps, ckpt.latest_checkpoint(self.ckpt_root))
        end = cfg.run.stop_at_step or cfg.optim.total_steps  # the schedule stays that of optim.total_steps
        self.emit("on_start", state.step, end)
        window: list[dict[str, float]] = []
        micro_batches = iter(self.data)
        started = time.monotonic()
        try:
            while state.step < end:
                t0 = time.perf_counter()
                batches = [next(micro_batches) for _ in range(cfg.optim.grad_accum_steps)]
                data_seconds = time.perf_counter() - t0
                step_metrics = self.train_step(batches)
                seconds = time.perf_counter() - t0
                step_metrics.update(seconds=seconds, data_seconds=data_seconds, clips_per_s=cfg.data.batch_size / seconds)
                state.step += 1
                window.append(step_metrics)
                faults.point("train.step", state.step)
                self.emit("on_step", state.step, step_metrics)
                last = state.step == end
                out_of_time = not last and self._out_of_time(started)
                if state.step % cfg.log.every_steps == 0 or last or out_of_time:
                    record = self._log_record(window)
                    window = []
                    result.history.append(record)
                    if writer:
                        writer.write(record)
                    self.emit("on_log", state.step, record)
                evaluation = self.task.evaluate(state.step, last or out_of_time)
                if evaluation is not None:
                    metrics, extra = evaluation
                    record = {"step": state.step, **metrics}
                    result.eval_history.append({**record, **extra})
                    if writer:
                        writer.write(record, kind="eval")  # eval.jsonl + eval/* in TensorBoard
                    self.emit("on_eval", state.step, metrics)
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
            raise worker_died(e, f"{self.task.name} stopped after step {state.step}; the last checkpoint is "
                                 f"{ckpt.latest_checkpoint(self.ckpt_root) or 'none'}: run again with --resume "
                                 "(resume=True) to continue from it.") from None
        finally:
            micro_batches.close()
            if writer:
                writer.close()
        result.step, result.skipped_steps = state.step, state.skipped_steps
        final = self.task.finish(result)
        self.emit("on_end", final)
        return final

    def _out_of_time(self, started: float) -> bool:
        limit = self.cfg.run.time_limit_minutes
        if not limit:
            return False
        over = torch.tensor(float(time.monotonic() - started > 60 * limit), device=self.env.device)
        return bool(all_reduce(over, "max").item())  # every rank stops at the same step

    def emit(self, hook: str, *args: Any) -> None:
        """Call `hook` on the callbacks that define it (rank 0 only: the others have none)."""
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)

    # ------------------------------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step over `grad_accum_steps` micro-batches; the step's metrics (global batch)."""
        cfg, env, state = self.cfg, self.env, self.state
        lr = set_learning_rate(self.optimizer, state.step, cfg.optim)
        self.model.train()
        torch.manual_seed(sample_seed(cfg.run.seed, state.step, env.rank, 1))
        self.task.begin_step(state.step)
        bn_stats = [{k: v.clone() for k, v in m.state_dict().items()} for m in self.bn_layers]

        n = len(micro_batches)
        keys = self.task.logged
        totals = torch.zeros(len(keys), device=env.device)  # means over micro-batches, in `keys` order
        for i, batch in enumerate(micro_batches):
            with self._grad_sync(i == n - 1):
                parts = self.task.loss(batch)
                (parts["loss"] / n).backward()
            totals += torch.stack([parts[k].detach().float() for k in keys]) / n

        groups = self.task.grad_groups()
        norms = [_grad_norm(g.params, env.device) for g in groups]
        loss = totals[keys.index("loss")]
        bad = ~(torch.isfinite(loss) & torch.isfinite(torch.stack(norms)).all())
        bad = bool(all_reduce(bad.float(), "max").item())  # every rank skips together
        if bad:
            for m, saved in zip(self.bn_layers, bn_stats):
                m.load_state_dict(saved)
            self._skip(loss.item(), norms[0].item())
        else:
            state.consecutive_skipped = 0
            for group, norm in zip(groups, norms):
                if group.clip_norm > 0 and group.params:
                    torch.nn.utils.clip_grads_with_norm_(group.params, group.clip_norm, norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        # The numbers of the global batch, as one process would see them; one device sync for all of them.
        values = torch.cat([all_reduce(totals, "mean"), torch.stack(norms).float()]).tolist()
        metrics = dict(zip(list(keys) + [g.name for g in groups], values))
        metrics.update(lr=lr, skipped=float(bad))
        return metrics

    def _skip(self, loss: float, grad_norm: float) -> None:
        state, limit = self.state, self.cfg.run.max_consecutive_bad_steps
        state.skipped_steps += 1
        state.consecutive_skipped += 1
        log.warning("step %d: loss %.4g, gradient norm %.4g: not finite, update skipped (%d in a row, %d in all)",
                    state.step + 1, loss, grad_norm, state.consecutive_skipped, state.skipped_steps)
        if state.consecutive_skipped >= limit:
            self.optimizer.zero_grad(set_to_none=True)
            last = ckpt.latest_checkpoint(self.ckpt_root)
            raise TrainingDiverged(
                f"stopped at step {state.step + 1}: {state.consecutive_skipped} consecutive steps had a NaN/Inf "
                f"loss or gradient (run.max_consecutive_bad_steps={limit}). Last good checkpoint: "
                f"{last or 'none written yet'}. Try a lower optim.lr, optim.grad_clip_norm, or run.precision=fp32; "
                f"check the data for broken clips.")

    def _grad_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        """Gradient all-reduce only on the last micro-batch of a step."""
        if enabled or self.env.world_size == 1:
            return contextlib.nullcontext()
        model = getattr(self.model, "_orig_mod", self.model)  # torch.compile wrapper
        if hasattr(model, "no_sync"):  # DDP
            return model.no_sync()
        return _fsdp_no_sync(model)

    def _log_record(self, window: list[dict[str, float]]) -> dict[str, Any]:
        good = [m for m in window if not m["skipped"]]

        def mean(key: str) -> float:  # over the good steps that have the number (NaN: not measured)
            values = [m[key] for m in good if not math.isnan(m[key])]
            return sum(values) / len(values) if values else float("nan")

        seconds = sum(m["seconds"] for m in window)
        measured = list(self.task.logged) + [g.name for g in self.task.grad_groups()]
        return {"step": self.state.step, "epoch": self.data.epoch, **{k: mean(k) for k in measured},
                "lr": window[-1]["lr"], "clips_per_s": self.cfg.data.batch_size * len(window) / seconds,
                # the share of the time spent waiting for data: near 1 means the loaders are the bottleneck
                "data_wait": sum(m["data_seconds"] for m in window) / seconds,
                "skipped_steps": self.state.skipped_steps}

    # ------------------------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (a collective call: every rank must call it)."""
        weights, optim_state = self._state_dicts()
        mine = {"rng": ckpt.rng_state(), "data": self.data.position()}
        per_rank = [mine]
        if self.env.world_size > 1:
            per_rank = [None] * self.env.world_size
            dist.all_gather_object(per_rank, mine)
        folder = None
        if self.env.is_main:
            train_state = {"progress": dataclasses.asdict(self.state), "optimizer": optim_state,
                           "scheduler": {"step": self.state.step}, "ranks": per_rank,
                           "config": self.cfg.to_dict(), **self.task.state()}
            folder = ckpt.save_checkpoint(self.ckpt_root, self.state.step, weights,
                                          model_configs.to_dict(self.raw_model.config), train_state,
                                          self.cfg.checkpoint.keep_last, self.task.tokenizer)
            log.info("step %d: checkpoint %s", self.state.step, folder)
        barrier()
        return folder

    def _state_dicts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Full (unsharded) model and optimiser state; keyed by parameter name, so DDP and FSDP agree."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=self.env.world_size > 1)
        return (get_model_state_dict(self.raw_model, options=options),
                get_optimizer_state_dict(self.raw_model, self.optimizer, options=options))

    def resume(self) -> None:
        """Continue from the latest intact checkpoint of the output folder (none: start at step 0)."""
        # Rank 0 checks the checkpoints' manifests (and sets damaged ones aside); the others follow its choice.
        if self.env.is_main:
            ckpt.resumable_checkpoint(self.ckpt_root)
        barrier()
        folder = ckpt.latest_checkpoint(self.ckpt_root)
        if folder is None:
            log.info("resume: no checkpoint under %s; starting from step 0", self.ckpt_root)
            return
        saved = ckpt.load_train_state(folder)
        if "ranks" not in saved:  # fine-tuning checkpoints of vatt before the one engine
            raise ValueError(f"{folder} was written by an earlier version of `vatt finetune`, whose checkpoints this "
                             f"one cannot continue (they lack every rank's state); start a new run with "
                             f"model.init_from={folder} to keep its weights")
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.raw_model, ckpt.load_weights(folder, verify=False), options=options)
        set_optimizer_state_dict(self.raw_model, self.optimizer, saved["optimizer"], options=options)
        self.state = TrainState(**saved["progress"])
        self.task.load_state(saved)
        ranks = saved["ranks"]
        if not ranks:  # converted from an official checkpoint: no data position or random state of ours
            log.info("resume: %s was converted from %s; the data are read from the start",
                     folder, saved.get("converted_from", "another run"))
        elif len(ranks) == self.env.world_size:
            ckpt.set_rng_state(ranks[self.env.rank]["rng"])
            self.data.set_position(ranks[self.env.rank]["data"])
        elif not self.data.streaming:
            # The order of a map-style dataset is a function of the global step alone, whatever the number of ranks.
            epoch, step_in_epoch = divmod(self.state.step, self.data.sampler.steps_per_epoch)
            self.data.set_position({"epoch": epoch, "batches_in_epoch": step_in_epoch * self.cfg.optim.grad_accum_steps})
            log.warning("resume: checkpoint written by %d ranks, now %d; RNG states not restored (model "
                        "randomness is seeded per step anyway)", len(ranks), self.env.world_size)
        else:
            raise ValueError(f"resume: the checkpoint was written by {len(ranks)} ranks reading shards; "
                             f"resume with the same number of ranks (now {self.env.world_size})")
        log.info("resumed from %s at step %d (epoch %d)", folder, self.state.step, self.data.epoch)
        faults.point("resume.loaded")


def train(cfg: ExperimentConfig, task: Task, *, resume: bool = False, overwrite: bool = False,
          callbacks: Iterable[Callback] = (), collate_fn: Any = None) -> Any:
    """Run `task` as `cfg` says, in this process's torch.distributed group (if any); the task's result.

    A new run (not `resume`) refuses a `run.output_dir` that already holds files unless `overwrite`
    (which deletes what an earlier run wrote there).
    """
    cfg.validate()
    env = init_distributed(cfg.run.device)
    try:
        ckpt.prepare_output_dir(cfg.run.output_dir, resume=resume, overwrite=overwrite, is_main=env.is_main)
        barrier()  # rank 0 may be deleting an earlier run
        train_dataset = task.prepare(env)
        trainer = Trainer(cfg, task, env, train_dataset, list(callbacks) if env.is_main else [], collate_fn)
        try:
            return trainer.run(resume)
        finally:
            # Free the trainer here, before the process group goes: DDP's reducer holds the group, and a group
            # freed after `destroy_process_group` can deadlock against its own worker thread. (Task and trainer
            # refer to each other; without the cycle its DataLoader workers also go now, not at some later
            # garbage collection, which may fall inside a fork: see vatt.data.decoding.)
            del task.trainer
            trainer = None
    finally:
        shutdown_distributed(env)


def _grad_norm(params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
