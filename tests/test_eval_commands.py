"""The downstream commands end to end: `vatt embed`, `vatt eval retrieval`, `vatt eval linear-probe`,
`vatt visualize`, on tiny models, the sample dataset and (when present) ../shared/data."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vatt
from vatt.cli import main
from vatt.data.sample_data import write_sample_dataset
from vatt.data.text import WordTokenizer
from vatt.embedding_files import read_embeddings
from tests.test_retrieval import known_arrays
from tests.conftest import shared_path as conftest_shared_path


def shared_path(*parts: str) -> Path:
    return conftest_shared_path("data", *parts)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    write_sample_dataset(out, num_clips=20, seed=3)
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, sample):
    """A random tx_fac_tiny saved with a vocabulary built from the sample captions."""
    torch.manual_seed(0)
    with open(sample / "manifest.csv", newline="") as f:
        captions = [r["caption"] for r in csv.DictReader(f)]
    folder = tmp_path_factory.mktemp("models") / "tiny"
    vatt.save(vatt.build_model("tx_fac_tiny"), folder, tokenizer=WordTokenizer.build(captions, max_size=1024))
    return folder


# ------------------------------------------------------------------------------------------------------
# Retrieval with a known answer
# ------------------------------------------------------------------------------------------------------

def test_cli_retrieval_from_an_embeddings_file(tmp_path, capsys):
    arrays = known_arrays()
    np.savez(tmp_path / "known.npz", **{**arrays, "meta": np.array(json.dumps(arrays["meta"]))})
    assert main(["eval", "retrieval", "--embeddings", str(tmp_path / "known.npz"), "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "text->video" in out and "100.0" in out and "pessimistic ties" in out
    assert "official zero-shot protocol: directions text->video, audio->video; first caption of each clip" in out
    record = json.loads((tmp_path / "r.json").read_text())
    assert all(r["metrics"]["R@1"] == 1.0 for r in record["results"]) and len(record["results"]) == 4
    assert record["protocol"]["num_windows"] == 4 and record["results"][0]["protocol"]["num_windows"] == 4
    assert record["protocol"]["official"] and record["protocol"]["captions"] == "first"
    t2v = next(r for r in record["results"] if r["protocol"]["direction"] == "text->video")
    assert t2v["protocol"]["num_queries"] == 6 and t2v["protocol"]["captions_per_video"] == 1  # one text per clip


def test_cli_retrieval_official_protocol_by_default_others_named(tmp_path, capsys):
    """Every caption, and video->text, only when asked for -- and then the protocol line says so."""
    arrays = known_arrays()
    arrays["text_vt"][2] = arrays["text_vt"][0]  # clip 1's second caption now describes clip 0
    np.savez(tmp_path / "known.npz", **{**arrays, "meta": np.array(json.dumps(arrays["meta"]))})
    assert main(["eval", "retrieval", "--embeddings", str(tmp_path / "known.npz"), "--out", str(tmp_path / "a.json")]) == 0
    official = json.loads((tmp_path / "a.json").read_text())
    t2v = next(r for r in official["results"] if r["protocol"]["direction"] == "text->video")
    assert t2v["metrics"]["R@1"] == 1.0  # the misleading second caption is not a query
    assert main(["eval", "retrieval", "--embeddings", str(tmp_path / "known.npz"), "--captions", "all",
                 "--directions", "text->video,video->text", "--out", str(tmp_path / "b.json")]) == 0
    assert "not the official protocol: directions text->video, video->text; every caption of each clip" in \
        capsys.readouterr().out
    every = json.loads((tmp_path / "b.json").read_text())
    t2v = next(r for r in every["results"] if r["protocol"]["direction"] == "text->video")
    assert t2v["protocol"]["num_queries"] == 7 and t2v["metrics"]["R@1"] == pytest.approx(6 / 7)
    assert not every["protocol"]["official"]


# ------------------------------------------------------------------------------------------------------
# Commands on real files
# ------------------------------------------------------------------------------------------------------

def test_cli_retrieval_on_the_sample_dataset(tiny_dir, sample, tmp_path, capsys):
    out = tmp_path / "ret.json"
    assert main(["eval", "retrieval", str(tiny_dir), str(sample / "manifest.csv"), "--where", "split=test",
                 "--workers", "0", "--out", str(out), "--save-embeddings", str(tmp_path / "emb.npz")]) == 0
    printed = capsys.readouterr().out
    assert "4 window(s) per clip (linspace)" in printed and "8 frames at 10 fps" in printed
    record = json.loads(out.read_text())
    protocol = record["protocol"]
    assert protocol["num_windows"] == 4 and protocol["num_clips"] == 4 and protocol["where"] == {"split": ["test"]}
    assert {(r["protocol"]["direction"], r["protocol"]["mode"]) for r in record["results"]} == {
        (d, m) for d in ("text->video", "audio->video") for m in ("embd", "cosine")}
    assert all(r["protocol"]["captions_per_video"] == 1 for r in record["results"])
    assert "official zero-shot protocol" in printed
    saved = read_embeddings(tmp_path / "emb.npz")
    assert saved["video_vt"].shape == (16, 256) and saved["text_vt"].shape == (4, 256)
    # the scores recomputed from the saved embeddings are the same
    assert main(["eval", "retrieval", "--embeddings", str(tmp_path / "emb.npz"), "--out", str(tmp_path / "r2.json")]) == 0
    again = json.loads((tmp_path / "r2.json").read_text())
    assert [r["metrics"] for r in again["results"]] == [r["metrics"] for r in record["results"]]


def test_cli_embed_files_folders_and_text(tiny_dir, sample, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 500)
    args = ["embed", str(tiny_dir), str(sample / "videos"), "--text", "a red ball", "--windows", "2",
            "--workers", "0", "--out", str(tmp_path / "emb.npz")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "video" in printed and "audio" in printed and "text" in printed
    arrays = read_embeddings(tmp_path / "emb.npz")
    assert arrays["video_vt"].shape == (40, 256) and arrays["audio_va"].shape == (40, 512)
    assert list(arrays["text"]) == ["a red ball"] and arrays["text_clip"].tolist() == [-1]
    summary = json.loads((tmp_path / "emb.json").read_text())
    assert summary["num_files"] == 20 and summary["windows"] == 2 and summary["spec"]["num_frames"] == 8
    # a broken file: a clear error naming it, or skipped and listed with --skip-bad
    assert main(["embed", str(tiny_dir), str(broken), "--workers", "0", "--out", str(tmp_path / "b.npz")]) == 2
    assert str(broken) in capsys.readouterr().err
    assert main(["embed", str(tiny_dir), str(broken), str(sample / "videos" / "clip_00000.mp4"), "--skip-bad",
                 "--workers", "0", "--out", str(tmp_path / "c.npz")]) == 0
    assert "1 file(s) skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["skipped_files"][0].startswith(str(broken))


def test_cli_embed_folder_takes_gifs_and_reports_what_it_left_out(tiny_dir, sample, tmp_path, capsys):
    """Every video format the README lists, GIF included, is taken from a folder; what is not taken is
    counted by reason."""
    import shutil

    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(sample / "videos" / "clip_00000.mp4", folder / "a.mp4")
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(10)]
    frames[0].save(folder / "b.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(folder / "c.jpg")
    (folder / "notes.txt").write_text("not media")
    assert main(["embed", str(tiny_dir), str(folder), "--workers", "0", "--out", str(tmp_path / "m.npz")]) == 0
    printed = capsys.readouterr().out
    assert "left out 2 file(s) of the folders: 1 .txt is not a media format vatt reads; " \
           "1 image file, this scan takes video or audio files" in printed
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["num_files"] == 2
    arrays = read_embeddings(tmp_path / "m.npz")
    assert arrays["video_vt"].shape[0] == 2 and np.isfinite(arrays["video_vt"]).all()


def test_class_folder_scan_counts_files_it_leaves_out(tmp_path):
    from PIL import Image

    from vatt.data.classification import ClassificationDataset

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / cls / "x.png")
        (tmp_path / cls / "y.wav").write_bytes(b"RIFF")
    data = ClassificationDataset.from_folder(tmp_path, modality="image")
    assert len(data) == 2 and data.left_out == {"audio file, this scan takes image files": 2}


def test_cli_embed_audio_only_needs_no_captions(tmp_path):
    torch.manual_seed(0)
    vatt.save(vatt.build_model("wat_tiny_classifier"), tmp_path / "wat")
    wavs = sorted(shared_path("fsdd", "recordings").glob("7_*_1.wav"))
    assert main(["embed", str(tmp_path / "wat"), *map(str, wavs), "--workers", "0", "--out", str(tmp_path / "a.npz")]) == 0
    arrays = read_embeddings(tmp_path / "a.npz")
    assert arrays["audio_features"].shape == (len(wavs), 64) and "audio_logits" in arrays and "video_features" not in arrays


def test_cli_linear_probe_on_sample_audio(tiny_dir, sample, tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert main(["eval", "linear-probe", str(tiny_dir), str(sample / "manifest.csv"), "--modality", "audio",
                 "--path-column", "video", "--label-column", "colour", "--split-column", "split", "--epochs", "20",
                 "--workers", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "official" in printed and "logistic" in printed and "mean softmax over 4 windows" in printed
    record = json.loads(out.read_text())
    assert record["protocol"]["test_windows"] == 4 and record["protocol"]["input"]["sample_rate"] == 8000
    for name in ("official", "logistic"):
        r = record["results"][name]
        assert r["protocol"]["num_train"] == [16] and r["protocol"]["num_test"] == [4]
        assert r["protocol"]["num_windows_test"] == 4 and 0.0 <= r["mean"]["top1"] <= 1.0
    assert record["results"]["official"]["protocol"]["config"]["epochs"] == 20


def test_cli_linear_probe_on_fsdd_folds(tmp_path, capsys):
    fsdd = shared_path("fsdd")
    torch.manual_seed(0)
    vatt.save(vatt.build_model("wat_tiny_classifier"), tmp_path / "wat")
    # one speaker, takes as folds: the leave-one-fold-out protocol of ESC-50 on real speech
    rows = list(csv.DictReader(open(fsdd / "labels.csv", newline="")))
    with open(tmp_path / "theo.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "fold"])
        for r in rows:
            if r["speaker"] == "theo" and int(r["take"]) < 12:
                writer.writerow([str(fsdd / "recordings" / r["filename"]), r["digit"], int(r["take"]) % 3])
    assert main(["eval", "linear-probe", str(tmp_path / "wat"), str(tmp_path / "theo.csv"), "--fold-column", "fold",
                 "--classifier", "logistic", "--workers", "0", "--windows", "2", "--out", str(tmp_path / "p.json")]) == 0
    record = json.loads((tmp_path / "p.json").read_text())
    r = record["results"]["logistic"]
    assert r["split_names"] == ["fold=0", "fold=1", "fold=2"] and r["protocol"]["num_test"] == [40, 40, 40]
    assert r["mean"]["top1"] == pytest.approx(np.mean([s["top1"] for s in r["per_split"]]))


def test_cli_visualize_features_and_similarity(tiny_dir, sample, tmp_path, capsys):
    assert main(["visualize", "features", str(tiny_dir), str(sample / "manifest.csv"), "--label-column", "colour",
                 "--workers", "0", "--out", str(tmp_path / "f")]) == 0
    record = json.loads((tmp_path / "f" / "visualize.json").read_text())
    assert record["num_points"] == 20 and record["modality"] == "video" and len(record["files"]) == 2
    from PIL import Image
    assert all(Image.open(p).size == (800, 800) for p in record["files"])
    assert main(["visualize", "similarity", str(tiny_dir), str(sample / "manifest.csv"), "--windows", "2",
                 "--workers", "0", "--out", str(tmp_path / "s")]) == 0
    record = json.loads((tmp_path / "s" / "visualize.json").read_text())
    assert record["num_queries"] == record["num_items"] == 20 and Path(record["file"]).is_file()
    # from an embeddings file, coloured by a manifest column of its index
    assert main(["embed", str(tiny_dir), str(sample / "manifest.csv"), "--workers", "0",
                 "--out", str(tmp_path / "e.npz")]) == 0
    assert main(["visualize", "features", "--embeddings", str(tmp_path / "e.npz"), "--label-column", "motion",
                 "--space", "vt", "--methods", "pca", "--out", str(tmp_path / "g")]) == 0
    record = json.loads((tmp_path / "g" / "visualize.json").read_text())
    assert record["space"] == "vt" and record["num_classes"] == len({r["motion"] for r in csv.DictReader(
        open(sample / "manifest.csv", newline=""))})
    assert main(["visualize", "similarity", "--embeddings", str(tmp_path / "e.npz"), "--out", str(tmp_path / "h")]) == 0


# ------------------------------------------------------------------------------------------------------
# What a newcomer meets on the command line
# ------------------------------------------------------------------------------------------------------
def test_every_command_samples_at_the_same_frame_rate_by_default():
    # embed and visualize sampled at 10 fps, eval at 12.5: one model, one set of clips, different numbers.
    from vatt.cli import build_parser
    from vatt.configs import DEFAULT_FPS, input_spec

    parser = build_parser()
    commands = [["embed", "m", "--out", "x.npz"], ["eval", "retrieval", "m", "c.csv"],
                ["eval", "linear-probe", "m", "c.csv", "--split-column", "split"],
                ["visualize", "features", "m", "c.csv"], ["visualize", "similarity", "m", "c.csv"]]
    fps = {" ".join(argv[:2]): parser.parse_args(argv).fps for argv in commands}
    assert set(fps.values()) == {None}, fps  # None: the model's input spec decides
    assert input_spec(vatt.get_preset("tx_fac_tiny")).fps == DEFAULT_FPS == 10.0


def test_linear_probe_finds_the_path_column(tiny_dir, sample, tmp_path, capsys):
    # linear-probe required --path-column where every other command finds the `video` column itself.
    out = tmp_path / "probe.json"
    assert main(["eval", "linear-probe", str(tiny_dir), str(sample / "manifest.csv"), "--label-column", "colour",
                 "--split-column", "split", "--classifier", "logistic", "--workers", "0", "--windows", "2",
                 "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["protocol"]["num_classes"] == 4 and record["protocol"]["input"]["fps"] == 10.0


def test_a_model_without_vocabulary_gets_a_command_line_answer(tmp_path, sample, capsys):
    folder = tmp_path / "novocab"
    vatt.save(vatt.build_model("tx_fac_tiny"), folder)
    code = main(["embed", str(folder), str(sample / "manifest.csv"), "--where", "split=test", "--workers", "0",
                 "--out", str(tmp_path / "e.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "--vocab" in err and "vocab.txt" in err
    assert "tokenizer=" not in err and "WordTokenizer" not in err  # no Python in a CLI message


def test_embed_help_names_its_modality_choices_once(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    text = capsys.readouterr().out
    assert "{auto,video,audio,video+audio}" in text and "video,audio,video,audio" not in text


def test_long_steps_print_plain_progress_lines_when_not_on_a_terminal(tiny_dir, sample, tmp_path, capsys):
    # With output to a file, eval printed nothing until it finished (tqdm bars are off without a terminal).
    from vatt.engine.progress import PlainProgress

    lines = []

    class Sink:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    bar = PlainProgress("embedding clips", total=4, unit="clip", interval=0.0, file=Sink())
    for n in range(1, 5):
        bar.update_to(n)
    bar.close()
    text = "".join(lines)
    assert text.count("embedding clips: ") == 5 and "1/4 clips (25%)" in text and "ETA" in text
    assert "\r" not in text
    assert main(["eval", "retrieval", str(tiny_dir), str(sample / "manifest.csv"), "--where", "split=test",
                 "--windows", "1", "--workers", "0", "--out", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "embedding clips: 4/4 files (100%)" in err and "\r" not in err


def test_precision_auto_is_decided_before_the_run_and_recorded(tiny_dir, sample, tmp_path, monkeypatch):
    """`--precision auto` is resolved for the device once, so the files say which arithmetic made them; the same
    embeddings as asking for that precision by name."""
    from vatt import precision

    video = str(sample / "videos" / "clip_00000.mp4")
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "autocast_dtype", lambda p, d, s=supported, f=precision.autocast_dtype:
                            f("bf16" if s else "fp32", d) if p == "auto" else f(p, d))
        auto, named = tmp_path / f"auto_{expected}.npz", tmp_path / f"named_{expected}.npz"
        assert main(["embed", str(tiny_dir), video, "--workers", "0", "--precision", "auto", "--out", str(auto)]) == 0
        assert main(["embed", str(tiny_dir), video, "--workers", "0", "--precision", expected, "--out", str(named)]) == 0
        assert json.loads(auto.with_suffix(".json").read_text())["precision"] == expected
        assert read_embeddings(auto)["meta"]["precision"] == expected
        np.testing.assert_array_equal(read_embeddings(auto)["video_vt"], read_embeddings(named)["video_vt"])
