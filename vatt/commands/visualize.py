"""Pictures: t-SNE / PCA maps of features coloured by label, and retrieval similarity heat maps (PNG).

    vatt visualize features MODEL_DIR clips.csv --label-column label --out pics/     # video features
    vatt visualize features MODEL_DIR fsdd/labels.csv --root fsdd/recordings --path-column filename \\
        --label-column digit --modality audio --out pics/
    vatt visualize features MODEL_DIR class_folders/ --out pics/      # label = the sub-folder
    vatt visualize features --embeddings emb.npz --label-column label --out pics/   # from `vatt embed`
    vatt visualize similarity MODEL_DIR clips.csv --out pics/         # first 20 captions x clips, labelled
    vatt visualize similarity --embeddings emb.npz --out pics/

`--space` picks what is drawn: the backbone's pooled features (default) or the common-space embeddings
(va, vt). Several windows per clip are averaged before projecting. Writes the PNGs and visualize.json.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from vatt.atomic import write_json
from vatt.checkpoint.io import load_model
from vatt.commands.arguments import (add_fps_argument, add_media_arguments, add_run_arguments, parse_where,
                                     resolve_precision, run_subcommand, table)
from vatt.data.manifest import format_left_out, list_media, read_manifest_entries
from vatt.embed import embed_entries
from vatt.embedding_files import embedding_arrays, read_embedding_rows, read_embeddings
from vatt.engine.progress import ConsoleProgress
from vatt.eval.visualize import (PROJECTIONS, class_folder_entries, feature_points, plot_feature_maps,
                                 plot_similarity_map, similarity_map)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    sub = parser.add_subparsers(dest="picture", metavar="PICTURE", required=True)

    f = sub.add_parser("features", help="t-SNE / PCA of features coloured by label",
                       description="2-D maps of features, one colour per class.")
    f.add_argument("model", nargs="?", help="a vatt model folder (any: tx_fac, ut_fac or a classifier)")
    f.add_argument("data", nargs="?", help="a manifest with a label column, or a folder with one sub-folder per class")
    f.add_argument("--embeddings", help="an embeddings .npz written by `vatt embed` (labels from its .csv index)")
    f.add_argument("--label-column", default="label", help="manifest column of the labels (default label)")
    f.add_argument("--modality", default="auto", choices=["auto", "video", "audio"],
                   help="which embeddings (auto: video if there are any, else audio)")
    f.add_argument("--space", default="features", choices=["features", "va", "vt"],
                   help="backbone pooled features (default) or a common space")
    f.add_argument("--methods", default="tsne,pca", help="tsne, pca or both (default)")
    f.add_argument("--windows", type=int, default=1, help="windows per clip, averaged (default 1: the middle one)")
    add_fps_argument(f)
    f.add_argument("--seed", type=int, default=0, help="t-SNE seed (default 0)")
    add_media_arguments(f)
    f.add_argument("--out", default="visualize", help="output folder (default ./visualize)")
    add_run_arguments(f)
    f.set_defaults(_run=run_features)

    s = sub.add_parser("similarity", help="heat map of caption-clip (or audio-clip) similarities",
                       description="The retrieval similarity matrix as a heat map, ground truth marked.")
    s.add_argument("model", nargs="?", help="a vatt model folder (tx_fac / ut_fac)")
    s.add_argument("manifest", nargs="?", help="clips with captions (CSV / JSON Lines)")
    s.add_argument("--embeddings", help="an embeddings .npz written by `vatt embed` (with captions)")
    s.add_argument("--pair", default="text-video", choices=["text-video", "audio-video"],
                   help="which similarities (default text-video)")
    s.add_argument("--mode", default="embd", choices=["embd", "cosine"], help="window averaging mode (default embd)")
    s.add_argument("--windows", type=int, default=4, help="windows per clip (default 4, official)")
    add_fps_argument(s)
    s.add_argument("--max-clips", type=int, default=20,
                   help="use the first N clips (default 20: rows and columns labelled with captions and file names; "
                        "0 = all, labels left out above 40)")
    add_media_arguments(s)
    s.add_argument("--out", default="visualize", help="output folder (default ./visualize)")
    add_run_arguments(s)
    s.set_defaults(_run=run_similarity)


def run(args: argparse.Namespace) -> int:
    resolve_precision(args)
    return run_subcommand(args)


def _embed(args: argparse.Namespace, entries: list, modalities, captions: str = "none") -> tuple[dict[str, Any], list]:
    """Embed the entries with the model named on the command line; (arrays as `embedding_arrays` gives
    them, the entries kept)."""
    model = load_model(args.model, args.device, args.vocab)
    with ConsoleProgress("embedding", len(entries), "file", leave=False) as bar:
        result = embed_entries(model, entries, captions=captions, text_batch_size=256, progress=bar,
                               modalities=modalities, num_windows=args.windows, fps=args.fps,
                               batch_size=args.batch_size, precision=args.precision, num_workers=args.workers)
    return embedding_arrays(result.files, result.text, text_clip=result.text_clip or None,
                            meta={"model": str(args.model)}), result.files.entries


def run_features(args: argparse.Namespace) -> int:
    methods = tuple(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    if not methods or any(m not in PROJECTIONS for m in methods):
        raise ValueError(f"--methods: choose from {', '.join(PROJECTIONS)}; got {args.methods!r}")
    if args.embeddings:
        arrays = read_embeddings(args.embeddings)
        index = read_embedding_rows(args.embeddings)
        w = int(arrays["meta"].get("num_windows", 1))
        labels_per_row = [r.get(args.label_column) for r in index]
        if any(v is None for v in labels_per_row):
            raise ValueError(f"{args.embeddings}: its index has no column {args.label_column!r}; "
                             f"columns are {list(index[0]) if index else []}")
        labels = labels_per_row[::w]
        source = str(args.embeddings)
    else:
        if not (args.model and args.data):
            raise ValueError("give a model folder and data (or --embeddings FILE.npz)")
        if Path(args.data).is_dir():
            left_out: Counter[str] = Counter()
            entries = class_folder_entries(args.data, left_out)
            if left_out:
                print(f"left out {sum(left_out.values())} file(s) of {args.data}: {format_left_out(left_out)}")
        else:
            entries = list_media([args.data], path_column=args.path_column, caption_column=args.caption_column,
                                 root=args.root, where=parse_where(args.where))
        arrays, entries = _embed(args, entries, None if args.modality == "auto" else (args.modality,))
        w = args.windows
        missing = [e.path for e in entries if args.label_column not in e.fields]
        if missing:
            raise ValueError(f"no {args.label_column!r} for {missing[0]} (name the column with --label-column)")
        labels = [e.fields[args.label_column] for e in entries]
        source = str(args.data)
    points = feature_points(arrays, labels, modality=args.modality, space=args.space)
    written = plot_feature_maps(points, args.out, methods, args.seed)
    n, classes = len(points.labels), len(set(points.labels))
    record = {"command": "visualize features", "source": source, "modality": points.modality, "space": args.space,
              "windows_averaged": w, "num_points": n, "num_classes": classes,
              "dropped_without_modality": points.dropped, "methods": list(methods), "files": [str(p) for p in written]}
    path = write_json(Path(args.out) / "visualize.json", record, what="results", strict=True)
    print(table(["method", "points", "classes", "dim", "file"],
                [[m, n, classes, points.x.shape[1], str(p)] for m, p in zip(methods, written)], numeric_from=1))
    print(f"wrote {path}")
    return 0


def run_similarity(args: argparse.Namespace) -> int:
    if args.embeddings:
        arrays = read_embeddings(args.embeddings)
        source = str(args.embeddings)
    else:
        if not (args.model and args.manifest):
            raise ValueError("give a model folder and a manifest (or --embeddings FILE.npz)")
        entries = read_manifest_entries(args.manifest, path_column=args.path_column,
                                        caption_column=args.caption_column, root=args.root,
                                        where=parse_where(args.where))
        if args.max_clips:
            entries = entries[:args.max_clips]
        text_video = args.pair == "text-video"
        arrays, entries = _embed(args, entries, ("video",) if text_video else ("video", "audio"),
                                 captions="first" if text_video else "none")
        if args.pair == "text-video" and "text_vt" not in arrays:
            raise ValueError(f"{args.manifest}: no captions (name the column with --caption-column)")
        source = str(args.manifest)
    smap = similarity_map(arrays, args.pair, args.mode, args.max_clips)
    path = plot_similarity_map(smap, Path(args.out) / f"similarity_{args.pair}_{args.mode}.png",
                               title=f"{args.pair} similarity ({args.mode}, {smap.num_windows} window(s))")
    sim = smap.similarity
    record = {"command": "visualize similarity", "source": source, "pair": args.pair, "mode": args.mode,
              "windows": smap.num_windows, "num_queries": int(sim.shape[0]), "num_items": int(sim.shape[1]),
              "file": str(path), "R@1": smap.recall_at_1}
    json_path = write_json(Path(args.out) / "visualize.json", record, what="results", strict=True)
    print(table(["picture", "queries", "items", "R@1 %", "file"],
                [[f"{args.pair} ({args.mode})", sim.shape[0], sim.shape[1], f"{100 * record['R@1']:.1f}", str(path)]]))
    print(f"wrote {json_path}")
    return 0
