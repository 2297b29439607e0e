"""Search an index (`vatt index`) by a sentence, a sound or a video clip; prints the best moments.

    vatt search my_index "a man flips a pancake"              # text -> the pictures (video-text space)
    vatt search my_index --audio bark.wav --in audio          # a sound -> the soundtracks (video-audio space)
    vatt search my_index --video clip.mp4@12.5 -k 5           # the window of clip.mp4 from 12.5 s -> the pictures
    vatt search my_index "rain" --in audio --json             # text -> sound through the FAC projection; JSON out

Adjacent or overlapping windows of one file that match merge into one moment (start-end, best score).
The model that embeds the query is the one the index was built with (its folder is in the manifest;
--model points elsewhere if it moved); another model is refused.
"""
from __future__ import annotations

import argparse
import json
import os

from vatt.commands.arguments import media_error, table
from vatt.data.errors import MediaError
from vatt.index import Index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("index", help="an index folder written by `vatt index`")
    parser.add_argument("text", nargs="?", help="a sentence to search for")
    parser.add_argument("--audio", metavar="FILE", help="search by the sound of a file (its middle window)")
    parser.add_argument("--video", metavar="FILE[@SECONDS]",
                        help="search by a video window (from SECONDS, else the middle one)")
    parser.add_argument("-k", type=int, default=10, help="moments to return (default 10)")
    parser.add_argument("--in", dest="in_", default="video", choices=["video", "audio"],
                        help="search the pictures (default) or the soundtracks")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--exact", action="store_true",
                        help="score every window even if the index has FAISS indexes (vatt index --ann)")
    parser.add_argument("--model", help="the model folder, if it is no longer where the index was built from")
    parser.add_argument("--vocab", help="word vocabulary for text queries, if the model folder has no vocab.txt")
    parser.add_argument("--device", default="cpu", help="torch device for the query (default cpu)")


def parse_video(value: str) -> tuple[str, float | None]:
    """"clip.mp4@12.5" -> ("clip.mp4", 12.5); a path without a valid @SECONDS suffix is taken whole."""
    path, sep, seconds = value.rpartition("@")
    if sep and not os.path.exists(value):
        try:
            start = float(seconds)
        except ValueError:
            raise ValueError(f"--video {value!r}: expected FILE or FILE@SECONDS") from None
        if not start >= 0:
            raise ValueError(f"--video {value!r}: SECONDS must be >= 0")
        return path, start
    return value, None


def _clock(s: float) -> str:
    m, sec = divmod(s, 60)
    return f"{int(m)}:{sec:04.1f}"


def run(args: argparse.Namespace) -> int:
    given = [g for g in (args.text, args.audio, args.video) if g is not None]
    if len(given) != 1:
        raise ValueError("give one query: a sentence, --audio FILE or --video FILE[@SECONDS]")
    if args.text is not None and not args.text.strip():
        raise ValueError("the text query is empty")
    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    video, start = parse_video(args.video) if args.video else (None, None)
    index = Index.open(args.index, model_path=args.model, device=args.device, vocab=args.vocab)
    try:
        moments = index.search(args.text, audio=args.audio, video=video, video_start_s=start, k=args.k, in_=args.in_,
                               exact=True if args.exact else None)
    except MediaError as e:
        raise media_error(e, "") from None
    if args.json:
        print(json.dumps({"query": {"text": args.text, "audio": args.audio, "video": args.video, "in": args.in_},
                          "moments": [m.as_dict() for m in moments]}, indent=1))
        return 0
    rows = [[i + 1, m.path, f"{_clock(m.start_s)}-{_clock(m.end_s)}", f"{m.score:.3f}", m.windows]
            for i, m in enumerate(moments)]
    print(table(["#", "file", "time", "score", "windows"], rows, numeric_from=2))
    return 0
