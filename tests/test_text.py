"""The official word tokenizer: normalisation, ids, vocabulary files, vocabulary building."""
from __future__ import annotations

import csv
import json
import os
import pickle
import string
from pathlib import Path

import pytest
import torch

from vatt.data.text import MAX_NUM_WORDS, SPECIAL_TOKENS, WordTokenizer, normalize_caption, split_words

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared test data {path} is missing (required under CI)")
        pytest.skip(f"shared test data {path} is not here")
    return path


def real_captions() -> list[str]:
    msrvtt = shared("msrvtt-text/MSRVTT_JSFUSION_test.csv")
    with open(msrvtt, encoding="utf-8", newline="") as f:
        caps = [r["sentence"] for r in csv.DictReader(f, delimiter=";")]
    with open(shared("real-video-clips/clips.csv"), encoding="utf-8", newline="") as f:
        caps += [r["caption"] for r in csv.DictReader(f)]
    with open(shared("audio-text-pairs/captions.csv"), encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            caps += [r["caption"], r["transcript"]]
    assert len(caps) > 1000
    return caps


# A plain-Python statement of DMVR's WordTokenizer (TF path), written independently of the module.
_ASCII_PUNCT = set(string.punctuation)


def reference_ids(caption: str, word_to_id: dict[str, int], max_words: int = MAX_NUM_WORDS) -> list[int]:
    stripped = "".join(ch for ch in caption if ch not in _ASCII_PUNCT)
    lowered = "".join(ch.lower() if "A" <= ch <= "Z" else ch for ch in stripped)
    ids = [word_to_id.get(w, word_to_id["<unk>"]) for w in lowered.split()][:max_words]
    return ids + [word_to_id["<pad>"]] * (max_words - len(ids))


TRICKY = [
    "",
    "   ",
    "Hello,World!",
    "don't stop-me now",
    "A man\tplays\n the GUITAR  loudly",
    "ÉCOLE école Straße",  # non-ASCII capitals stay as they are (TF lower is ASCII-only)
    "curly ’quotes’ — dashes survive",
    "word " * 40,
    " ".join(f"w{i}" for i in range(16)),
    "numbers 123 and 4.5% (percent) [brackets] {braces} <tags> @user #tag $5 a|b ~x^y `q` _u_",
]


def test_normalisation_strips_ascii_punctuation_and_lowercases_ascii_only():
    assert normalize_caption("Hello, World! It's 4.5%") == "hello world its 45"
    assert split_words("a  b\tc\nd") == ["a", "b", "c", "d"]
    assert split_words("ÉCOLE") == ["École"]  # only A-Z are lowered
    assert split_words("’quote’ —") == ["’quote’", "—"]
    assert split_words("!!! ...") == []


def test_ids_match_plain_python_reference_on_real_captions():
    caps = real_captions()
    # A vocabulary from half of the captions, capped, so the other half has plenty of OOV words.
    tok = WordTokenizer.build(caps[::2], max_size=800)
    ids = tok.encode(caps + TRICKY)
    assert ids.shape == (len(caps) + len(TRICKY), MAX_NUM_WORDS) and ids.dtype == torch.long
    for caption, row in zip(caps + TRICKY, ids.tolist()):
        assert row == reference_ids(caption, tok.word_to_id), caption
    assert (ids == tok.unk_id).any(), "the held-out half should contain unknown words"


def test_normalisation_matches_tensorflow_ops():
    """The official op chain: tf.strings.regex_replace('[[:punct:]]', '') then tf.strings.lower. Both act on
    each character alone; tests/data/tf_normalisation.json holds what TensorFlow made of every character of
    these captions (written by tests/data/make_tf_normalisation.py), so no TensorFlow is needed here."""
    table = json.loads((Path(__file__).parent / "data" / "tf_normalisation.json").read_text(encoding="utf-8"))
    caps = real_captions() + TRICKY
    assert {ch for c in caps for ch in c} <= table.keys(), "new characters: run tests/data/make_tf_normalisation.py"
    assert [normalize_caption(c) for c in caps] == ["".join(table[ch] for ch in c) for c in caps]
    assert table["A"] == "a" and table["É"] == "É" and table["!"] == "" and table["'"] == ""


def test_special_cases():
    tok = WordTokenizer.build(["hello world a b c"] * 2)
    row = tok.encode(["Hello,World! hello world"])[0].tolist()
    assert row[:3] == [tok.unk_id, tok.word_to_id["hello"], tok.word_to_id["world"]]  # "helloworld" is one word
    assert tok.encode([""]).tolist() == [[0] * 16]  # empty caption: all pad
    long = tok.encode(["a " * 30])[0]
    assert long.tolist() == [tok.word_to_id["a"]] * 16  # cropped to 16, no EOS
    assert tok.encode([]).shape == (0, 16)
    with pytest.raises(TypeError):
        tok.encode("a single string")


def test_build_orders_by_count_then_alphabet_and_respects_caps():
    corpus = ["b b b a a c", "d c", "e"]
    tok = WordTokenizer.build(corpus)
    assert [tok.id_to_word[i] for i in range(tok.vocab_size)] == list(SPECIAL_TOKENS) + ["b", "a", "c", "d", "e"]
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert WordTokenizer.build(corpus, min_count=2).vocab_size == 4 + 3
    assert WordTokenizer.build(corpus, max_size=6).vocab_size == 6
    assert WordTokenizer.build(list(reversed(corpus))).word_to_id == tok.word_to_id


def test_vocab_file_round_trip(tmp_path):
    caps = ["A red circle moves left", "the blue square is falling", "red ball going right"]
    tok = WordTokenizer.build(caps)
    path = tmp_path / "vocab.txt"
    tok.save(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[:4] == list(SPECIAL_TOKENS) and len(lines) == tok.vocab_size  # one word per line
    again = WordTokenizer.from_vocab_file(path)
    assert again.word_to_id == tok.word_to_id
    assert torch.equal(again.encode(caps), tok.encode(caps))


def test_vocab_file_with_explicit_ids_and_pad_elsewhere(tmp_path):
    # DMVR also reads "id word" lines; the pad id is wherever <pad> is.
    path = tmp_path / "vocab.txt"
    path.write_text("10 hello\n7 <pad>\n3 <unk>\n1 <bos>\n2 <eos>\n42 world\n", encoding="utf-8")
    tok = WordTokenizer.from_vocab_file(path)
    assert (tok.pad_id, tok.unk_id) == (7, 3)
    assert tok.encode(["hello there world"])[0].tolist() == [10, 3, 42] + [7] * 13
    assert tok.decode([10, 42, 7, 10]) == "hello world"
    tok.save(tmp_path / "again.txt")  # non-contiguous ids are written as "id word"
    assert WordTokenizer.from_vocab_file(tmp_path / "again.txt").word_to_id == tok.word_to_id


@pytest.mark.parametrize(
    "content, message",
    [
        ("<pad>\n<bos>\n<eos>\nhello\n", "<unk>"),
        ("<pad>\n<bos>\n<eos>\n<unk>\nHello\n", "not lower case"),
        ("0 <pad>\n1 <bos>\n2 <eos>\n3 <unk>\n3 word\n", "used twice"),
        ("<pad>\n<bos>\n<eos>\n<unk>\na b c\n", "malformed"),
        ("<pad>\n<bos>\n<eos>\n<unk>\nword\nword\n", "appears twice"),
    ],
)
def test_bad_vocab_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        WordTokenizer.from_vocab_file(path)
    assert str(path) in str(info.value)


def test_pickles_for_dataloader_workers():
    tok = WordTokenizer.build(["a red circle"])
    again = pickle.loads(pickle.dumps(tok))
    assert torch.equal(again.encode(["a red square"]), tok.encode(["a red square"]))
