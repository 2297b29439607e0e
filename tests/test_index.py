"""vatt.index and `vatt index` / `vatt search`: windows, moments, resume after SIGKILL, updates, torchrun."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import vatt
from tests.conftest import free_port
from vatt.cli import main
from vatt.data.sample_data import describe_clip, render_audio, render_video, write_mp4
from vatt.index import Index, build_index, store
from vatt.index.search import merge_moments
from vatt.index.windows import window_starts

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_S = 4.0


def _clip_media(index: int, seconds: float = SEGMENT_S):
    c = describe_clip(index)
    return render_video(c, duration_s=seconds), render_audio(c, sample_rate=16000, duration_s=seconds)


def write_clip(path: Path, index: int, seconds: float = SEGMENT_S) -> Path:
    frames, audio = _clip_media(index, seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, frames, audio)
    return path


def write_long(path: Path, indices) -> Path:
    """Sample clips of `indices` back to back in one file, SEGMENT_S seconds each."""
    parts = [_clip_media(i) for i in indices]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return path


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    torch.manual_seed(0)
    model = vatt.build_model("tx_fac_tiny").eval()
    folder = tmp_path_factory.mktemp("model")
    vatt.save(model, folder)
    return folder


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    for i in range(5):
        write_clip(folder / f"clip{i}.mp4", i, seconds=2.0 + 0.4 * i)
    return folder


def rows(index_dir) -> dict:
    """Every row of an index, keyed by (path, window), as plain Python values."""
    idx = Index.open(index_dir, model=vatt.load(json.loads((Path(index_dir) / "manifest.json").read_text())
                                               ["model"]["path"]))
    out = {}
    for r in idx.table.to_pylist():
        out[(r["path"], r["window"])] = r
    assert len(out) == idx.table.num_rows  # no duplicated window
    return out


def assert_same_rows(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        for col, v in a[key].items():
            w = b[key][col]
            if col in ("video_va", "video_vt", "video_features", "audio_va", "audio_vt", "audio_features"):
                assert (v is None) == (w is None), (key, col)
                if v is not None:
                    np.testing.assert_allclose(v, w, atol=1e-5, err_msg=f"{key} {col}")
            else:
                assert v == w, (key, col)


# --------------------------------------------------------------------------------------------------
# Windows and moments (no model)
# --------------------------------------------------------------------------------------------------

def test_windows_cover_the_file_on_the_frame_grid():
    assert window_starts(4.0, 0.8, 0.4, 10.0) == [0, 4, 8, 12, 16, 20, 24, 28, 32]
    # 4.3 s: every 1 s, plus a last window ending at the end (start 3.5 s -> frame 35)
    assert window_starts(4.3, 0.8, 1.0, 10.0) == [0, 10, 20, 30, 35]
    assert window_starts(0.5, 0.8, 0.4, 10.0) == [0]  # shorter than a clip: one (looped) window
    with pytest.raises(ValueError, match="stride"):
        window_starts(4.0, 0.8, 0.0, 10.0)


def test_moments_merge_neighbouring_windows_around_a_peak():
    paths = np.array(["a"] * 10 + ["b"] * 5, dtype=object)
    windows = np.array(list(range(10)) + list(range(5)))
    starts = windows * 0.5
    ends = starts + 1.0
    scores = np.zeros(15)
    scores[3:7] = [0.6, 0.9, 0.8, 0.55]  # a bump in a: windows 3-6
    scores[12] = 0.7  # a single window in b
    m = merge_moments(scores, paths, windows, starts, ends, k=3)
    assert (m[0].path, m[0].start_s, m[0].end_s, m[0].score, m[0].windows) == ("a", 1.5, 4.0, 0.9, 4)
    assert (m[1].path, m[1].start_s, m[1].end_s, m[1].windows) == ("b", 1.0, 2.0, 1)
    assert len(m) == 3 and m[2].score == 0.0


# --------------------------------------------------------------------------------------------------
# A model that learned something: the demo's pre-training, briefly
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    from vatt.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo")
    # ~200 steps of 16 clips are enough for sound and picture to meet (about 30 s on 2 cores).
    result = run_demo(DemoConfig(out_dir=str(out), num_clips=160, steps=200, batch_size=16, lr=2e-3, workers=0,
                                 precision="fp32"))
    return Path(result.files["checkpoint"])


def test_a_sound_finds_its_segment_of_a_long_file(trained_model, tmp_path):
    # Four classes back to back (red, green, blue, yellow circle moving right), 4 s each.
    segments = [0, 1, 2, 3]
    long = write_long(tmp_path / "media" / "long.mp4", segments)
    build_index(vatt.load(trained_model), [long.parent], tmp_path / "idx", model_path=str(trained_model))
    index = Index.open(tmp_path / "idx")
    ious = []
    for j, clip in enumerate(segments):
        # The query: another clip of the same class (other shape size, path and beeps), never indexed.
        query = write_clip(tmp_path / f"query{j}.mp4", clip + 3 * 64)
        best = index.search(audio=query, k=1)[0]
        lo, hi = j * SEGMENT_S, (j + 1) * SEGMENT_S
        inter = max(0.0, min(hi, best.end_s) - max(lo, best.start_s))
        ious.append(inter / (max(hi, best.end_s) - min(lo, best.start_s)))
    assert min(ious) >= 0.5, ious


# --------------------------------------------------------------------------------------------------
# Building: layout, updates, resume, torchrun
# --------------------------------------------------------------------------------------------------

def test_index_layout_is_readable_without_vatt(random_model, media, tmp_path):
    report = build_index(vatt.load(random_model), [media, tmp_path / "missing.mp4"], tmp_path / "idx",
                         model_path=str(random_model))
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["format"] == "vatt-index" and len(manifest["model"]["fingerprint"]) == 64
    assert manifest["counts"]["files"] == 5 and manifest["counts"]["errors"] == 1
    assert manifest["errors"][str(tmp_path / "missing.mp4")]["reason"] == "missing_file"
    assert report.embedded_files == 5
    table = pq.read_table(tmp_path / "idx" / "shards")  # plain pyarrow over the shard folder
    assert table.num_rows == manifest["counts"]["windows"] == sum(len(window_starts(2.0 + 0.4 * i, 0.8, 0.4, 10))
                                                                  for i in range(5))
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["video_va"]) == len(row["audio_va"]) == 512 and len(row["audio_vt"]) == len(row["video_vt"])
    assert row["thumbnail"][:2] == b"\xff\xd8"  # JPEG
    assert row["end_s"] - row["start_s"] == pytest.approx(0.8)


def test_real_files_with_and_without_sound_and_sound_only(random_model, tmp_path):
    from tests.conftest import shared_path

    silent = shared_path("data", "real-video-clips", "arm_wrestling.mp4")  # no audio stream
    speech = shared_path("data", "audio-text-pairs", "jfk.flac")  # audio only
    build_index(vatt.load(random_model), [silent, speech], tmp_path / "idx", model_path=str(random_model))
    index = Index.open(tmp_path / "idx")
    by_file = {}
    for r in index.table.select(["path", "has_video", "has_audio", "thumbnail", "end_s", "start_s"]).to_pylist():
        by_file.setdefault(Path(r["path"]).name, []).append(r)
    assert all(r["has_video"] and not r["has_audio"] and r["thumbnail"] for r in by_file["arm_wrestling.mp4"])
    assert all(not r["has_video"] and r["has_audio"] and r["thumbnail"] is None for r in by_file["jfk.flac"])
    assert by_file["jfk.flac"][0]["end_s"] - by_file["jfk.flac"][0]["start_s"] == pytest.approx(3.2)  # an audio clip
    # sound is searched where there is sound, pictures where there are pictures
    assert {Path(m.path).name for m in index.search(audio=speech, in_="audio", k=5)} == {"jfk.flac"}
    assert {Path(m.path).name for m in index.search(video=silent, k=5)} == {"arm_wrestling.mp4"}


def test_adding_removing_and_changing_files_updates_the_index(random_model, tmp_path):
    folder = tmp_path / "media"
    for i in range(3):
        write_clip(folder / f"c{i}.mp4", i, seconds=2.0)
    model = vatt.load(random_model)
    build_index(model, [folder], tmp_path / "idx", model_path=str(random_model))
    (folder / "c0.mp4").unlink()
    write_clip(folder / "c3.mp4", 3, seconds=2.0)
    write_clip(folder / "c1.mp4", 9, seconds=3.0)  # changed content and size
    report = build_index(model, [folder], tmp_path / "idx", model_path=str(random_model))
    assert report.embedded_files == 2 and report.unchanged_files == 1
    assert sorted(Path(p).name for p in report.dropped_files) == ["c0.mp4", "c1.mp4"]
    build_index(model, [folder], tmp_path / "fresh", model_path=str(random_model))
    assert_same_rows(rows(tmp_path / "idx"), rows(tmp_path / "fresh"))
    report = build_index(model, [folder], tmp_path / "idx", model_path=str(random_model))
    assert report.embedded_files == 0 and report.dropped_files == []


def test_shards_and_files_left_by_a_killed_run_are_removed(random_model, media, tmp_path):
    model = vatt.load(random_model)
    build_index(model, [media], tmp_path / "idx", model_path=str(random_model), shard_windows=1)
    before = rows(tmp_path / "idx")
    shards = sorted((tmp_path / "idx" / "shards").iterdir())
    # a shard renamed into place whose commit never happened, and a half-written temporary file
    shutil.copy(shards[0], shards[0].with_name("r007-stray.parquet"))
    (tmp_path / "idx" / ".r007-other.parquet.123.tmp").write_bytes(b"PAR1 half")
    report = build_index(model, [media], tmp_path / "idx", model_path=str(random_model))
    assert report.removed_orphans == ["r007-stray.parquet"] and report.embedded_files == 0
    assert not list((tmp_path / "idx").glob(".*.tmp"))
    assert_same_rows(rows(tmp_path / "idx"), before)


def _index_cmd(model, inputs, out, *extra):
    return [sys.executable, "-m", "vatt", "index", str(model), *map(str, inputs), "--out", str(out),
            "--workers", "0", *extra]


def test_a_run_killed_part_way_resumes_with_the_same_rows(random_model, media, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = _index_cmd(random_model, [media], tmp_path / "killed", "--shard-windows", "1", "--batch-size", "2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    shards = tmp_path / "killed" / "shards"
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and len(list(shards.glob("*.parquet"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = len(list(shards.glob("*.parquet")))
    assert 2 <= committed < 5  # killed part-way
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Files whose shard was committed before the kill are not embedded again (one file per shard here; the
    # last shard may have been renamed but not yet committed: that one is embedded again).
    embedded_now = int(re.search(r"embedded now\s+(\d+)", resumed.stdout).group(1))
    assert 5 - committed <= embedded_now <= 5 - committed + 1
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["counts"]["files"] == 5
    assert not list((tmp_path / "killed").glob("journal-*")) and not list((tmp_path / "killed").glob(".*tmp"))
    assert sorted(p.name for p in shards.iterdir()) == sorted(manifest["shards"])
    build_index(vatt.load(random_model), [media], tmp_path / "whole", model_path=str(random_model))
    assert_same_rows(rows(tmp_path / "killed"), rows(tmp_path / "whole"))


def test_two_torchrun_processes_give_the_index_of_one(random_model, media, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "vatt", "index", str(random_model), str(media), "--out", str(tmp_path / "two"), "--workers", "0",
           "--shard-windows", "8"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "two" / "shards").iterdir())
    assert any(n.startswith("r000-") for n in names) and any(n.startswith("r001-") for n in names)
    build_index(vatt.load(random_model), [media], tmp_path / "one", model_path=str(random_model))
    assert_same_rows(rows(tmp_path / "two"), rows(tmp_path / "one"))


# --------------------------------------------------------------------------------------------------
# The commands and bad input
# --------------------------------------------------------------------------------------------------

def test_index_and_search_commands(random_model, media, tmp_path, capsys):
    assert main(["index", str(random_model), str(media), "--out", str(tmp_path / "idx"), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "in the index" in out and "a window every 0.4 s" in out
    query = media / "clip2.mp4"
    assert main(["search", str(tmp_path / "idx"), "--video", f"{query}@0.8", "-k", "3", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert len(found["moments"]) == 3
    best = found["moments"][0]
    # the query window itself is in the index: its moment contains it and scores ~1
    assert best["path"] == str(query) and best["start_s"] <= 0.8 < best["end_s"] and best["score"] > 0.999
    assert main(["search", str(tmp_path / "idx"), "--audio", str(query), "--in", "audio", "-k", "2"]) == 0
    table = capsys.readouterr().out
    assert "score" in table and str(media) in table


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_input_gives_a_clear_message(random_model, media, tmp_path, capsys):
    idx = tmp_path / "idx"
    build_index(vatt.load(random_model), [media / "clip0.mp4"], idx, model_path=str(random_model))
    _fails(["search", str(tmp_path / "nowhere"), "a dog"], capsys, "no index at")
    _fails(["search", str(idx), "   "], capsys, "text query is empty")
    _fails(["search", str(idx)], capsys, "give one query")
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    _fails(["search", str(idx), "--audio", str(bad)], capsys, str(bad), "corrupt")
    torch.manual_seed(1)
    other = tmp_path / "other_model"
    vatt.save(vatt.build_model("tx_fac_tiny"), other)
    _fails(["search", str(idx), "--video", str(media / "clip0.mp4"), "--model", str(other)], capsys,
           "built by another model")
    _fails(["index", str(other), str(media), "--out", str(idx)], capsys, "built by another model")
    _fails(["search", str(idx), "--video", f"{media / 'clip0.mp4'}@soon"], capsys, "FILE@SECONDS")


def test_the_index_records_its_precision_and_an_update_may_not_mix_them(random_model, media, tmp_path, capsys):
    idx = tmp_path / "idx"
    report = build_index(vatt.load(random_model), [media / "clip0.mp4"], idx, model_path=str(random_model))
    assert report.manifest["protocol"]["precision"] == "fp32"
    _fails(["index", str(random_model), str(media / "clip0.mp4"), "--out", str(idx), "--precision", "bf16",
            "--workers", "0"], capsys, "'precision': 'fp32'", "'precision': 'bf16'", "--precision")
    # an index written before the precision was recorded holds float32 vectors: fp32 updates it, bf16 does not
    manifest = store.read_manifest(idx)
    del manifest["protocol"]["precision"]
    store.write_manifest(idx, manifest)
    with pytest.raises(ValueError, match="precision"):
        build_index(vatt.load(random_model), [media / "clip0.mp4"], idx, precision="bf16")
    build_index(vatt.load(random_model), [media / "clip0.mp4"], idx, model_path=str(random_model))


# --------------------------------------------------------------------------------------------------
# FAISS
# --------------------------------------------------------------------------------------------------

def test_ivf_recall_on_clustered_vectors():
    from vatt.index.ann import build_ivf, recall_at

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 32))
    x = (centres[rng.integers(0, 50, 5000)] + 0.3 * rng.normal(size=(5000, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ivf = build_ivf(x)
    assert ivf.nlist == 70 and ivf.nprobe == 5
    assert recall_at(ivf, x, x[:100]) >= 0.9
    ivf.nprobe = 1
    assert recall_at(ivf, x, x[:100]) < 1.0  # the measure sees what a coarser search misses


def test_ann_index_is_built_used_and_dropped_when_stale(random_model, media, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert main(["index", str(random_model), str(media / "clip0.mp4"), str(media / "clip4.mp4"), "--out", str(idx),
                 "--workers", "0", "--ann"]) == 0
    assert "recall@10 against exact search 100.0 %" in capsys.readouterr().out
    manifest = json.loads((idx / "manifest.json").read_text())
    assert set(manifest["ann"]["columns"]) == {"video_va", "video_vt", "audio_va", "audio_vt"}
    index = Index.open(idx)
    assert set(index.ann) == set(manifest["ann"]["columns"])
    query = dict(video=media / "clip4.mp4", video_start_s=1.0, k=3)
    approx, exact = index.search(**query), index.search(**query, exact=True)
    assert [m.as_dict() for m in approx][:1] == [m.as_dict() for m in exact][:1]
    s, scored = index.scores(*index.embed_query(video=media / "clip4.mp4"), candidates=5)
    assert scored.sum() == 5  # only FAISS's candidates were scored
    build_index(vatt.load(random_model), [media / "clip0.mp4"], idx, model_path=str(random_model))
    assert json.loads((idx / "manifest.json").read_text())["ann"] is None and not (idx / "ann").exists()
    assert Index.open(idx).ann == {}


def test_the_demo_model_finds_the_class_of_a_sound_among_held_out_clips(trained_model):
    from vatt.commands.demo import search_demo
    from vatt.index.quality import demo_searches, search_quality

    demo_dir = trained_model.parents[2]
    manifest = demo_dir / "data" / "manifest.csv"

    class Result:
        files = {"checkpoint": str(trained_model)}
        num_heldout = 32

    class Args:
        out, serve = str(demo_dir), False

    search_demo(Args, Result)  # what `vatt demo` does after its table
    index = Index.open(demo_dir / "index")
    assert index.manifest["counts"]["files"] == 32
    lines = demo_searches(index, manifest)
    assert any(line.startswith("search by sound") for line in lines)
    # The demo model has learnt which pictures go with a sound: above chance (1/16) at finding the class.
    quality = search_quality(index, manifest)
    assert quality["sound in pictures"] > 2 / 16, quality


def test_a_full_disk_stops_indexing_and_keeps_the_index(random_model, media, tmp_path, monkeypatch, capsys):
    import errno

    import vatt.atomic

    model = vatt.load(random_model)
    folder = tmp_path / "media"
    shutil.copytree(media, folder)
    build_index(model, [folder], tmp_path / "idx", model_path=str(random_model))
    before = rows(tmp_path / "idx")
    manifest = (tmp_path / "idx" / "manifest.json").read_bytes()
    write_clip(folder / "new.mp4", 7, seconds=2.0)

    def full(f, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vatt.atomic, "_write", full)
    with pytest.raises(vatt.atomic.WriteFailed, match="No space left on device"):
        build_index(model, [folder], tmp_path / "idx", model_path=str(random_model))
    assert main(["index", str(random_model), str(folder), "--out", str(tmp_path / "idx"), "--workers", "0"]) == 1
    err = capsys.readouterr().err
    assert "vatt index: error: could not write index" in err and "No space left on device" in err
    assert "Traceback" not in err
    monkeypatch.undo()
    # nothing partial: the manifest is the previous one, no temporary is left, the rows are the old ones
    assert (tmp_path / "idx" / "manifest.json").read_bytes() == manifest
    assert not [p for p in (tmp_path / "idx").rglob("*") if p.name.startswith(".tmp-")]
    assert_same_rows(rows(tmp_path / "idx"), before)
    report = build_index(model, [folder], tmp_path / "idx", model_path=str(random_model))
    assert report.embedded_files == 1 and len(rows(tmp_path / "idx")) > len(before)
