"""The pre-training data a config names: the tokenizer, and the manifest or shard datasets.

The order in which a run reads them (per rank, resumable) is `vatt.data.sampling.MicroBatches`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from braceexpand import braceexpand
from torch.utils.data import Dataset

from vatt.configs import input_spec
from vatt.data.manifest import read_manifest, row_matches
from vatt.data.pretraining import PretrainDataset
from vatt.data.shards import ShardDataset, iter_tar_samples, list_shards
from vatt.data.text import WordTokenizer


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
    return list(braceexpand(source))


VOCAB_FILE = "vocab.txt"


def iter_captions(source: str, where: dict[str, Any] | None = None) -> Iterator[str]:
    """The captions of a manifest (rows kept by `where`, e.g. {"split": "train"}) or of `vatt shard` shards
    (a folder, a .tar or a brace pattern; their JSON metadata)."""
    if is_shards(source):
        for shard in list_shards(shard_paths(source)):
            for _, files in iter_tar_samples(shard):
                meta = json.loads(files.get("json", b"{}"))
                yield from (c for c in (meta.get("captions") or []) if isinstance(c, str))
        return
    for row in read_manifest(source):
        if row_matches(row.fields, where or None):
            yield from (c for c in (row.captions or []) if isinstance(c, str))


def build_vocabulary(source: str, max_size: int = 2**16, where: dict[str, Any] | None = None):
    """A `WordTokenizer` of the `max_size` most frequent words (special tokens included) of the captions of
    a manifest or of shards (`iter_captions`). Saved with `.save(path)`; its words are in id order, most
    frequent first, so the first N lines of the file are the vocabulary of size N."""
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
    settings = sample_settings(data_cfg, model_config)
    if split == "train":
        source, where = data_cfg.train, data_cfg.train_where
        if is_shards(source):
            if where:
                raise ValueError(f"data.train_where={where} selects manifest rows, but data.train={source!r} is "
                                 "shards, which have no rows to select; remove data.train_where, or shard only the "
                                 "rows you want (`vatt shard` of a filtered manifest)")
            return ShardDataset(shard_paths(source), tokenizer, seed=seed, shuffle_buffer=data_cfg.shuffle_buffer,
                                **settings)
        return PretrainDataset(source, tokenizer, where=where or None, seed=seed, **settings)
    return PretrainDataset(data_cfg.heldout, tokenizer, where=data_cfg.heldout_where or None, train=False,
                           **settings)
