"""`manifest.json`: the files of a model folder or checkpoint with their sizes and SHA-256.

Written last (after every file it lists is on disk) and atomically, so a folder whose manifest matches
is complete and undamaged. Readers verify it before trusting the folder: a file that is missing,
shorter or longer than listed (a partial copy, a full disk) or whose digest differs (bit rot, an
edit) makes the folder `DamagedFolder`, naming the file. A folder without a manifest (made by an
older version, or by hand) is read with a one-line notice. Files not listed (a README a person
added) are ignored.

    {"format": "vatt-manifest", "version": 1,
     "files": {"model.safetensors": {"size": 3739712, "sha256": "9f2c..."}, "config.json": {...}}}
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable

from vatt.atomic import write_json

MANIFEST = "manifest.json"
FORMAT = "vatt-manifest"

log = logging.getLogger("vatt.checkpoint")


class DamagedFolder(ValueError):
    """A model folder or checkpoint whose files do not match its manifest (or cannot be read at all)."""

    def __init__(self, folder: str | os.PathLike, file: str, reason: str):
        self.folder, self.file, self.reason = Path(folder), file, reason
        super().__init__(f"{self.folder / file}: {reason}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | os.PathLike, names: Iterable[str] | None = None) -> Path:
    """List `names` (default: every visible file of `folder`) with sizes and digests, atomically."""
    folder = Path(folder)
    if names is None:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name != MANIFEST)
    files = {}
    for name in names:
        path = folder / name
        files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return write_json(folder / MANIFEST, {"format": FORMAT, "version": 1, "files": files}, what="manifest")


def read_manifest(folder: str | os.PathLike) -> dict[str, dict] | None:
    """The listed files ({name: {"size", "sha256"}}), None if the folder has no manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if data.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError("not a vatt manifest")
        for name, entry in files.items():
            if "/" in name or "\\" in name or name.startswith("."):  # names in this folder only
                raise ValueError(f"bad file name {name!r}")
            int(entry["size"]), str(entry["sha256"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DamagedFolder(folder, MANIFEST, f"unreadable manifest ({e})") from None
    return files


def verify_folder(folder: str | os.PathLike, required: Iterable[str] = ()) -> bool:
    """Check every listed file's size and SHA-256; True if verified, False if there is no manifest.

    Raises `DamagedFolder` naming the first file that is missing, of another size or another digest,
    or a `required` file the manifest does not list (it would not be covered).
    """
    folder = Path(folder)
    files = read_manifest(folder)
    if files is None:
        log.warning("%s has no %s (written by an older version or by hand): its files cannot be checked",
                    folder, MANIFEST)
        return False
    for name in required:
        if name not in files:
            raise DamagedFolder(folder, name, f"not listed in {MANIFEST} (the folder was changed after it was written)")
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise DamagedFolder(folder, name, f"missing (incomplete folder: {MANIFEST} lists it)")
        size = path.stat().st_size
        if size != int(entry["size"]):
            what = "truncated or incomplete copy?" if size < int(entry["size"]) else "extra bytes"
            raise DamagedFolder(folder, name, f"damaged: {size} bytes, {MANIFEST} says {entry['size']} ({what})")
        if sha256_file(path) != entry["sha256"]:
            raise DamagedFolder(folder, name, f"damaged: its SHA-256 differs from {MANIFEST} (corrupted on disk "
                                              "or in a copy)")
    return True
