"""vatt.data.sampling: per-sample seeds and keys, skipping bad samples, collation, the one batch sampler."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from vatt.data.errors import MediaError
from vatt.data.sampling import (
    EpochBatchSampler,
    MicroBatches,
    SkipCounter,
    SkippingDataset,
    collate,
    parse_key,
    sample_generator,
    sample_seed,
)


class _Flaky(SkippingDataset):
    """Eight samples drawn from their generator; the `bad` ones fail as a corrupt file would."""

    def __init__(self, bad=(), **kwargs):
        super().__init__(**kwargs)
        self.bad = set(bad)

    def __len__(self) -> int:
        return 8

    def load(self, index, rng):
        if index in self.bad:
            raise MediaError(f"clip{index}.mp4", "corrupt", "test")
        return {"value": float(torch.rand((), generator=rng))}


class _Keys(Dataset):
    """Returns the (epoch, index) key it is given: the order a sampler reads."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, key):
        return {"epoch": key[0], "index": key[1]}


def _indices(batches) -> list[list[int]]:
    return [b["index"].tolist() for b in batches]


# --------------------------------------------------------------------------------------------------
# Seeds, keys and skipping
# --------------------------------------------------------------------------------------------------

def test_seeds_depend_on_every_part():
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2) < 2**63
    assert len({sample_seed(0, 1, 2), sample_seed(0, 2, 1), sample_seed(1, 1, 2), sample_seed(0, 1, 3)}) == 4
    a, b = sample_generator(0, 1, 2), sample_generator(0, 1, 2, attempt=1)
    assert not torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    assert parse_key(5, default_epoch=3) == (3, 5) and parse_key((1, 5), default_epoch=3) == (1, 5)
    with pytest.raises(TypeError, match="an index or an"):
        parse_key((1, 2, 3), 0)


def test_keys_name_the_epoch_and_index():
    ds = _Flaky()
    assert ds[(0, 3)] == ds[(0, 3)] and ds[(0, 3)] != ds[(1, 3)]
    ds.set_epoch(1)
    assert ds[3] == ds[(1, 3)] and ds[3]["index"] == 3 and ds[3]["skipped"] == {}
    assert _Flaky(seed=7)[(0, 3)] != ds[(0, 3)]
    with pytest.raises(IndexError, match="out of range"):
        ds[8]


def test_a_failing_sample_is_replaced_and_counted_unless_strict():
    ds = _Flaky(bad={2, 5})
    s = ds[(0, 2)]
    assert s["index"] not in (2, 5) and s["skipped"]["corrupt"] >= 1
    assert ds[(0, 2)] == s  # the stand-in is reproducible
    with pytest.raises(MediaError, match="clip2.mp4"):
        _Flaky(bad={2}, strict=True)[2]
    with pytest.raises(RuntimeError, match=r"4 samples in a row failed.*corrupt"):
        _Flaky(bad=range(8), max_retries=3)[0]


def test_skip_counter_sums_batches():
    counter = SkipCounter()
    counter.update({"skipped": {"corrupt": 2}})
    counter.update({"missing_file": 1, "corrupt": 1})
    assert counter.total == 4 and str(counter) == "4 samples skipped: corrupt=3, missing_file=1"
    assert counter.reset() == {"corrupt": 3, "missing_file": 1} and counter.total == 0
    assert str(counter) == "no samples skipped"


def test_collate_sums_skips_and_names_shape_mismatches():
    samples = [{"x": torch.zeros(2), "s": 1.5, "n": 1, "p": "a", "skipped": {"corrupt": 1}},
               {"x": torch.ones(2), "s": 2.5, "n": 2, "p": "b", "skipped": {"corrupt": 2, "missing_file": 1}}]
    b = collate(samples)
    assert b["x"].shape == (2, 2) and b["s"].dtype == torch.float64 and b["n"].tolist() == [1, 2]
    assert b["p"] == ["a", "b"] and b["skipped"] == {"corrupt": 3, "missing_file": 1}
    samples[1]["x"] = torch.ones(3)
    with pytest.raises(ValueError, match=r"'x'.*\(2,\).*\(3,\)"):
        collate(samples)


# --------------------------------------------------------------------------------------------------
# The batch sampler and the micro-batch stream
# --------------------------------------------------------------------------------------------------

def test_ranks_and_micro_batches_partition_the_global_batch():
    one = list(EpochBatchSampler(20, batch_size=8, seed=3))
    assert len(one) == 2 and all(len(b) == 8 for b in one)  # the last 4 clips are dropped
    parts = {r: list(EpochBatchSampler(20, 8, world_size=2, rank=r, accum_steps=2, seed=3)) for r in (0, 1)}
    for step in range(2):
        # micro-batch a of rank r is slice a * world_size + r of the global batch
        merged = [k for a in range(2) for r in range(2) for k in parts[r][step * 2 + a]]
        assert merged == one[step]
    resumed = EpochBatchSampler(20, 8, seed=3)
    resumed.set_position(epoch=0, start=1)
    assert list(resumed) == one[1:] and len(resumed) == 1
    with pytest.raises(ValueError, match="multiple of world_size"):
        EpochBatchSampler(20, 6, world_size=4)
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochBatchSampler(5, 8)
    with pytest.raises(ValueError, match="rank must be in"):
        EpochBatchSampler(20, 8, world_size=2, rank=2)


def test_each_epoch_has_its_own_order_and_keys():
    sampler = EpochBatchSampler(12, batch_size=6, seed=1)
    first = [k for b in sampler for k in b]
    assert sorted(i for _, i in first) == list(range(12)) and all(e == 0 for e, _ in first)
    sampler.set_position(epoch=1)
    second = [k for b in sampler for k in b]
    assert sorted(i for _, i in second) == list(range(12)) and all(e == 1 for e, _ in second)
    assert [i for _, i in second] != [i for _, i in first]
    assert [k for b in EpochBatchSampler(12, 6, seed=2) for k in b] != first  # the seed decides the order
    ranks = [[k for b in EpochBatchSampler(12, 6, world_size=3, rank=r, seed=1) for k in b] for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4] and sorted(k for r in ranks for k in r) == sorted(first)


def test_micro_batches_continue_from_their_position():
    def stream(position=None):
        data = MicroBatches(_Keys(), collate, batch_size=4, world_size=1, rank=0, accum_steps=2, seed=0,
                            num_workers=0)
        if position:
            data.set_position(position)
        return data, iter(data)

    data, batches = stream()
    seen = [next(batches) for _ in range(6)]  # 2 steps of 2 micro-batches per epoch: into the second epoch
    assert [b["epoch"].tolist() for b in seen] == [[0, 0]] * 4 + [[1, 1]] * 2
    assert data.position() == {"epoch": 1, "batches_in_epoch": 2}
    assert len({i for b in seen[:4] for i in b["index"].tolist()}) == 8  # an epoch reads 8 distinct clips of 10
    _, resumed = stream({"epoch": 0, "batches_in_epoch": 3})
    assert _indices(next(resumed) for _ in range(3)) == _indices(seen[3:])
