"""Which samples a trainer reads, with which randomness, and how they become batches.

- **Reproducible randomness.** Sample `i` of epoch `e` draws its window, crop, flip, jitter and noise
  from a `torch.Generator` seeded from `(seed, e, i)` (`sample_generator`), so it is the same whichever
  worker loads it. A dataset key is an index `i` (epoch = the dataset's `set_epoch` value) or a pair
  `(e, i)`; `EpochBatchSampler` yields pairs, which keeps epochs distinct even with
  `persistent_workers=True` (workers hold copies of the dataset, so a `set_epoch` in the main process
  would not reach them). With `seed=None` the generator is seeded from the process's global torch RNG
  instead, for trainers that seed it per item.
- **Bad input.** In training (`strict=False`), a sample that raises `MediaError` (missing, empty,
  corrupt or truncated file, no video stream, too large, too short, unusable caption) is skipped by
  `SkippingDataset`: the reason is logged and counted, and a deterministic random other sample takes
  its place, so a batch is always full. The sample that stands in carries `skipped` (reason -> count of
  samples skipped before it), `collate` sums them per batch, and a `SkipCounter` sums batches for the
  trainer's per-epoch log. Counting through the samples works across worker processes without shared
  state. With `strict=True`, and always in evaluation, the `MediaError` (which names the file and the
  reason) is raised instead.
- **The batch order of every trainer** (`EpochBatchSampler`, `MicroBatches`): a function of (seed,
  epoch, position) alone. Epoch e shuffles the samples with a generator seeded by (seed, e); optimiser
  step s of that epoch takes the global batch perm[s·G : (s+1)·G]; its micro-batch a on rank r is slice
  number a·world_size + r. So a run resumed at step s reads exactly the samples an uninterrupted run
  would (the data position is just (epoch, micro-batches read in the epoch)), and N ranks together read
  the same global batch as one process, in rank order (the order in which the loss gathers embeddings).
  The last incomplete batch of an epoch is dropped. Streaming (iterable) datasets order themselves
  (shard shuffle + buffer, per epoch); each rank reads its own shards, and a resume re-reads the epoch
  up to the saved position (decoding is the price of streaming).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from vatt.data.errors import MediaError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Seeds and keys
# --------------------------------------------------------------------------------------------------

def sample_seed(seed: int | None, *parts: int) -> int:
    """A 63-bit seed from `(seed, *parts)`; `seed=None` draws the base from the global torch RNG."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    state = np.random.SeedSequence([int(seed), *(int(p) for p in parts)]).generate_state(2, np.uint32)
    return int(state.view(np.uint64)[0] >> np.uint64(1))


def sample_generator(seed: int | None, epoch: int, index: int, attempt: int = 0) -> torch.Generator:
    """The generator sample `index` of `epoch` draws from (its `attempt`-th try after skips)."""
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index, attempt))


def parse_key(key: Any, default_epoch: int) -> tuple[int, int]:
    """A dataset key as `(epoch, index)`: an index takes `default_epoch`, a pair is taken as it is."""
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise TypeError(f"a dataset key is an index or an (epoch, index) pair, got {key!r}")
        return int(key[0]), int(key[1])
    return default_epoch, int(key)


# --------------------------------------------------------------------------------------------------
# Skipping bad samples
# --------------------------------------------------------------------------------------------------

class SkipCounter:
    """Skipped samples counted by reason, summed over batches (`update(batch)`) for a per-epoch log."""

    def __init__(self, counts: Mapping[str, int] | None = None):
        self.counts: Counter[str] = Counter(counts or {})

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def update(self, skipped: Mapping[str, Any]) -> None:
        """Add a batch's counts: a collated batch (its `skipped` entry) or a reason -> count mapping."""
        if "skipped" in skipped and isinstance(skipped["skipped"], Mapping):
            skipped = skipped["skipped"]
        for reason, n in skipped.items():
            self.counts[reason] += int(n)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def reset(self) -> dict[str, int]:
        """Return the counts so far and start again from zero (call at the end of each epoch)."""
        out = self.as_dict()
        self.counts.clear()
        return out

    def __str__(self) -> str:
        if not self.counts:
            return "no samples skipped"
        return f"{self.total} samples skipped: " + ", ".join(f"{r}={n}" for r, n in self.as_dict().items())

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


class SkippingDataset(Dataset):
    """Base: resolves keys and seeds, and replaces samples that fail with `MediaError` (see module doc).

    Subclasses implement `__len__` and `load(index, rng) -> dict`.
    """

    def __init__(self, *, strict: bool = False, seed: int | None = 0, max_retries: int = 50):
        self.strict = strict
        self.seed = seed
        self.max_retries = max_retries
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for integer keys (in this process; see `EpochBatchSampler` for persistent workers)."""
        self.epoch = epoch

    def load(self, index: int, rng: torch.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: Any) -> dict[str, Any]:
        epoch, index = parse_key(key, self.epoch)
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        skipped: Counter[str] = Counter()
        current = index
        last_error: MediaError | None = None
        for attempt in range(self.max_retries + 1):
            rng = sample_generator(self.seed, epoch, index, attempt)
            try:
                sample = self.load(current, rng)
            except MediaError as err:
                if self.strict:
                    raise
                skipped[err.reason] += 1
                last_error = err
                replacement = int(torch.randint(0, n, (), generator=rng).item())
                log.warning("skipping sample %d: %s; sample %d stands in", current, err, replacement)
                current = replacement
                continue
            sample["index"] = current
            sample["skipped"] = dict(skipped)
            return sample
        raise RuntimeError(
            f"{self.max_retries + 1} samples in a row failed while loading item {index} "
            f"({dict(skipped)}); last error: {last_error}. Is the data there and readable?")


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------

def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of sample dicts: tensors -> [B, ...], numbers -> tensors [B], strings -> lists,
    `skipped` -> one reason -> count dict for the batch."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if key == "skipped":
            total: Counter[str] = Counter()
            for v in values:
                total.update(v)
            out[key] = dict(total)
        elif torch.is_tensor(first):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack '{key}': samples have shapes {sorted(shapes)}")
            out[key] = torch.stack(values)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            out[key] = torch.tensor(values, dtype=torch.long)
        elif isinstance(first, float):
            out[key] = torch.tensor(values, dtype=torch.float64)
        else:
            out[key] = values
    return out


def _check_divisible(batch_size: int, world_size: int, accum_steps: int) -> None:
    if batch_size % (world_size * accum_steps):
        raise ValueError(f"data.batch_size={batch_size} must be a multiple of world_size · grad_accum_steps "
                         f"= {world_size} · {accum_steps}")


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Micro-batches of (epoch, sample index) keys for one rank, from micro-batch `start` of the epoch on
    (the order is described in the module doc)."""

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 accum_steps: int = 1, seed: int = 0):
        _check_divisible(batch_size, world_size, accum_steps)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.micro_batch = batch_size // (world_size * accum_steps)
        self.steps_per_epoch = num_samples // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training data has {num_samples} clips, fewer than one batch "
                             f"(data.batch_size={batch_size})")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.world_size, self.rank, self.accum_steps, self.seed = world_size, rank, accum_steps, seed
        self.epoch, self.start = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.steps_per_epoch * self.accum_steps

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
        perm = torch.randperm(self.num_samples, generator=g).tolist()
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
            _check_divisible(batch_size, world_size, accum_steps)
            # Workers are re-created each epoch so that they see the dataset's new epoch.
            self.loader = DataLoader(dataset, batch_size=batch_size // (world_size * accum_steps), drop_last=True,
                                     **common)
            self.sampler = None
        else:
            self.sampler = EpochBatchSampler(len(dataset), batch_size, world_size, rank, accum_steps, seed)
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
