"""How well search finds the right class on the sample data (`vatt demo`'s held-out clips).

The index holds the held-out clips (one file per clip); a found moment is right when its file shows the
query's class ("colour shape", 16 classes). Per query, precision@5 = right files among the top 5 moments;
chance is 1/16 for precision (8 of 128 held-out clips per class).

- text: one sentence per class, phrased in words the training captions never use
  ("something {colour} shaped like a {shape}"; only the colour and shape names are known words),
  searched in the pictures (text vt . video vt) and in the sounds (text vt . audio va->vt, the FAC
  projection; an extra that the head was not trained for);
- sound: the audio of one training clip per class (never indexed), searched in the pictures (audio va .
  video va).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vatt.checkpoint.io import load
from vatt.data.manifest import read_manifest_entries
from vatt.data.sample_data import CLASSES
from vatt.index.build import build_index
from vatt.index.search import Index

TEXT_TEMPLATE = "something {colour} shaped like a {shape}"


def index_heldout(model_dir: str | os.PathLike, manifest: str | os.PathLike, index_dir: str | os.PathLike) -> Index:
    """Index the held-out clips of a sample manifest (split = test) with a model folder; open it."""
    model = load(model_dir)
    build_index(model, [manifest], index_dir, model_path=os.fspath(model_dir), where={"split": "test"})
    return Index.open(index_dir, model=model)


def precision_at(index: Index, labels: dict[str, str], label: str, moments, k: int = 5) -> float:
    top = moments[:k]
    return sum(labels[m.path] == label for m in top) / k


def search_quality(index: Index, manifest: str | os.PathLike, k: int = 5) -> dict[str, float]:
    """Mean precision@k of text (in pictures, in sounds) and sound (in pictures) queries, one per class.
    Text queries are left out when the model has no word vocabulary."""
    rows = read_manifest_entries(manifest)
    labels = {os.path.abspath(r.path): r.fields["label"] for r in rows}
    train = {}
    for r in rows:
        if r.fields["split"] == "train":
            train.setdefault(r.fields["label"], r.path)
    has_words = getattr(index.model, "tokenizer", None) is not None  # text needs the model's vocabulary
    out = {"text in pictures": [], "text in sounds": [], "sound in pictures": []} if has_words else {
        "sound in pictures": []}
    for label in CLASSES:
        colour, shape = label.split()
        text = TEXT_TEMPLATE.format(colour=colour, shape=shape)
        if has_words:
            out["text in pictures"].append(precision_at(index, labels, label, index.search(text, k=k), k))
            out["text in sounds"].append(precision_at(index, labels, label, index.search(text, k=k, in_="audio"), k))
        out["sound in pictures"].append(precision_at(index, labels, label, index.search(audio=train[label], k=k), k))
    return {name: float(np.mean(v)) for name, v in out.items()}


def demo_searches(index: Index, manifest: str | os.PathLike, k: int = 3) -> list[str]:
    """The two example searches `vatt demo` prints: a sentence and a sound, with each file's class."""
    rows = read_manifest_entries(manifest)
    labels = {os.path.abspath(r.path): r.fields["label"] for r in rows}
    sound = next(r for r in rows if r.fields["split"] == "train" and r.fields["label"] == "blue square")
    lines = []
    queries = [("sentence", {"text": "something blue shaped like a square"}, '"something blue shaped like a square"'),
               ("sound", {"audio": sound.path}, f"the sound of {Path(sound.path).name} (a blue square, not indexed)")]
    for what, query, shown in queries:
        if what == "sentence" and getattr(index.model, "tokenizer", None) is None:
            lines.append("(no sentence search: the model folder has no vocab.txt)")
            continue
        lines.append(f"search by {what}: {shown}")
        for m in index.search(**query, k=k):
            lines.append(f"  {Path(m.path).name}  {m.start_s:4.1f}-{m.end_s:4.1f} s  score {m.score:.3f}  "
                         f"({labels.get(m.path, '?')})")
    return lines
