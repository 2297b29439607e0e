"""Training data for pre-training: which clips each rank reads at each step, reproducibly, and resumably.

Manifest (map-style) datasets: the order is a function of (seed, epoch, position) alone. Epoch e shuffles
the clips with a generator seeded by (seed, e); optimiser step s of that epoch takes the global batch
perm[s·G : (s+1)·G]; its micro-batch a on rank r is slice number a·world_size + r. So
- a run resumed at step s reads exactly the clips an uninterrupted run would (the data position is
  just (epoch, micro-batches read in the epoch));
- N ranks together read the same global batch as one process, in rank order (the order in which the
  loss gathers embeddings);
- the items are (epoch, index) keys: `vatt.data` datasets draw each clip's crop, flip, jitter and
  noise from a generator seeded by (seed, epoch, index), the same in whichever worker loads it.
The last incomplete batch of an epoch is dropped.

Shard (streaming) datasets order themselves (shard shuffle + buffer, per epoch); each rank reads its
own shards. Their position is (epoch, micro-batches read) per rank, and a resume re-reads the epoch up
to that point (decoding is the price of streaming).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from vatt.configs import input_spec
from vatt.data.datasets import SkipCounter, sample_seed

log = logging.getLogger("vatt.pretrain")


class PretrainBatchSampler(Sampler[list[tuple[int, int]]]):
    """Micro-batches of (epoch, clip index) keys for one rank, from micro-batch `start` of the epoch on."""

    def __init__(self, num_clips: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 accum_steps: int = 1, seed: int = 0):
        parts = world_size * accum_steps
        if batch_size % parts:
            raise ValueError(f"data.batch_size={batch_size} must be a multiple of world_size · grad_accum_steps "
                             f"= {world_size} · {accum_steps}")
        self.micro_batch = batch_size // parts
        self.steps_per_epoch = num_clips // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training data has {num_clips} clips, fewer than one batch "
                             f"(data.batch_size={batch_size})")
        self.num_clips, self.batch_size = num_clips, batch_size
        self.world_size, self.rank, self.accum_steps, self.seed = world_size, rank, accum_steps, seed
        self.epoch, self.start = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.steps_per_epoch * self.accum_steps

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
        perm = torch.randperm(self.num_clips, generator=g).tolist()
        for b in range(self.start, self.batches_per_epoch):
            step, a = divmod(b, self.accum_steps)
            lo = step * self.batch_size + (a * self.world_size + self.rank) * self.micro_batch
            yield [(self.epoch, i) for i in perm[lo:lo + self.micro_batch]]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start


class MicroBatches:
    """An endless stream of this rank's collated micro-batches, epoch after epoch, with a resumable position.

    `position()` is what has been consumed (not what the loader's workers prefetched), so a checkpoint
    taken between steps records exactly where to continue.
    """

    def __init__(self, dataset: Dataset, collate_fn: Any, batch_size: int, world_size: int, rank: int,
                 accum_steps: int, seed: int, num_workers: int, pin_memory: bool = False):
        self.dataset = dataset
        self.streaming = isinstance(dataset, IterableDataset)
        self.epoch, self.in_epoch = 0, 0
        self.skips = SkipCounter()
        common = dict(collate_fn=collate_fn, num_workers=num_workers, pin_memory=pin_memory)
        if self.streaming:
            if batch_size % (world_size * accum_steps):
                raise ValueError(f"data.batch_size={batch_size} must be a multiple of world_size · grad_accum_steps "
                                 f"= {world_size} · {accum_steps}")
            # Workers are re-created each epoch so that they see the dataset's new epoch.
            self.loader = DataLoader(dataset, batch_size=batch_size // (world_size * accum_steps), drop_last=True,
                                     **common)
            self.sampler = None
        else:
            self.sampler = PretrainBatchSampler(len(dataset), batch_size, world_size, rank, accum_steps, seed)
            self.loader = DataLoader(dataset, batch_sampler=self.sampler, persistent_workers=num_workers > 0,
                                     **common)

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_in_epoch": self.in_epoch}

    def set_position(self, position: dict[str, int]) -> None:
        self.epoch, self.in_epoch = int(position["epoch"]), int(position["batches_in_epoch"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            if self.streaming:
                self.dataset.set_epoch(self.epoch)
                batches = iter(self.loader)
                for _ in range(self.in_epoch):  # resume: re-read up to the saved position
                    next(batches, None)
            else:
                self.sampler.set_position(self.epoch, self.in_epoch)
                batches = iter(self.loader)
            got_any = False
            for batch in batches:
                got_any = True
                self.in_epoch += 1
                self.skips.update(batch.get("skipped", {}))
                yield batch
            if not got_any and self.in_epoch == 0:
                raise RuntimeError("the training data yielded no batch in a whole epoch (too few clips per rank "
                                   "for data.batch_size, or every sample failed)")
            if self.skips.total:
                log.warning("epoch %d: %s", self.epoch, self.skips)
            self.skips.reset()
            self.epoch, self.in_epoch = self.epoch + 1, 0


# ---------------------------------------------------------------------------------------------------
# Building the datasets named in the config
# ---------------------------------------------------------------------------------------------------
def sample_settings(data_cfg: Any, model_config: Any) -> dict[str, Any]:
    """`PretrainSampleConfig` fields from the data section; 0 means "what the model was made for"
    (`vatt.configs.input_spec`)."""
    spec = input_spec(model_config, data_cfg.fps, num_frames=data_cfg.num_frames, size=data_cfg.frame_size,
                      audio_samples=data_cfg.audio_samples, sample_rate=data_cfg.sample_rate)
    return {"num_frames": spec.num_frames, "size": spec.size, "audio_samples": spec.audio_samples,
            "sample_rate": spec.sample_rate, "fps": data_cfg.fps,
            "max_context_sentences": data_cfg.max_context_sentences, "scale_jitter_prob": data_cfg.scale_jitter_prob,
            "flip_prob": data_cfg.flip_prob, "color_prob": data_cfg.color_prob, "audio_noise": data_cfg.audio_noise}


def is_shards(source: str) -> bool:
    """A folder of `vatt shard` output, a .tar, or a brace pattern of them; anything else is a manifest."""
    return Path(source).is_dir() or source.endswith(".tar") or "{" in source


def shard_paths(source: str) -> str | list[str]:
    """`ShardDataset` takes a folder or a list of tars; expand "train-{000000..000099}.tar" into the list."""
    if "{" not in source:
        return source
    from braceexpand import braceexpand  # a webdataset dependency
    return list(braceexpand(source))


VOCAB_FILE = "vocab.txt"


def iter_captions(source: str, where: dict[str, Any] | None = None) -> Iterator[str]:
    """The captions of a manifest (rows kept by `where`, e.g. {"split": "train"}) or of `vatt shard` shards
    (a folder, a .tar or a brace pattern; their JSON metadata)."""
    import json

    if is_shards(source):
        from vatt.data.shards import iter_tar_samples, list_shards
        for shard in list_shards(shard_paths(source)):
            for _, files in iter_tar_samples(shard):
                meta = json.loads(files.get("json", b"{}"))
                yield from (c for c in (meta.get("captions") or []) if isinstance(c, str))
        return
    from vatt.data.datasets import matches_fields, read_manifest
    for row in read_manifest(source):
        if matches_fields(row.fields, where or None, None):
            yield from (c for c in (row.captions or []) if isinstance(c, str))


def build_vocabulary(source: str, max_size: int = 2**16, where: dict[str, Any] | None = None):
    """A `WordTokenizer` of the `max_size` most frequent words (special tokens included) of the captions of
    a manifest or of shards (`iter_captions`). Saved with `.save(path)`; its words are in id order, most
    frequent first, so the first N lines of the file are the vocabulary of size N."""
    from vatt.data.text import WordTokenizer

    return WordTokenizer.build(iter_captions(source, where), max_size=max_size)


def _shard_vocabulary(source: str) -> Path | None:
    """`vocab.txt` written by `vatt shard` beside the shards of `source`, if there is one."""
    first = shard_paths(source)
    first = first[0] if isinstance(first, list) else first
    folder = Path(first) if Path(first).is_dir() else Path(first).parent
    return folder / VOCAB_FILE if (folder / VOCAB_FILE).is_file() else None


def build_tokenizer(data_cfg: Any, model_config: Any, output_dir: str | Path):
    """The word tokenizer: `data.vocab` if given; else, for shards, the vocab.txt that `vatt shard` wrote
    beside them, and for a manifest, the most frequent words of the training captions. Either way at most
    as many words as the model's text vocabulary holds, saved as `<output_dir>/vocab.txt` for later use."""
    from vatt.data.text import WordTokenizer

    vocab_size = getattr(model_config, "text", model_config).vocab_size
    if data_cfg.vocab:
        tokenizer = WordTokenizer.from_vocab_file(data_cfg.vocab)
    else:
        saved = Path(output_dir) / VOCAB_FILE
        if saved.exists():  # a resumed run keeps its vocabulary
            return WordTokenizer.from_vocab_file(saved)
        if is_shards(data_cfg.train):
            beside = _shard_vocabulary(data_cfg.train)
            if beside is None:
                raise ValueError(f"data.vocab is required with shards that have no {VOCAB_FILE} beside them "
                                 f"({data_cfg.train}); build one from their captions or from the manifest they "
                                 "came from (`vatt vocab`), or re-shard (`vatt shard` writes one)")
            full = WordTokenizer.from_vocab_file(beside)
            # Most frequent first: the first vocab_size ids are what a vocabulary of that size would hold.
            tokenizer = WordTokenizer({w: i for w, i in full.word_to_id.items() if i < vocab_size})
        else:
            tokenizer = build_vocabulary(data_cfg.train, vocab_size, data_cfg.train_where)
        saved.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(saved)  # atomic: ranks of other nodes may write their own copy at the same time
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"the vocabulary has {tokenizer.vocab_size} entries, more than the model's text "
                         f"vocab_size={vocab_size}")
    return tokenizer


def build_dataset(data_cfg: Any, model_config: Any, tokenizer: Any, split: str, seed: int) -> Dataset:
    """The training (`split="train"`) or held-out (`"heldout"`) dataset named in the data section."""
    from vatt.data.datasets import PretrainDataset

    settings = sample_settings(data_cfg, model_config)
    if split == "train":
        source, where = data_cfg.train, data_cfg.train_where
        if is_shards(source):
            if where:
                raise ValueError(f"data.train_where={where} selects manifest rows, but data.train={source!r} is "
                                 "shards, which have no rows to select; remove data.train_where, or shard only the "
                                 "rows you want (`vatt shard` of a filtered manifest)")
            from vatt.data.shards import ShardDataset
            return ShardDataset(shard_paths(source), tokenizer, seed=seed, shuffle_buffer=data_cfg.shuffle_buffer,
                                **settings)
        return PretrainDataset(source, tokenizer, where=where or None, seed=seed, **settings)
    return PretrainDataset(data_cfg.heldout, tokenizer, where=data_cfg.heldout_where or None, train=False,
                           **settings)
