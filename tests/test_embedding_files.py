"""vatt.embedding_files: embeddings on disk as .npz + .csv (+ .text.csv), and back."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from vatt.data.manifest import read_manifest_entries
from vatt.embed import embed_files
from vatt.embedding_files import embedding_arrays, read_embeddings, write_embeddings
from tests.test_embed import sample, tiny  # noqa: F401 (the fixtures: sample clips, a tiny model)


def test_npz_and_csv_round_trip(tiny, sample, tmp_path):
    entries = read_manifest_entries(sample / "manifest.csv")
    files = embed_files(tiny, [e.path for e in entries[:3]], entries=entries[:3], num_windows=2)
    captions = [c for e in files.entries for c in e.captions]
    text = tiny.embed_text(captions)
    written = write_embeddings(tmp_path / "emb.npz", files, text, text_clip=[0, 1, 2], meta={"model": "tiny"})
    assert [p.name for p in written] == ["emb.npz", "emb.csv", "emb.text.csv"]
    back = read_embeddings(tmp_path / "emb.npz")
    expected = embedding_arrays(files, text, text_clip=[0, 1, 2])
    for key in ("video_features", "video_va", "video_vt", "audio_features", "audio_va", "text_vt", "start_s"):
        np.testing.assert_array_equal(back[key], expected[key])
    np.testing.assert_array_equal(back["video_vt"].reshape(3, 2, -1), files.video.vt.numpy())
    assert back["path"].dtype.kind == "U" and list(back["path"][::2]) == files.paths  # no pickle needed
    assert back["meta"]["model"] == "tiny" and back["meta"]["num_windows"] == 2
    with open(tmp_path / "emb.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[3]["path"] == files.paths[1] and rows[3]["window"] == "1"
    assert float(rows[3]["start_s"]) == pytest.approx(files.start_s[1, 1].item(), rel=1e-5)
    assert rows[0]["label"] == entries[0].fields["label"]  # manifest columns travel along
    with open(tmp_path / "emb.text.csv", newline="") as f:
        assert [r["text"] for r in csv.DictReader(f)] == captions
