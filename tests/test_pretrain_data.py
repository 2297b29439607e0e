"""vatt.pretrain.data: pre-training from a manifest and from shards (real media)."""
import pytest

import vatt
from vatt.data.sample_data import write_sample_dataset
from vatt.data.shards import write_shards
from vatt.pretrain.config import load_config
from vatt.pretrain.task import pretrain
from vatt.engine.progress import Callback, read_metrics


@pytest.fixture(scope="module")
def sample_manifest(tmp_path_factory):
    return write_sample_dataset(tmp_path_factory.mktemp("sample"), num_clips=30, seed=1)


def _config(out, train, *overrides):
    return load_config(None, [
        f"data.train={train}", f"run.output_dir={out}", "data.batch_size=4", "data.num_workers=0",
        "data.max_context_sentences=0", "data.color_prob=0", "optim.warmup_steps=1", "optim.lr=1e-3",
        "log.every_steps=1", "log.tensorboard=false", "run.precision=fp32", *overrides])


def test_pretrain_from_a_manifest_with_heldout_check(tmp_path, sample_manifest):
    out = tmp_path / "run"
    result = pretrain(_config(out, sample_manifest, "optim.total_steps=2", "data.train_where={split: train}",
                              f"data.heldout={sample_manifest}", "data.heldout_where={split: test}",
                              "eval.every_steps=2"))
    assert result.step == 2 and all(r["loss"] > 0 for r in read_metrics(out))
    assert read_metrics(out, "eval")[0]["text->video/num_items"] == 6  # the 6 test clips of 30
    assert (out / "vocab.txt").exists()
    model = vatt.load(result.last_checkpoint)  # the checkpoint carries the vocabulary too
    assert model.tokenizer is not None and model.tokenizer.vocab_size == len((out / "vocab.txt").read_text().split())


def test_pretrain_from_shards_resumes_where_it_stopped(tmp_path, sample_manifest):
    shards = tmp_path / "shards"
    write_shards(sample_manifest, shards, max_count=8)
    vocab = tmp_path / "vocab.txt"
    from vatt.data.manifest import read_manifest
    from vatt.data.text import WordTokenizer
    WordTokenizer.build(c for r in read_manifest(sample_manifest) for c in r.captions).save(vocab)

    settings = [f"data.vocab={vocab}", "optim.total_steps=10", "checkpoint.every_steps=4"]
    straight = tmp_path / "straight"
    pretrain(_config(straight, shards, *settings))
    stopped = tmp_path / "stopped"

    class Crash(Callback):
        def on_step(self, step, metrics):
            if step == 5:  # after the checkpoint of step 4; 30 clips / batch 4 = 7 steps an epoch
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(_config(stopped, shards, *settings), callbacks=[Crash()])
    pretrain(_config(stopped, shards, *settings), resume=True)
    a, b = read_metrics(straight), read_metrics(stopped)
    assert [r["epoch"] for r in a][-1] == 1  # crossed into the second epoch
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)
