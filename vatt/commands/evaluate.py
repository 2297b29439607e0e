"""Evaluation protocols of the paper: zero-shot retrieval and linear probes on frozen features.

    vatt eval retrieval MODEL_DIR clips.csv --where split=test            # official: text->video, audio->video
    vatt eval retrieval --embeddings emb.npz                             # from `vatt embed --windows 4` output
    vatt eval linear-probe MODEL_DIR fsdd/labels.csv --root fsdd/recordings --modality audio \\
        --path-column filename --label-column digit --split-column split
    vatt eval linear-probe MODEL_DIR esc50.csv --modality audio --fold-column fold     # 5 folds, leave one out
    vatt eval linear-probe MODEL_DIR UCF-101/ --ucf101 ucfTrainTestlist/              # 3 official splits

Retrieval (spec section 8): by default the official zero-shot protocol -- every clip embedded through W
linearly spaced windows (4), one caption per clip (its first) embedded once, text->video (and audio->video
where clips have audio). Scores in both official modes: `embd` (mean of the window embeddings) and `cosine`
(mean of the window cosine similarities); R@1/5/10, median and mean rank. `--captions all` and the
`video->text` direction are options, printed in the protocol line.
Linear probe: backbone pooled features, one middle window per training clip and the mean softmax over
W test windows; the official classifier (Dense(128) -> Dropout(0.9) -> Dense(C), Adam, 1000 epochs) and
logistic regression; top-1/top-5 per split and averaged over splits.
Both print a table and write JSON (--out) with the protocol beside every number.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from vatt.atomic import write_json
from vatt.checkpoint.io import load_model
from vatt.commands.arguments import (add_fps_argument, add_media_arguments, add_run_arguments, parse_where,
                                     resolve_precision, run_subcommand, table)
from vatt.configs import input_spec
from vatt.data.manifest import read_manifest_entries
from vatt.embed import embed_entries
from vatt.embedding_files import embedding_arrays, read_embeddings, write_embeddings
from vatt.engine.progress import ConsoleProgress
from vatt.eval.linear_probe import CLASSIFIERS, evaluate_classifiers, probe_features, probe_splits
from vatt.eval.retrieval import DIRECTIONS, MODES, first_caption_per_clip, format_table, retrieval_from_arrays
from vatt.inference import model_modalities

# The official zero-shot evaluation (`_run_zero_shot_retrieval`) scores text->video, and audio->video when the
# data have audio; video->text is an extra. (`vatt.eval.retrieval.OFFICIAL_DIRECTIONS`; the parser is built
# without importing the library.)
OFFICIAL_DIRECTIONS = ("text->video", "audio->video")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)

    r = sub.add_parser("retrieval", help="zero-shot text->video, video->text and audio->video retrieval",
                       description="Zero-shot retrieval with the official multi-window protocol.")
    r.add_argument("model", nargs="?", help="a vatt model folder (tx_fac / ut_fac)")
    r.add_argument("manifest", nargs="?", help="clips with captions: CSV / JSON Lines with a path and a caption column")
    r.add_argument("--embeddings",
                   help="score an embeddings .npz written by `vatt embed` instead of a model + manifest")
    add_media_arguments(r)
    r.add_argument("--windows", type=int, default=4, help="video windows per clip (default 4, official)")
    add_fps_argument(r)
    r.add_argument("--captions", default="first", choices=["all", "first"],
                   help="captions per clip used as queries: the first (default, official: one text per video) or all")
    r.add_argument("--directions", default=",".join(OFFICIAL_DIRECTIONS),
                   help="comma-separated subset of text->video, video->text, audio->video "
                        "(default: all that the data has)")
    r.add_argument("--modes", default="embd,cosine", help="embd, cosine or both (default)")
    r.add_argument("--split-name", help="dataset/split name recorded in the protocol (default: from the manifest)")
    r.add_argument("--save-embeddings", help="also write the clip and caption embeddings to this .npz")
    r.add_argument("--out", default="retrieval.json", help="JSON results (default retrieval.json)")
    add_run_arguments(r)
    r.add_argument("--skip-bad", action="store_true", help="leave out clips that cannot be decoded (reported)")
    r.set_defaults(_run=run_retrieval)

    p = sub.add_parser("linear-probe", help="official MLP probe and logistic regression on frozen features",
                       description="Linear probes on frozen backbone features over official splits or folds.")
    p.add_argument("model", help="a vatt model folder (tx_fac, ut_fac or a classifier)")
    p.add_argument("data", help="a CSV of files and labels, or (with --ucf101 / --hmdb51) the folder of the videos")
    p.add_argument("--modality", default="auto", choices=["auto", "video", "audio"],
                   help="which backbone's features (auto: the model's own for a classifier, else video)")
    p.add_argument("--path-column", help="CSV column of file paths (default: the first of video, path, filename, "
                                         "file, audio, filepath)")
    p.add_argument("--label-column", default="label", help="CSV column of class labels (default label)")
    p.add_argument("--root", help="folder relative paths start from (default: the CSV's folder)")
    p.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE", help="keep CSV rows (repeatable)")
    split = p.add_mutually_exclusive_group(required=True)
    split.add_argument("--split-column", help="column saying train or test (one split; see --train-value/--test-value)")
    split.add_argument("--fold-column", help="column of fold numbers: each fold is the test set once (ESC-50: 5 folds)")
    split.add_argument("--ucf101", metavar="SPLIT_DIR",
                       help="UCF101 trainlist0k.txt / testlist0k.txt / classInd.txt folder")
    split.add_argument("--hmdb51", metavar="SPLIT_DIR", help="HMDB51 *_test_split<k>.txt folder")
    p.add_argument("--train-value", default="train", help="--split-column value of training rows (default train)")
    p.add_argument("--test-value", default="test", help="--split-column value of test rows (default test)")
    p.add_argument("--splits", help="comma-separated subset of splits/folds (default: all; UCF101/HMDB51: 1,2,3)")
    p.add_argument("--classifier", default="official,logistic", help="official, logistic or both (default)")
    p.add_argument("--epochs", type=int, default=1000, help="official probe epochs (default 1000, official)")
    p.add_argument("--windows", type=int, default=4, help="test windows per clip (default 4, official)")
    add_fps_argument(p)
    p.add_argument("--dataset-name", help="name recorded in the protocol (default: from the data path)")
    p.add_argument("--out", default="linear_probe.json", help="JSON results (default linear_probe.json)")
    add_run_arguments(p)
    p.set_defaults(_run=run_linear_probe)


def run(args: argparse.Namespace) -> int:
    resolve_precision(args)
    return run_subcommand(args)


# --------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------

def _split_list(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ValueError(f"{what}: choose from {', '.join(allowed)}; got {text!r}")
    return items


def run_retrieval(args: argparse.Namespace) -> int:
    directions = _split_list(args.directions, DIRECTIONS, "--directions")
    modes = _split_list(args.modes, MODES, "--modes")
    explicit = args.directions != ",".join(OFFICIAL_DIRECTIONS)
    t0 = time.perf_counter()
    protocol: dict[str, Any] = {"directions": list(directions), "modes": list(modes), "ties": "pessimistic",
                                "ranks": "1-based", "recall": "fraction of queries", "captions": args.captions,
                                "official": explicit is False and args.captions == "first"}
    if args.embeddings:
        if args.model or args.manifest:
            raise ValueError("give either --embeddings or a model and a manifest, not both")
        arrays = read_embeddings(args.embeddings)
        if args.captions == "first":
            arrays = first_caption_per_clip(arrays)
        split = args.split_name or Path(args.embeddings).stem
        protocol.update(source=str(args.embeddings), **{k: arrays["meta"].get(k) for k in
                                                          ("model", "num_windows", "window_mode", "spec", "precision",
                                                           "skipped_files")})
    else:
        if not (args.model and args.manifest):
            raise ValueError("give a model folder and a manifest of clips with captions (or --embeddings FILE.npz)")
        if args.windows < 1:
            raise ValueError(f"--windows must be >= 1, got {args.windows}")
        where = parse_where(args.where)
        model = load_model(args.model, args.device, args.vocab)
        entries = read_manifest_entries(args.manifest, path_column=args.path_column,
                                        caption_column=args.caption_column, root=args.root, where=where)
        want_audio = "audio->video" in directions
        want_text = bool({"text->video", "video->text"} & set(directions))
        with ConsoleProgress("embedding clips", len(entries), "file", leave=False) as bar:
            result = embed_entries(model, entries, captions=args.captions if want_text else "none",
                                   text_batch_size=max(args.batch_size, 64), progress=bar,
                                   modalities=("video", "audio") if want_audio else ("video",),
                                   num_windows=args.windows, fps=args.fps, batch_size=args.batch_size,
                                   precision=args.precision, num_workers=args.workers, skip_bad=args.skip_bad)
        files, text, clip_of = result.files, result.text, result.text_clip or None
        meta = {"model": str(args.model), "precision": args.precision, "fps": files.spec.fps}
        arrays = embedding_arrays(files, text, text_clip=clip_of, meta=meta)
        if args.save_embeddings:
            write_embeddings(args.save_embeddings, files, text, text_clip=clip_of, meta=meta)
        split = args.split_name or (f"{Path(args.manifest).parent.name}/{Path(args.manifest).stem}" + (
            "/" + ",".join(f"{k}={'|'.join(v)}" for k, v in where.items()) if where else ""))
        protocol.update(source=str(args.manifest), model=str(args.model), where=where, num_windows=args.windows,
                        window_mode="center" if args.windows == 1 else "linspace", spec=files.spec.__dict__,
                        precision=args.precision, captions=args.captions, num_clips=len(files),
                        skipped_files=[str(e) for e in files.errors])
    results, notes = retrieval_from_arrays(arrays, directions=directions, modes=modes, split=split,
                                           strict=explicit)
    if not results:
        raise ValueError("no retrieval direction could be scored: " +
                         "; ".join(f"{d}: {w}" for d, w in notes["skipped_directions"].items()))
    protocol.update(notes)
    protocol["seconds"] = round(time.perf_counter() - t0, 3)
    record = {"command": "eval retrieval", "split": split, "protocol": protocol,
              "results": [r.as_dict() for r in results]}
    path = write_json(args.out, record, what="results", strict=True)

    spec = protocol.get("spec") or {}
    print(f"zero-shot retrieval on {split}: {protocol.get('num_windows')} window(s) per clip "
          f"({protocol.get('window_mode')})"
          + (f", video {spec.get('num_frames')} frames at {spec.get('fps'):g} fps, {spec.get('size')}px centre crop"
             if spec.get("num_frames") else "")
          + (f", audio {spec.get('audio_samples')} samples at {spec.get('sample_rate')} Hz"
             if spec.get("audio_samples") and "num_audio_clips" in notes else "")
          + f", {protocol.get('precision')}")
    print(("official zero-shot protocol" if protocol["official"] else "not the official protocol")
          + f": directions {', '.join(directions)}; "
          + ("first caption of each clip" if args.captions == "first" else "every caption of each clip"))
    print(format_table(results))
    for d, why in notes["skipped_directions"].items():
        print(f"{d}: not scored ({why})")
    if protocol.get("skipped_files"):
        print(f"{len(protocol['skipped_files'])} clip(s) could not be decoded and were left out")
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------------------

def run_linear_probe(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    classifiers = _split_list(args.classifier, CLASSIFIERS, "--classifier")
    if args.windows < 1 or args.epochs < 1:
        raise ValueError("--windows and --epochs must be >= 1")
    model = load_model(args.model, args.device)
    can = [m for m in model_modalities(model) if m != "text"]
    modality = args.modality if args.modality != "auto" else ("video" if "video" in can else can[0])
    if modality not in can:
        raise ValueError(f"--modality {modality}: this model embeds {', '.join(can)}")
    splits, classes = probe_splits(
        args.data, split_column=args.split_column, fold_column=args.fold_column, ucf101=args.ucf101,
        hmdb51=args.hmdb51, splits=[s.strip() for s in args.splits.split(",")] if args.splits else None,
        where=parse_where(args.where), path_column=args.path_column, label_column=args.label_column, root=args.root,
        train_value=args.train_value, test_value=args.test_value)
    feature_splits = probe_features(
        model, splits, classes, modality, num_windows=args.windows, fps=args.fps, batch_size=args.batch_size,
        workers=args.workers, precision=args.precision,
        progress=lambda what, total: ConsoleProgress(what, total, "clip", leave=False))
    feature_seconds = time.perf_counter() - t0

    data_path = Path(args.data)
    name = args.dataset_name or (data_path.name if data_path.is_dir() else f"{data_path.parent.name}/{data_path.stem}")
    results = evaluate_classifiers(feature_splits, classifiers, epochs=args.epochs, num_classes=len(classes),
                                   split_names=[s[0] for s in splits], dataset=name)

    spec = input_spec(model, args.fps)
    protocol = {
        "dataset": name, "data": str(args.data), "model": str(args.model), "modality": modality,
        "features": f"{modality} backbone features_pooled (AGG token after the final LayerNorm), frozen",
        "train_windows": "1 (middle)", "test_windows": args.windows, "test_aggregation": "mean softmax over windows",
        "input": ({"num_frames": spec.num_frames, "fps": spec.fps, "size": spec.size, "transform": "resize smallest "
                   "side + centre crop"} if modality == "video" else
                  {"audio_samples": spec.audio_samples, "sample_rate": spec.sample_rate, "pad": "loop"}),
        "precision": args.precision, "splits": [s[0] for s in splits], "num_classes": len(classes),
        "feature_seconds": round(feature_seconds, 3),
    }
    record = {"command": "eval linear-probe", "protocol": protocol,
              "results": {c: {**r.as_dict(), "seconds": round(sec, 3)} for c, (r, sec) in results.items()}}
    path = write_json(args.out, record, what="results", strict=True)

    split_names = [s[0] for s in splits]
    header = ["classifier", "top1 %", "top5 %"] + [f"{s} top1 %" for s in split_names] + ["train top1 %", "seconds"]
    rows = []
    for c, (r, sec) in results.items():
        rows.append([c, f"{100 * r.mean['top1']:.1f}", f"{100 * r.mean['top5']:.1f}"]
                    + [f"{100 * s['top1']:.1f}" for s in r.per_split]
                    + [f"{100 * np.mean([s['train_top1'] for s in r.per_split]):.1f}", f"{sec:.1f}"])
    print(f"linear probe on {name}: {modality} features, {len(classes)} classes, "
          f"{len(splits)} split(s); train = middle window, test = mean softmax over {args.windows} windows")
    print(table(header, rows))
    for c, (r, _) in results.items():
        print(f"{c}: {r.protocol.describe()}")
    print(f"wrote {path}")
    return 0
