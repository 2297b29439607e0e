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
from typing import Any

from vatt.commands.embed import (Bar, add_fps_argument, add_media_arguments, add_run_arguments, load_model,
                                 media_error, parse_where, table, write_json)


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
    from vatt.data.errors import MediaError

    try:
        return args._run(args)
    except MediaError as e:  # a file that cannot be used: one line naming it and the reason
        raise media_error(e, hint="") from None


def _read_index(npz_path) -> list[dict[str, str]]:
    import csv
    from pathlib import Path

    index = Path(npz_path).with_suffix(".csv")
    if not index.is_file():
        raise FileNotFoundError(f"{index}: the index written beside {npz_path} is missing (labels come from it)")
    with open(index, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _embeddings_from_model(args, modalities) -> tuple[dict[str, Any], list]:
    """Embed the data named on the command line; returns (arrays as `embedding_arrays` gives them, entries)."""
    from pathlib import Path

    from vatt.data.manifest import MediaEntry, list_media
    from vatt.embed import embed_files, embedding_arrays

    if not (args.model and getattr(args, "data", None) or args.model and getattr(args, "manifest", None)):
        raise ValueError("give a model folder and data (or --embeddings FILE.npz)")
    data = getattr(args, "data", None) or args.manifest
    model = load_model(args.model, args.device, args.vocab)
    if Path(data).is_dir():
        from collections import Counter

        from vatt.data.manifest import format_left_out
        root = Path(data)
        left_out: Counter[str] = Counter()
        entries = [MediaEntry(e.path, fields={"label": Path(e.path).relative_to(root).parts[0]})
                   for e in list_media([root], left_out=left_out) if len(Path(e.path).relative_to(root).parts) > 1]
        if left_out:
            print(f"left out {sum(left_out.values())} file(s) of {root}: {format_left_out(left_out)}")
        if not entries:
            raise ValueError(f"{root}: no media files in class sub-folders")
    else:
        entries = list_media([data], path_column=args.path_column, caption_column=args.caption_column,
                             root=args.root, where=parse_where(args.where))
    bar = Bar("embedding", len(entries))
    try:
        files = embed_files(model, [e.path for e in entries], entries=entries, modalities=modalities,
                            num_windows=args.windows, fps=args.fps, batch_size=args.batch_size,
                            precision=args.precision, num_workers=args.workers, progress=bar)
    finally:
        bar.close()
    return embedding_arrays(files, None, meta={"model": str(args.model)}), files.entries


def run_features(args: argparse.Namespace) -> int:
    import numpy as np
    from pathlib import Path

    from vatt.eval.visualize import PROJECTIONS, plot_features_2d

    methods = tuple(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    if not methods or any(m not in PROJECTIONS for m in methods):
        raise ValueError(f"--methods: choose from {', '.join(PROJECTIONS)}; got {args.methods!r}")
    if args.embeddings:
        from vatt.embed import read_embeddings
        arrays = read_embeddings(args.embeddings)
        index = _read_index(args.embeddings)
        w = int(arrays["meta"].get("num_windows", 1))
        labels_per_row = [r.get(args.label_column) for r in index]
        if any(v is None for v in labels_per_row):
            raise ValueError(f"{args.embeddings}: its index has no column {args.label_column!r}; "
                             f"columns are {list(index[0]) if index else []}")
        labels = labels_per_row[::w]
        source = str(args.embeddings)
    else:
        mods = None if args.modality == "auto" else (args.modality,)
        arrays, entries = _embeddings_from_model(args, mods)
        w = args.windows
        missing = [e.path for e in entries if args.label_column not in e.fields]
        if missing:
            raise ValueError(f"no {args.label_column!r} for {missing[0]} (name the column with --label-column)")
        labels = [e.fields[args.label_column] for e in entries]
        source = str(args.data)
    n = len(labels)
    modality = args.modality
    if modality == "auto":
        modality = "video" if "video_features" in arrays and arrays["has_video"].any() else "audio"
    key = f"{modality}_{args.space}"
    if key not in arrays:
        raise ValueError(f"no {args.space} of {modality} in the embeddings (they hold "
                         f"{', '.join(k for k in arrays if k.endswith(('features', '_va', '_vt')))})")
    x = arrays[key].reshape(n, w, -1).mean(axis=1)
    keep = np.isfinite(x).all(axis=1)
    x, labels = x[keep], [lab for lab, k in zip(labels, keep) if k]
    if len(labels) < 3:
        raise ValueError(f"only {len(labels)} clip(s) have {modality} embeddings; need at least 3")
    out = Path(args.out)
    written, rows = [], []
    label_arr = np.array(labels, dtype=str)
    for method in methods:
        path = out / f"{modality}_{args.space}_{method}.png"
        title = f"{ {'tsne': 't-SNE', 'pca': 'PCA'}[method]} of {modality} {args.space} ({len(labels)} clips, " \
                f"{len(set(labels))} classes)"
        plot_features_2d(x, label_arr, path, method=method, title=title, seed=args.seed)
        written.append(str(path))
        rows.append([method, len(labels), len(set(labels)), x.shape[1], str(path)])
    record = {"command": "visualize features", "source": source, "modality": modality, "space": args.space,
              "windows_averaged": w, "num_points": len(labels), "num_classes": len(set(labels)),
              "dropped_without_modality": int((~keep).sum()), "methods": list(methods), "files": written}
    path = write_json(out / "visualize.json", record)
    print(table(["method", "points", "classes", "dim", "file"], rows, numeric_from=1))
    print(f"wrote {path}")
    return 0


def run_similarity(args: argparse.Namespace) -> int:
    import numpy as np
    from pathlib import Path

    from vatt.eval.retrieval import clip_similarity
    from vatt.eval.visualize import plot_similarity

    if args.embeddings:
        from vatt.embed import read_embeddings
        arrays = read_embeddings(args.embeddings)
        source = str(args.embeddings)
    else:
        from vatt.data.manifest import read_manifest_entries
        from vatt.embed import embed_files, embed_text, embedding_arrays
        if not (args.model and args.manifest):
            raise ValueError("give a model folder and a manifest (or --embeddings FILE.npz)")
        model = load_model(args.model, args.device, args.vocab)
        entries = read_manifest_entries(args.manifest, path_column=args.path_column,
                                        caption_column=args.caption_column, root=args.root,
                                        where=parse_where(args.where))
        if args.max_clips:
            entries = entries[:args.max_clips]
        mods = ("video",) if args.pair == "text-video" else ("video", "audio")
        bar = Bar("embedding", len(entries))
        try:
            files = embed_files(model, [e.path for e in entries], entries=entries, modalities=mods,
                                num_windows=args.windows, fps=args.fps, batch_size=args.batch_size,
                                precision=args.precision, num_workers=args.workers, progress=bar)
        finally:
            bar.close()
        text, clip_of = None, []
        if args.pair == "text-video":
            captions = [e.captions[0] for e in files.entries if e.captions]
            clip_of = [i for i, e in enumerate(files.entries) if e.captions]
            if not captions:
                raise ValueError(f"{args.manifest}: no captions (name the column with --caption-column)")
            text = embed_text(model, captions, precision=args.precision)
        arrays = embedding_arrays(files, text, text_clip=clip_of or None)
        source = str(args.manifest)
    w = int(arrays["meta"].get("num_windows", 1))
    n = int(arrays["clip"].max()) + 1
    if args.max_clips:
        n = min(n, args.max_clips)
    if args.pair == "text-video":
        if "text_vt" not in arrays or "video_vt" not in arrays:
            raise ValueError("text-video needs caption and video embeddings in the video-text space")
        videos = arrays["video_vt"][: n * w].reshape(n, w, -1)
        keep = (arrays["text_clip"] >= 0) & (arrays["text_clip"] < n)
        # first caption of each clip, in clip order, so the ground truth is (nearly) the diagonal
        first = {}
        for i in np.flatnonzero(keep):
            first.setdefault(int(arrays["text_clip"][i]), i)
        rows = [first[c] for c in sorted(first)]
        queries, targets = arrays["text_vt"][rows], np.array(sorted(first))
        labels = ("captions", "clips (video)")
        query_names = [str(arrays["text"][r]) for r in rows]
    else:
        if "audio_va" not in arrays:
            raise ValueError("audio-video needs audio embeddings")
        has = arrays["has_audio"][: n * w].reshape(n, w)[:, 0] & arrays["has_video"][: n * w].reshape(n, w)[:, 0]
        clips = np.flatnonzero(has)
        if len(clips) < 2:
            raise ValueError("audio-video needs at least two clips with video and audio")
        videos = arrays["video_va"][: n * w].reshape(n, w, -1)[clips]
        queries = arrays["audio_va"][: n * w].reshape(n, w, -1)[clips]
        targets = np.arange(len(clips))
        labels = ("audio", "clips (video)")
        query_names = [Path(str(arrays["path"][c * w])).name for c in clips]
    sim = clip_similarity(queries, videos, args.mode)
    out = Path(args.out)
    path = out / f"similarity_{args.pair}_{args.mode}.png"
    item_names = [Path(str(arrays["path"][c * w])).name for c in
                  (range(n) if args.pair == "text-video" else clips)]
    plot_similarity(sim, path, title=f"{args.pair} similarity ({args.mode}, {w} window(s))", query_label=labels[0],
                    item_label=labels[1], targets=targets, query_names=query_names, item_names=item_names)
    diag_rank = (sim > sim[np.arange(len(targets)), targets][:, None]).sum(1) + 1
    record = {"command": "visualize similarity", "source": source, "pair": args.pair, "mode": args.mode,
              "windows": w, "num_queries": int(sim.shape[0]), "num_items": int(sim.shape[1]), "file": str(path),
              "R@1": float(np.mean(diag_rank == 1))}
    json_path = write_json(out / "visualize.json", record)
    print(table(["picture", "queries", "items", "R@1 %", "file"],
                [[f"{args.pair} ({args.mode})", sim.shape[0], sim.shape[1], f"{100 * record['R@1']:.1f}", str(path)]]))
    print(f"wrote {json_path}")
    return 0
