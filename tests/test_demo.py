"""vatt.demo: the whole demo on a handful of clips (its learning is checked by running `vatt demo`)."""
import json

from vatt.data.manifest import read_manifest
from vatt.demo import METRICS, DemoConfig, format_table, paraphrases, run_demo


def test_demo_runs_end_to_end_on_a_few_clips(tmp_path):
    lines = []
    result = run_demo(DemoConfig(out_dir=str(tmp_path), num_clips=40, steps=3, batch_size=8, workers=0),
                      report=lines.append)
    assert result.steps == 3 and result.num_train == 32 and result.num_heldout == 8
    saved = json.loads((tmp_path / "results.json").read_text())
    for model in ("pretrained", "random_init"):
        assert set(saved["metrics"][model]) == set(METRICS)
    assert saved["chance"]["text→video R@1"] == 1 / 8 and saved["chance"]["linear probe top-1"] == 1 / 16
    for name in ("tsne_pretrained", "tsne_random_init"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    table = format_table(result)
    assert "chance" in table and "text→video MedR" in table and "linear probe top-1" in table
    assert any("pre-training tx_fac_tiny for 3 steps" in line for line in lines)


def test_paraphrases_keep_the_attributes(tmp_path):
    from vatt.data.sample_data import write_sample_dataset
    rows = read_manifest(write_sample_dataset(tmp_path, num_clips=6, seed=3))
    captions = paraphrases(rows, seed=3, count=4)
    assert [c[0] for c in captions] == [r.captions[0] for r in rows]
    for row, caps in zip(rows, captions):
        assert len(set(caps)) > 1 and all(row.fields["colour"] in c for c in caps)
