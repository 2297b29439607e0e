"""Pre-training: `pretrain(config)`, the VATT objective run by the training engine (`vatt.engine.loop`).

What pre-training adds to the engine (the `PretrainTask`):
  - the model: a video-audio-text preset, optionally initialised from a model folder and the official
    word2vec table, its FAC-head BatchNorm over the global batch (as the official SyncBatchNorm);
  - the data: a manifest or shards of clips with captions, and the word tokenizer that makes their text ids
    (built from the captions on rank 0 when no vocabulary is given; saved with every checkpoint);
  - the loss: AsymmetricNCE in float32 (NCE video-audio, MIL-NCE video-text) with negatives gathered from
    all ranks; clips lacking audio or text are masked out of their pair and stay in as negatives;
  - the check: zero-shot retrieval on held-out clips every `eval.every_steps` steps.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vatt.checkpoint.io import load_state
from vatt.checkpoint.word2vec import load_word_embeddings
from vatt.distributed import DistEnv, barrier
from vatt.engine import checkpoint as ckpt
from vatt.engine.loop import Task, TrainingDiverged, TrainResult, train
from vatt.engine.parallel import convert_batchnorm
from vatt.engine.progress import Callback
from vatt.eval.retrieval import heldout_retrieval
from vatt.inference import embed_clips
from vatt.losses import AsymmetricNCE
from vatt.model.factory import build_model
from vatt.pretrain.config import PretrainConfig
from vatt.pretrain.data import build_dataset, build_tokenizer

__all__ = ["pretrain", "PretrainTask", "PretrainResult", "TrainingDiverged", "format_heldout"]

log = logging.getLogger("vatt.pretrain")

PretrainResult = TrainResult  # what `pretrain` returns: steps, checkpoints, the metrics of this call


def pretrain(config: PretrainConfig, *, resume: bool = False, callbacks: Iterable[Callback] = (),
             train_dataset: Dataset | None = None, heldout_dataset: Dataset | None = None,
             collate_fn: Any = None, tokenizer: Any = None, overwrite: bool = False) -> PretrainResult:
    """Pre-train a VATT model as `config` says; with `resume`, continue from the latest checkpoint.

    `train_dataset` / `heldout_dataset` replace the datasets named in `config.data`: map-style datasets
    keyed by (epoch, index) pairs, or iterable ones, of dicts as `vatt.data.pretraining.PretrainDataset` yields them (video
    [T, H, W, 3] in [-1, 1], audio [N], text [L, n_words] ids, audio_mask and text_mask floats), stacked by
    `collate_fn` (default `vatt.data.sampling.collate`); `tokenizer` is the word tokenizer that made their
    text ids, saved with every checkpoint as vocab.txt so that the model folder can embed captions.
    A new run (not `resume`) refuses an `run.output_dir` that already holds files, unless `overwrite`
    (which deletes what an earlier run wrote there). Returns once `optim.total_steps` steps are done;
    raises TrainingDiverged if the loss or gradient stays non-finite.
    """
    task = PretrainTask(config, train_dataset, heldout_dataset, tokenizer)
    return train(config, task, resume=resume, overwrite=overwrite, callbacks=callbacks, collate_fn=collate_fn)


class PretrainTask(Task):
    name = "Pre-training"
    logged = ("loss", "loss_video_text", "loss_video_audio")

    def __init__(self, cfg: PretrainConfig, train_dataset: Dataset | None = None,
                 heldout_dataset: Dataset | None = None, tokenizer: Any = None):
        self.cfg = cfg
        self.train_dataset, self.heldout = train_dataset, heldout_dataset
        self.tokenizer = tokenizer
        self.model_config = cfg.model.build_config()
        self.loss_fn = AsymmetricNCE(temperature=cfg.loss.temperature, vid_txt_weight=cfg.loss.video_text_weight,
                                     vid_aud_weight=cfg.loss.video_audio_weight)

    def prepare(self, env: DistEnv) -> Dataset:
        cfg = self.cfg
        if self.train_dataset is None:
            if not cfg.data.train:
                raise ValueError("data.train is empty: name a manifest or a folder of shards in data.train")
            out = Path(cfg.run.output_dir)
            if env.is_main:  # rank 0 may write vocab.txt; the others read it after the barrier
                self.tokenizer = build_tokenizer(cfg.data, self.model_config, out)
            barrier()
            if not env.is_main:
                self.tokenizer = build_tokenizer(cfg.data, self.model_config, out)
            self.train_dataset = build_dataset(cfg.data, self.model_config, self.tokenizer, "train", cfg.run.seed)
            if self.heldout is None and cfg.eval.every_steps:
                self.heldout = build_dataset(cfg.data, self.model_config, self.tokenizer, "heldout", cfg.run.seed)
        if cfg.eval.every_steps and self.heldout is None:
            raise ValueError("eval.every_steps is set but there is no held-out data: name a manifest in data.heldout, "
                             "or set eval.every_steps=0")
        return self.train_dataset

    def build_model(self, device: torch.device) -> nn.Module:
        cfg = self.cfg.model
        model = build_model(self.model_config)
        if cfg.word_embeddings:
            load_word_embeddings(model, cfg.word_embeddings)
        if cfg.init_from:
            load_state(model, ckpt.load_weights(cfg.init_from), strict=True)  # checked as vatt.load does
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return convert_batchnorm(model.to(device))  # FAC-head BN over the global batch, as SyncBN

    def loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        trainer = self.trainer
        device = trainer.env.device
        video, audio, text = (batch[k].to(device, non_blocking=True) for k in ("video", "audio", "text"))
        with trainer.autocast():
            out = trainer.model(video=video, audio=audio, text=text)
        # The loss runs in float32 outside autocast (AsymmetricNCE also promotes); masks come from the batch,
        # so clips without audio or captions stay in the batch as negatives for the other pair.
        res = self.loss_fn(video_va=out.video_va.float(), audio_va=out.audio_va.float(),
                           video_vt=out.video_vt.float(), text_vt=out.text_vt.float(),
                           audio_mask=batch["audio_mask"].to(device), text_mask=batch["text_mask"].to(device))
        zero = torch.zeros((), device=device)  # a pair switched off logs 0
        return {"loss": res.total, "loss_video_text": zero if res.video_text is None else res.video_text,
                "loss_video_audio": zero if res.video_audio is None else res.video_audio}

    def evaluate(self, step: int, last: bool) -> tuple[dict[str, float], dict[str, Any]] | None:
        every = self.cfg.eval.every_steps
        if not every or step % every:
            return None
        metrics = self.heldout_retrieval()
        log.info("step %d: %s", step, format_heldout(metrics))
        return metrics, {}

    def heldout_retrieval(self) -> dict[str, float]:
        """Zero-shot retrieval on the held-out clips (all ranks compute it; FSDP needs every rank)."""
        trainer = self.trainer
        keys = [(0, i) for i in range(min(len(self.heldout), self.cfg.eval.max_clips))]  # (epoch, index), as in training
        loader = DataLoader(self.heldout, sampler=keys, batch_size=max(trainer.micro_batch, 16),
                            collate_fn=trainer.collate_fn, num_workers=self.cfg.data.num_workers)
        embeddings = embed_clips(trainer.raw_model, loader, trainer.env.device, trainer.amp_dtype)
        trainer.model.train()
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
