"""vatt.data.manifest: the one manifest reader (CSV/TSV/JSON Lines), both row conventions, the row filter,
and the media lists of folders and manifests."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import shared_path
from vatt.data.manifest import (
    is_manifest,
    list_media,
    read_column,
    read_manifest,
    read_manifest_entries,
    read_records,
    row_matches,
)
from vatt.data.sample_data import write_sample_dataset


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    write_sample_dataset(out, num_clips=6, seed=2)
    return out


def test_one_reader_for_csv_tsv_and_json_lines(tmp_path):
    (tmp_path / "m.csv").write_text("video,fold\na.mp4,1\nb.mp4,\n", encoding="utf-8")
    (tmp_path / "m.tsv").write_text("video\tfold\na.mp4\t1\nb.mp4\t\n", encoding="utf-8")
    (tmp_path / "m.jsonl").write_text('{"video": "a.mp4", "fold": 1}\n\n{"video": "b.mp4", "extra": [1]}\n',
                                      encoding="utf-8")
    csv_rows, tsv_rows = read_records(tmp_path / "m.csv"), read_records(tmp_path / "m.tsv")
    assert csv_rows.columns == tsv_rows.columns == ["video", "fold"]
    assert csv_rows.rows == tsv_rows.rows == [(2, {"video": "a.mp4", "fold": "1"}), (3, {"video": "b.mp4", "fold": ""})]
    json_rows = read_records(tmp_path / "m.jsonl")
    assert json_rows.columns == ["video", "fold", "extra"]  # every key of every row, in order of appearance
    assert [n for n, _ in json_rows.rows] == [1, 3] and json_rows.rows[0][1]["fold"] == 1  # types kept
    assert read_column(tmp_path / "m.csv", "fold") == read_column(tmp_path / "m.jsonl", "fold")[:1] + [""]
    with pytest.raises(ValueError, match="no column 'split'"):
        read_column(tmp_path / "m.csv", "split")
    with pytest.raises(FileNotFoundError, match="missing.csv does not exist"):
        read_records(tmp_path / "missing.csv")
    assert is_manifest("x.TSV") and is_manifest("x.ndjson") and not is_manifest("x.mp4")


def test_row_filter_compares_values_as_text():
    row = {"fold": "2", "split": "train"}
    assert row_matches(row) and row_matches(row, {"fold": [1, 2]}) and row_matches({"fold": 2}, {"fold": "2"})
    assert not row_matches(row, {"fold": 1}) and not row_matches(row, where_not={"split": ("train", "test")})
    assert row_matches(row, {"split": "train"}, {"fold": {3}})
    assert not row_matches(row, {"label": "dog"})  # a missing column matches no value


def test_manifest_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption\nx.mp4,hi\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'video' column"):
        read_manifest(bad)
    bad.write_text("video,start\nx.mp4,soon\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.csv:2: column 'start'"):
        read_manifest(bad)
    bad.write_text('video,captions\nx.mp4,"[1,"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.csv:2: column 'captions' must hold a JSON list"):
        read_manifest(bad)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4"}\n{"video": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_manifest(bad)
    bad.write_text('["a.mp4"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected a JSON object, got list"):
        read_manifest(bad)


def test_pretraining_rows(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b'video,start,end,caption,split\nclips/a.mp4,1.5,3,a red ball,train\n'
                         b'/abs/b.mp4,,,,test\nc.mp4,,,caf\xe9,train\n')  # the last caption is not UTF-8
    rows = read_manifest(manifest)
    assert rows[0].video == os.fspath(tmp_path / "clips/a.mp4") and (rows[0].start_s, rows[0].end_s) == (1.5, 3.0)
    assert rows[0].captions == ["a red ball"] and rows[0].fields == {"split": "train"} and rows[0].line == 2
    assert rows[1].video == "/abs/b.mp4" and rows[1].captions is None  # a blank caption cell: no text
    assert len(rows[2].captions[0]) == 4  # read, to be rejected when its sample is loaded
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"video": "a.mp4", "captions": ["one", "two"], "duration": 4}) + "\n")
    (row,) = read_manifest(jsonl)
    assert row.captions == ["one", "two"] and row.duration_s == 4.0 and row.fields == {}


def test_media_lists_from_folders_and_manifests(sample, tmp_path):
    folder = list_media([sample / "videos"])
    assert len(folder) == 6 and all(e.path.endswith(".mp4") for e in folder)
    test_rows = list_media([sample / "manifest.csv"], where={"split": "test"})
    assert all(e.fields["split"] == "test" for e in test_rows) and test_rows[0].captions
    real = read_manifest_entries(shared_path("data", "real-video-clips", "clips.csv"))  # `filename` column
    assert len(real) == 8 and all(Path(e.path).is_file() for e in real) and all(e.captions for e in real)

    (tmp_path / "notes.txt").write_text("not media")
    (tmp_path / "photo.jpg").write_bytes(b"")
    left_out: Counter = Counter()
    with pytest.raises(ValueError, match="no video or audio files.*left out: 1 .txt is not a media format"):
        list_media([tmp_path], left_out=left_out)
    assert left_out == {".txt is not a media format vatt reads": 1,
                        "image file, this scan takes video or audio files": 1}


def test_media_entries_columns_captions_and_where(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [
        {"file": "a.wav", "text": "a dog barks", "label": 3},
        {"file": "b.wav", "text": '["one", "two"]', "label": 4},
        {"file": "c.wav", "text": "[not a list", "label": 3},
    ]))
    entries = read_manifest_entries(manifest, root="/data")
    assert [e.path for e in entries] == ["/data/a.wav", "/data/b.wav", "/data/c.wav"]
    assert [e.captions for e in entries] == [["a dog barks"], ["one", "two"], ["[not a list"]]
    assert entries[0].fields == {"label": "3"}  # other columns as text
    assert [e.path for e in read_manifest_entries(manifest, root="/data", where={"label": [3]})] == [
        "/data/a.wav", "/data/c.wav"]
    with pytest.raises(ValueError, match="no column 'split' to select rows by"):
        read_manifest_entries(manifest, where={"split": "test"})
    with pytest.raises(ValueError, match=r"no rows match \{'label': 9\}"):
        read_manifest_entries(manifest, where={"label": 9})
    with pytest.raises(ValueError, match="no column 'path' for the file path"):
        read_manifest_entries(manifest, path_column="path")
    (tmp_path / "x.csv").write_text("name,label\na.wav,1\n")
    with pytest.raises(ValueError, match="no file path column"):
        read_manifest_entries(tmp_path / "x.csv")
