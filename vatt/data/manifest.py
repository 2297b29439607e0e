"""Manifests and lists of media files: the one reader, the one row filter, and folder scans.

A manifest is a table of media files, one row per file or clip: CSV (header row), TSV (`.tsv`) or JSON
Lines (`.jsonl`, `.ndjson`, `.json`: one object per line). `read_records` reads any of them; two views
of a row sit on top of it:

- `read_manifest` -> `ManifestRow`: the pre-training convention (`PretrainDataset`, `vatt shard`,
  `vatt vocab`): `video` path, optional `start` / `end` / `duration_s` seconds, `caption` or `captions`;
  structural problems are errors naming the file and line.
- `read_manifest_entries` / `list_media` -> `MediaEntry`: the convention of the commands that take media
  files (`vatt embed`, `eval`, `visualize`, `index`): the path column is found among `PATH_COLUMNS`
  unless named, the captions among `CAPTION_COLUMNS`; `list_media` also takes files and folders.

`row_matches` is the one row filter ("where"): every command and dataset selects rows with it.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".ogv", ".3gp",
                    ".gif")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS  # what a clip embedding takes (`list_media`)

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")
MANIFEST_SUFFIXES = (".csv", ".tsv", *JSON_LINES_SUFFIXES)
PATH_COLUMNS = ("video", "path", "filename", "file", "audio", "filepath")
CAPTION_COLUMNS = ("captions", "caption", "text")


# --------------------------------------------------------------------------------------------------
# Reading and selecting rows
# --------------------------------------------------------------------------------------------------

@dataclass
class Records:
    """The rows of a manifest file as read: column names and (line, record) pairs."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, Any]]]  # line in the file (for messages), the row's values by column


def is_manifest(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES


def read_records(path: str | os.PathLike, *, delimiter: str | None = None, skip_initial_space: bool = False,
                 errors: str = "strict") -> Records:
    """The rows of a CSV/TSV or JSON Lines file (chosen by its suffix).

    CSV cells are strings (None where a row is short); JSON values keep their types. `delimiter`
    overrides the CSV one (tab for `.tsv`, else comma); `skip_initial_space` ignores spaces after it.
    `errors="surrogateescape"` reads bytes that are not UTF-8 as lone surrogates instead of failing.
    A line that is not a JSON object raises ValueError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    rows: list[tuple[int, dict[str, Any]]] = []
    with open(path, encoding="utf-8-sig", errors=errors, newline="") as f:
        if path.suffix.lower() in JSON_LINES_SUFFIXES:
            for n, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
                rows.append((n, record))
            columns = list(dict.fromkeys(k for _, r in rows for k in r))
        else:
            if delimiter is None:
                delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            reader = csv.DictReader(f, delimiter=delimiter, skipinitialspace=skip_initial_space)
            columns = list(reader.fieldnames or [])
            rows = [(reader.line_num, r) for r in reader]
    return Records(path, columns, rows)


def read_column(path: str | os.PathLike, column: str) -> list[str]:
    """The values of one column of a manifest, as stripped text ("" where empty)."""
    records = read_records(path)
    if column not in records.columns:
        raise ValueError(f"{path}: no column {column!r}; columns are {records.columns}")
    return ["" if r.get(column) is None else str(r[column]).strip() for _, r in records.rows]


def row_matches(fields: Mapping[str, Any], where: Mapping[str, Any] | None = None,
                where_not: Mapping[str, Any] | None = None) -> bool:
    """True if every `where` column has one of its values and no `where_not` column has one of its
    values (a value or a list of values, compared as strings: {"fold": [1, 2]} matches "2")."""
    def values(v: Any) -> set[str]:
        return {str(x) for x in v} if isinstance(v, (list, tuple, set, frozenset)) else {str(v)}

    for key, allowed in (where or {}).items():
        if str(fields.get(key)) not in values(allowed):
            return False
    for key, banned in (where_not or {}).items():
        if str(fields.get(key)) in values(banned):
            return False
    return True


def pick_column(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, where: str,
                required: bool) -> str | None:
    """`wanted` (which must be a column), else the first of `candidates` that is one; None or an error if none."""
    if wanted:
        if wanted not in columns:
            raise ValueError(f"{where}: no column {wanted!r} for the {what}; columns are {list(columns)}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    if required:
        raise ValueError(f"{where}: no {what} column (looked for {', '.join(candidates)}; name it with the "
                         f"path-column option); columns are {list(columns)}")
    return None


def parse_seconds(value: Any, name: str, where: str) -> float | None:
    """A time column's value in seconds: None if blank, else a finite number >= 0 (ValueError naming `where`)."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: column '{name}' must be a number of seconds, got {value!r}") from None
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"{where}: column '{name}' must be a finite time >= 0, got {value!r}")
    return out


# --------------------------------------------------------------------------------------------------
# Pre-training manifests
# --------------------------------------------------------------------------------------------------

@dataclass
class ManifestRow:
    """One clip of a pre-training manifest."""

    video: str  # absolute path (a relative manifest path is taken from the manifest's folder)
    start_s: float | None = None
    end_s: float | None = None
    duration_s: float | None = None
    captions: list[Any] | None = None  # None: the row has no text (AudioSet style); entries unchecked
    fields: dict[str, Any] = field(default_factory=dict)  # the other columns (labels, split, ...)
    line: int = 0  # line in the manifest, for messages


PRETRAIN_COLUMNS = {"video", "start", "end", "duration", "duration_s", "caption", "captions"}


def _manifest_row(record: Mapping[str, Any], base: Path, where: str, line: int, from_csv: bool) -> ManifestRow:
    video = record.get("video")
    if not isinstance(video, str) or not video.strip():
        raise ValueError(f"{where}: no 'video' path")
    path = Path(video.strip())
    path = path if path.is_absolute() else base / path
    captions: list[Any] | None
    if "captions" in record and record["captions"] not in (None, ""):
        raw = record["captions"]
        if from_csv:
            # In CSV, `captions` holds a JSON list of strings.
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: column 'captions' must hold a JSON list of strings ({e})") from None
        if not isinstance(raw, list):
            raise ValueError(f"{where}: 'captions' must be a list of strings, got {type(raw).__name__}")
        captions = raw or None
    elif "caption" in record and record["caption"] is not None:
        raw = record["caption"]
        # CSV cannot tell "no caption" from an empty one: a blank cell means the row has no text.
        captions = None if from_csv and isinstance(raw, str) and raw.strip() == "" else [raw]
    else:
        captions = None
    duration = record.get("duration_s", record.get("duration"))
    return ManifestRow(
        video=os.fspath(path),
        start_s=parse_seconds(record.get("start"), "start", where),
        end_s=parse_seconds(record.get("end"), "end", where),
        duration_s=parse_seconds(duration, "duration_s", where),
        captions=captions,
        fields={k: v for k, v in record.items() if k not in PRETRAIN_COLUMNS},
        line=line,
    )


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Rows of a pre-training manifest: CSV/TSV (header row) or JSON Lines (`.jsonl` / `.ndjson` / `.json`).

    Columns: `video` (path, relative to the manifest's folder or absolute), optional `start` / `end`
    (seconds: the clip is sampled inside), optional `duration_s`, and `caption` (one string) or
    `captions` (a list; in CSV a JSON list). A row without captions (missing, null, a blank CSV
    cell) has no text. Other columns are kept in `fields`. Bytes that are not UTF-8 do not stop the
    reading: the caption that holds them is rejected when its sample is loaded.
    Structural problems (no `video` column, unparsable line, bad times) raise ValueError naming
    the file and line.
    """
    records = read_records(path, errors="surrogateescape")
    from_csv = records.path.suffix.lower() not in JSON_LINES_SUFFIXES
    if from_csv and "video" not in records.columns:
        raise ValueError(f"{records.path}: a manifest needs a 'video' column; columns are {records.columns}")
    return [_manifest_row(record, records.path.parent, f"{records.path}:{n}", n, from_csv)
            for n, record in records.rows]


# --------------------------------------------------------------------------------------------------
# Media inputs of the commands: files, folders and manifests
# --------------------------------------------------------------------------------------------------

@dataclass
class MediaEntry:
    """A media file and what a manifest says about it."""

    path: str
    captions: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)  # the manifest's other columns (label, split, ...)


def read_manifest_entries(manifest: str | os.PathLike, *, path_column: str | None = None,
                          caption_column: str | None = None, root: str | os.PathLike | None = None,
                          where: Mapping[str, Any] | None = None) -> list[MediaEntry]:
    """Rows of a CSV/TSV or JSON Lines manifest as `MediaEntry`s.

    The path column is `path_column`, else the first of video, path, filename, file, audio, filepath.
    Captions: `caption_column`, else `captions` (a list; in CSV a JSON list), `caption` or `text`; a blank
    cell is no caption. Relative paths are taken from `root` (default: the manifest's folder).
    `where={"split": "test"}` keeps rows whose column has one of the values (`row_matches`).
    """
    records = read_records(manifest)
    manifest, columns = records.path, records.columns
    base = Path(root) if root is not None else manifest.parent
    pcol = pick_column(columns, path_column, PATH_COLUMNS, "file path", str(manifest), required=True)
    ccol = pick_column(columns, caption_column, CAPTION_COLUMNS, "caption", str(manifest), required=False)
    for col in where or {}:
        if col not in columns:
            raise ValueError(f"{manifest}: no column {col!r} to select rows by; columns are {columns}")
    entries = []
    for n, record in records.rows:
        if not row_matches(record, where):
            continue
        raw = record.get(pcol)
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"{manifest}:{n}: empty {pcol!r}")
        p = Path(raw.strip())
        captions = _entry_captions(record.get(ccol) if ccol else None)
        entries.append(MediaEntry(
            path=os.fspath(p if p.is_absolute() else base / p), captions=captions,
            fields={k: "" if v is None else (v if isinstance(v, str) else json.dumps(v))
                    for k, v in record.items() if k not in (pcol, ccol)}))
    if not entries:
        raise ValueError(f"{manifest}: no rows" + (f" match {dict(where)}" if where else ""))
    return entries


def _entry_captions(value: Any) -> list[str]:
    # Lenient, unlike `read_manifest`: a cell that looks like a JSON list but is not one is a caption.
    if value is None:
        return []
    if isinstance(value, list):
        return [str(c) for c in value]
    if not isinstance(value, str):
        return [str(value)]
    text = value.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return [value]
        if isinstance(parsed, list):
            return [str(c) for c in parsed]
    return [value]


def scan_reason(path: Path, wanted: str) -> str:
    """Why a folder scan for `wanted` files ("video", "audio", "image", or "video or audio") leaves `path` out."""
    ext = path.suffix.lower() or "(no extension)"
    for kind, exts in (("video", VIDEO_EXTENSIONS), ("audio", AUDIO_EXTENSIONS), ("image", IMAGE_EXTENSIONS)):
        if ext in exts:
            return f"{kind} file, this scan takes {wanted} files"
    return f"{ext} is not a media format vatt reads"


def format_left_out(left_out: Mapping[str, int]) -> str:
    """"3 .txt is not a media format vatt reads; 1 image file, ..." from reason -> count, most first."""
    return "; ".join(f"{n} {why}" for why, n in sorted(left_out.items(), key=lambda kv: (-kv[1], kv[0])))


def list_media(inputs: Iterable[str | os.PathLike], *, path_column: str | None = None,
               caption_column: str | None = None, root: str | os.PathLike | None = None,
               where: Mapping[str, Any] | None = None, left_out: Counter | None = None) -> list[MediaEntry]:
    """Media files named by `inputs`: files, folders (searched recursively for video/audio extensions --
    GIF included -- sorted) and manifests (CSV/TSV/JSON Lines, see `read_manifest_entries`). Order is kept.

    Files of a folder that are not video or audio are counted in `left_out` by reason (images: the clip
    embedding takes video and audio; other extensions: not media)."""
    entries: list[MediaEntry] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found, skipped = [], Counter()
            for f in sorted(f for f in p.rglob("*") if f.is_file()):
                if f.suffix.lower() in MEDIA_EXTENSIONS:
                    found.append(f)
                else:
                    skipped[scan_reason(f, "video or audio")] += 1
            if left_out is not None:
                left_out.update(skipped)
            if not found:
                raise ValueError(f"{p}: no video or audio files (extensions {', '.join(MEDIA_EXTENSIONS)})"
                                 + (f"; left out: {format_left_out(skipped)}" if skipped else ""))
            entries += [MediaEntry(os.fspath(f)) for f in found]
        elif is_manifest(p):
            entries += read_manifest_entries(p, path_column=path_column, caption_column=caption_column, root=root,
                                             where=where)
        else:
            entries.append(MediaEntry(os.fspath(p)))  # a missing file is reported when it is decoded
    return entries
