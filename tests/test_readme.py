"""The README cannot drift: its Python snippets run as written, and its runnable command blocks run.

Python: every ```python block, in order, in one namespace (as a reader pastes them into one session), in
a folder holding small stand-ins for the files the snippets name (a tiny model folder as
"converted/bbs", its word table, a 16 s clip as "talk.mp4", ...).
Commands: every ```bash block right after a `<!-- runnable ... -->` comment, line by line through the
`vatt` entry point, in one shared folder (so a later block can use what an earlier one wrote, as a reader
does), in README order. The comment may append arguments to commands whose sizes are for GPUs or for
minutes of CPU: `with "vatt pretrain": --set optim.total_steps=3; with "vatt demo": --steps 3`.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_RUNNABLE = re.compile(r"<!--\s*runnable\b(.*?)-->\s*\n```bash\n(.*?)^```", re.S | re.M)
_APPEND = re.compile(r'with\s+"([^"]+)"\s*:\s*([^;]*)')


def python_blocks(text: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang == "python"]


def runnable_blocks(text: str) -> list[tuple[dict[str, list[str]], list[str]]]:
    """[(command prefix -> extra arguments, command lines)] of the blocks marked runnable."""
    blocks = []
    for comment, body in _RUNNABLE.findall(text):
        extra = {prefix.strip(): shlex.split(args) for prefix, args in _APPEND.findall(comment)}
        lines, pending = [], ""
        for raw in body.splitlines():
            line = pending + raw
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            pending = ""
            if line.strip():
                lines.append(line)
        blocks.append((extra, lines))
    return blocks


def command_argv(line: str, extra: dict[str, list[str]]) -> list[str]:
    """A README command line as `vatt` arguments, with the block's extra arguments for its prefix appended."""
    words = shlex.split(line, comments=True)
    assert words and words[0] == "vatt", f"a runnable block may only hold vatt commands: {line!r}"
    argv = words[1:]
    for prefix, args in extra.items():
        if " ".join(words).startswith(prefix):
            argv += args
    return argv


def test_readme_parsing_finds_the_blocks():
    text = README.read_text()
    assert len(python_blocks(text)) >= 4
    blocks = runnable_blocks(text)
    assert len(blocks) >= 4
    commands = {command_argv(line, extra)[0] for extra, lines in blocks for line in lines}
    assert {"sample-data", "pretrain", "demo", "embed", "eval", "visualize", "finetune", "vocab", "shard"} <= commands


def _write_wav(path: Path, seconds: float = 2.0, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples.tobytes())


@pytest.fixture(scope="module")
def snippet_dir(tmp_path_factory):
    """Small stand-ins for the files the README's Python snippets name."""
    import vatt
    from safetensors.torch import save_file
    from vatt.checkpoint.word2vec import KEY, word_embedding_parameter
    from vatt.data.sample_data import SampleDataConfig, write_sample_dataset
    from vatt.data.text import WordTokenizer
    from vatt.index.build import build_index

    d = tmp_path_factory.mktemp("readme_python")
    long = write_sample_dataset(d / "long", num_clips=2, seed=0, config=SampleDataConfig(duration_s=16.0),
                                num_workers=0).parent
    clips = sorted((long / "videos").glob("*.mp4"))
    shutil.copy(clips[0], d / "talk.mp4")  # decode_clip("talk.mp4", start_s=12.0) needs 15.2 s
    shutil.copy(clips[0], d / "a.mp4")
    shutil.copy(clips[1], d / "b.mp4")
    _write_wav(d / "a.wav")
    torch.manual_seed(0)
    model = vatt.build_model("tx_fac_tiny")
    tokenizer = WordTokenizer.build(["a dog catches a frisbee", "a red circle moves"], max_size=64)
    vatt.save(model, d / "converted" / "bbs", tokenizer=tokenizer)
    build_index(model.eval(), [d / "a.mp4", d / "b.mp4"], d / "my_index", model_path=str(d / "converted" / "bbs"))
    (d / "misc").mkdir()
    table = torch.randn_like(word_embedding_parameter(model))
    save_file({KEY: table.contiguous()}, str(d / "misc" / "word2vec.safetensors"))
    return d


def test_readme_python_snippets_run_as_written(snippet_dir):
    namespace: dict = {"__name__": "readme"}
    cwd = os.getcwd()
    os.chdir(snippet_dir)
    try:
        for i, code in enumerate(python_blocks(README.read_text())):
            try:
                exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
            except Exception as e:  # noqa: BLE001 - name the block that broke
                pytest.fail(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{code}")
    finally:
        os.chdir(cwd)


def test_readme_runnable_commands_run(tmp_path, capsys):
    from vatt.cli import main

    (tmp_path / "configs").symlink_to(ROOT / "configs")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for extra, lines in runnable_blocks(README.read_text()):
            for line in lines:
                argv = command_argv(line, extra)
                code = main(argv)
                out = capsys.readouterr()
                assert code == 0, f"`{line}` (run as vatt {shlex.join(argv)}) exited {code}:\n{out.out}\n{out.err}"
    finally:
        os.chdir(cwd)
    # What the blocks promise: a vocabulary beside the shards and in every model folder the runs wrote,
    # and readable pictures of the demo's clips.
    assert (tmp_path / "data" / "shards" / "vocab.txt").is_file()
    for run in ("runs/pretrain_tiny_sample", "runs/demo/run"):
        checkpoints = sorted((tmp_path / run / "checkpoints").glob("step_*"))
        assert checkpoints and all((c / "vocab.txt").is_file() for c in checkpoints), run
    assert (tmp_path / "runs/demo/pics/similarity_text-video_embd.png").is_file()
