"""Search quality on `vatt demo`'s held-out clips: the pre-trained model against its random initialisation.

Indexes the 128 held-out clips of a demo folder with the demo's last checkpoint and with a randomly
initialised model of the same config, and reports mean precision@5 of finding the right class
(`vatt.index.quality`): one sentence per class in words the captions never use, in the pictures and in
the sounds (through the FAC va->vt projection), and the sound of one training clip per class in the
pictures. Chance: 1/16.

    vatt demo --out runs/demo && python bench/search_quality.py runs/demo
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import vatt  # noqa: E402
from vatt.index.quality import index_heldout, search_quality  # noqa: E402


def demo_tokenizer(demo_dir: Path, model):
    """The vocabulary `vatt demo` trained with, rebuilt the way it builds it (for checkpoints without vocab.txt)."""
    from vatt.data.manifest import read_manifest
    from vatt.data.text import WordTokenizer
    from vatt.demo import DemoConfig, paraphrases

    cfg = DemoConfig()
    rows = read_manifest(demo_dir / "data" / "manifest.csv")
    captions = paraphrases(rows, cfg.seed, cfg.captions_per_clip)
    train = [i for i, r in enumerate(rows) if r.fields["split"] == "train"]
    return WordTokenizer.build((c for i in train for c in captions[i]), max_size=model.config.text.vocab_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo_dir", type=Path)
    args = parser.parse_args()
    checkpoints = sorted((args.demo_dir / "run" / "checkpoints").glob("step_*"))
    pretrained = vatt.load(checkpoints[-1])
    if pretrained.tokenizer is None:
        pretrained.tokenizer = demo_tokenizer(args.demo_dir, pretrained)
    torch.manual_seed(0)
    random_init = vatt.build_model(pretrained.config).eval()
    manifest = args.demo_dir / "data" / "manifest.csv"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("pre-trained", pretrained), ("random init", random_init)):
            folder = Path(tmp) / name.replace(" ", "_")
            vatt.save(model, folder / "model", tokenizer=pretrained.tokenizer)
            results[name] = search_quality(index_heldout(folder / "model", manifest, folder / "index"), manifest)
    print(f"mean precision@5 of the right class over 16 queries, {checkpoints[-1].name} (chance 6.2 %)")
    for metric in results["pre-trained"]:
        print(f"{metric:20s}  pre-trained {100 * results['pre-trained'][metric]:5.1f} %   "
              f"random init {100 * results['random init'][metric]:5.1f} %")


if __name__ == "__main__":
    main()
