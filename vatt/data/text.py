"""The official word tokenizer: captions -> word ids `[n, 16]`, pad id 0.

The official loaders use DMVR's `WordTokenizer` over `misc/howto100m_en.txt`
(`dmvr/tokenizers.py`, `string_tensor_to_indices`, the TF path used during training):

1. strip punctuation with the RE2 class `[[:punct:]]`, which is ASCII-only
   (``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~``); curly quotes and dashes survive;
2. lower-case with `tf.strings.lower`, which is also ASCII-only (``"É"`` stays ``"É"``);
3. split on (Unicode) whitespace, dropping empty pieces;
4. look each word up, out-of-vocabulary -> `<unk>`; no BOS/EOS;
5. crop or pad with the `<pad>` id to 16 tokens.

Here the `tokenizers` library runs exactly that pipeline: a `Replace` normalizer for step 1, 26
single-letter `Replace`s for step 2 (its `Lowercase` would also fold non-ASCII letters, which the
official code does not), `WhitespaceSplit` for step 3, a `WordLevel` model for step 4 and its
truncation/padding for step 5.

Vocabulary file (DMVR format): one entry per line, either ``word`` (its id is the line index) or
``id word``. It must hold `<pad>`, `<bos>`, `<eos>` and `<unk>`; every word must be lower case and
unique. `WordTokenizer.build` writes the same format with `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

from vatt.atomic import write_text

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
MAX_NUM_WORDS = 16  # official `max_num_words`

# RE2 `[[:punct:]]` == the 32 ASCII punctuation characters (same set as Python's string.punctuation).
_ASCII_PUNCTUATION = r"[!-/:-@\[-`{-~]"


def normalize_caption(caption: str) -> str:
    """Steps 1-2 of the official pipeline in plain Python (used for vocabulary building and tests)."""
    caption = re.sub(_ASCII_PUNCTUATION, "", caption)
    return caption.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def split_words(caption: str) -> list[str]:
    """Official words of a caption: normalised, then split on whitespace."""
    return normalize_caption(caption).split()


class WordTokenizer:
    """Word-level tokenizer with the official normalisation; `encode` gives `[n, max_num_words]` ids.

    Build one with `from_vocab_file(path)` (the official `howto100m_en.txt` or a file written by
    `save`) or `build(corpus, ...)` (most frequent words of a caption corpus).
    """

    def __init__(self, word_to_id: dict[str, int], max_num_words: int = MAX_NUM_WORDS):
        missing = [t for t in SPECIAL_TOKENS if t not in word_to_id]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {missing}; it needs all of {list(SPECIAL_TOKENS)}")
        if len(set(word_to_id.values())) != len(word_to_id):
            raise ValueError("vocabulary maps two words to the same id")
        if max_num_words < 1:
            raise ValueError(f"max_num_words must be >= 1, got {max_num_words}")
        self.word_to_id = dict(word_to_id)
        self.id_to_word = {i: w for w, i in self.word_to_id.items()}
        self.max_num_words = max_num_words
        self.pad_id = self.word_to_id[PAD]
        self.bos_id = self.word_to_id[BOS]
        self.eos_id = self.word_to_id[EOS]
        self.unk_id = self.word_to_id[UNK]
        self._tokenizer = self._make_tokenizer()

    def _make_tokenizer(self) -> Tokenizer:
        tok = Tokenizer(WordLevel(self.word_to_id, unk_token=UNK))
        tok.normalizer = normalizers.Sequence(
            [normalizers.Replace(Regex(_ASCII_PUNCTUATION), "")]
            + [normalizers.Replace(chr(c), chr(c + 32)) for c in range(ord("A"), ord("Z") + 1)]
        )
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.enable_truncation(self.max_num_words)
        tok.enable_padding(length=self.max_num_words, pad_id=self.pad_id, pad_token=PAD)
        return tok

    # The `tokenizers` Rust object is not picklable across every version; DataLoader workers under
    # the spawn start method pickle the dataset (and this tokenizer with it), so rebuild it instead.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_tokenizer"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._tokenizer = self._make_tokenizer()

    @property
    def vocab_size(self) -> int:
        """Number of entries in the vocabulary, special tokens included (official: 2^16)."""
        return len(self.word_to_id)

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> ids `[n, max_num_words]` (int64); an empty caption gives an all-pad row."""
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not one string")
        if not captions:
            return torch.full((0, self.max_num_words), self.pad_id, dtype=torch.long)
        # One `encode` per caption rather than `encode_batch`: the batch call starts the library's
        # thread pool, after which a fork (DataLoader workers) makes it warn and disable itself.
        # Per-caption cost is ~30 us, far below decoding a clip.
        ids = [self._tokenizer.encode(c).ids for c in captions]
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> words joined by spaces, cut at the first pad or eos (as DMVR `indices_to_string`)."""
        words = []
        for i in (int(x) for x in ids):
            if i in (self.pad_id, self.eos_id):
                break
            words.append(self.id_to_word.get(i, UNK))
        return " ".join(words)

    # --- vocabulary files -------------------------------------------------------------------------

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, max_num_words: int = MAX_NUM_WORDS) -> WordTokenizer:
        """Read a DMVR vocabulary file (``word`` or ``id word`` per line), e.g. `howto100m_en.txt`."""
        path = Path(path)
        word_to_id: dict[str, int] = {}
        seen_ids: set[int] = set()
        with open(path, encoding="utf-8") as f:
            for line_index, line in enumerate(f):
                # DMVR: strip the line, split on single spaces; 1 part = word, 2 parts = id and word.
                parts = line.strip().split(" ")
                if len(parts) == 1:
                    idx, word = line_index, parts[0]
                elif len(parts) == 2:
                    try:
                        idx, word = int(parts[0]), parts[1]
                    except ValueError:
                        raise ValueError(f"{path}:{line_index + 1}: expected 'id word', got {line.strip()!r}") from None
                else:
                    raise ValueError(f"{path}:{line_index + 1}: malformed vocabulary line {line.strip()!r}")
                if word == "":
                    raise ValueError(f"{path}:{line_index + 1}: empty word")
                if word != word.lower():
                    raise ValueError(f"{path}:{line_index + 1}: word {word!r} is not lower case")
                if idx in seen_ids:
                    raise ValueError(f"{path}:{line_index + 1}: id {idx} is used twice")
                if word in word_to_id:
                    raise ValueError(f"{path}:{line_index + 1}: word {word!r} appears twice")
                seen_ids.add(idx)
                word_to_id[word] = idx
        try:
            return cls(word_to_id, max_num_words=max_num_words)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as DMVR reads it: ``word`` per line when ids are 0..n-1, else ``id word``.

        Atomically (`vatt.atomic`): a failed write raises `WriteFailed` and leaves no partial file."""
        items = sorted(self.word_to_id.items(), key=lambda kv: kv[1])
        contiguous = all(i == idx for i, (_, idx) in enumerate(items))
        write_text(path, "".join(f"{word}\n" if contiguous else f"{idx} {word}\n" for word, idx in items),
                   what="vocabulary")

    @classmethod
    def build(
        cls,
        corpus: Iterable[str],
        max_size: int = 2**16,
        min_count: int = 1,
        max_num_words: int = MAX_NUM_WORDS,
    ) -> WordTokenizer:
        """Vocabulary of the most frequent words of `corpus` (captions), after official normalisation.

        Ids: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, then words by decreasing count (ties in
        alphabetical order, so the result does not depend on corpus order). `max_size` counts the
        four special tokens; words seen fewer than `min_count` times are left out.
        """
        if max_size < len(SPECIAL_TOKENS):
            raise ValueError(f"max_size must be >= {len(SPECIAL_TOKENS)} (the special tokens), got {max_size}")
        counts: Counter[str] = Counter()
        for caption in corpus:
            counts.update(split_words(caption))
        # Special tokens cannot come out of normalisation ('<' and '>' are punctuation), so no clash.
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        words = list(SPECIAL_TOKENS) + ranked[: max_size - len(SPECIAL_TOKENS)]
        return cls({w: i for i, w in enumerate(words)}, max_num_words=max_num_words)
