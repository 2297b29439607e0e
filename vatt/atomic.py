"""Atomic writes: a file or folder appears under its final name complete, or not at all.

Every writer of the project goes through here (checkpoints, model folders, embeddings, results, logs'
rewrites): the data goes to a hidden temporary name beside the target, is flushed and fsync'ed, then
renamed over the target (`os.replace`, atomic on POSIX). A failure on the way — a full disk (ENOSPC),
no permission, a quota — removes the temporary and raises `WriteFailed`, naming the file and the
reason; whatever was under the final name before is untouched.

    with atomic_write("emb.npz") as f:           # binary file object
        np.savez(f, **arrays)
    write_text("results.json", text)
    with atomic_folder(run / "checkpoints" / "step_00001000") as tmp:
        ...                                       # fill tmp/; renamed into place when the block ends
    with atomic_group() as group:                 # several files that must change together
        with group.open("emb.csv", "w", newline="") as f: ...   # all renamed only if every write worked
"""
from __future__ import annotations

import contextlib
import errno as errno_codes
import io
import json
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Iterator


class WriteFailed(OSError):
    """A file could not be written (disk full, no permission, ...); nothing partial was left under its name."""

    def __init__(self, path: str | os.PathLike, cause: BaseException, what: str = ""):
        self.path = Path(path)
        self.cause = cause
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        code = getattr(cause, "errno", None)
        name = errno_codes.errorcode.get(code, "") if code else ""
        message = f"could not write {what + ' ' if what else ''}{self.path}: {reason}{f' ({name})' if name else ''}"
        super().__init__(code, message)

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):  # picklable (DataLoader workers, multiprocessing)
        return (WriteFailed, (self.path, self.cause))


def _temp_path(path: Path, folder: bool = False) -> Path:
    # Hidden, beside the target (same file system, so the rename is atomic), unique per writer. Created
    # with the default permissions (not tempfile's 0600 / 0700): the final file or folder keeps them.
    for _ in range(100):
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            if folder:
                os.mkdir(tmp)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: no free temporary name")


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _RecordingFile(io.RawIOBase):
    """A binary file that remembers the OSError of a failed write.

    Some writers (torch.save's zip writer) turn the OSError of a full disk into an opaque RuntimeError;
    keeping it lets `atomic_write` report the real reason.
    """

    def __init__(self, f: BinaryIO):
        self._f = f
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return _write(self._f, data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = e
            raise

    def seekable(self) -> bool:
        return self._f.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


def _write(f: BinaryIO, data) -> int:
    """The one place bytes are written (tests inject a full disk here)."""
    return f.write(data)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, what: str = "") -> Iterator[BinaryIO]:
    """A binary file object whose content replaces `path` when the block ends without an error.

    Raises `WriteFailed` (naming `path`, and `what` it is, e.g. "checkpoint") if a write fails; the
    temporary file is removed and `path` keeps its previous content.
    """
    with _staged_file(Path(path), what, None) as f:
        yield f


@contextlib.contextmanager
def _staged_file(path: Path, what: str, deferred: list[tuple[Path, Path]] | None) -> Iterator[BinaryIO]:
    # With `deferred`, the finished temporary is left for the caller to rename (atomic_group).
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path)
    except OSError as e:
        raise WriteFailed(path, e, what) from e
    recorder = None
    try:
        with open(tmp, "wb") as raw:
            recorder = _RecordingFile(raw)
            yield recorder  # type: ignore[misc]
            raw.flush()
            os.fsync(raw.fileno())
        if deferred is None:
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        else:
            deferred.append((path, tmp))
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause = e if isinstance(e, OSError) else (recorder.error if recorder is not None else None)
        if cause is not None and not isinstance(e, WriteFailed):
            raise WriteFailed(path, cause, what) from e
        raise


def write_bytes(path: str | os.PathLike, data: bytes, what: str = "") -> Path:
    with atomic_write(path, what) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, what: str = "") -> Path:
    return write_bytes(path, text.encode("utf-8"), what)


def write_json(path: str | os.PathLike, obj: Any, what: str = "", *, strict: bool = False, **dumps: Any) -> Path:
    """`obj` as indented JSON. `strict=True` writes what every JSON reader takes: NaN as null and
    infinities as the strings "inf" / "-inf" (Python's json writes the non-standard NaN and Infinity)."""
    return write_text(path, json.dumps(_finite(obj) if strict else obj, **{"indent": 2, **dumps}) + "\n", what)


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory; the rename still holds
        fsync(folder)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, what: str = "") -> Iterator[Path]:
    """A temporary folder to fill; when the block succeeds its files are fsync'ed and it is renamed to
    `path` (an existing folder there is replaced). On failure it is removed and `path` is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path, folder=True)
    except OSError as e:
        raise WriteFailed(path, e, what) from e
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                fsync(f)
        if path.exists():  # replacing: move the old one out of the way first (rename cannot replace a folder)
            old = _temp_path(path, folder=True)  # a crash here leaves a `.tmp-*` that checkpoint pruning removes
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, WriteFailed):
            raise WriteFailed(Path(getattr(e, "filename", None) or path), e, what) from e
        raise


class _Group:
    def __init__(self, what: str):
        self.what = what
        self.done: list[tuple[Path, Path]] = []

    def open(self, path: str | os.PathLike, mode: str = "wb", encoding: str = "utf-8", newline: str | None = None):
        """Like `atomic_write` (and text modes "w"), but the file is renamed into place with the others."""
        return _group_file(self, Path(path), mode, encoding, newline)


@contextlib.contextmanager
def _group_file(group: _Group, path: Path, mode: str, encoding: str, newline: str | None):
    with _staged_file(path, group.what, group.done) as f:
        if "b" in mode:
            yield f
        else:
            text = io.TextIOWrapper(io.BufferedWriter(f), encoding=encoding, newline=newline)
            yield text
            text.flush()
            text.detach()


@contextlib.contextmanager
def atomic_group(what: str = "") -> Iterator[_Group]:
    """Files that change together: `group.open(path)` per file; when the block succeeds every file is
    renamed into place, else none is and all temporaries are removed."""
    group = _Group(what)
    try:
        yield group
    except BaseException:
        for _, tmp in group.done:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    for path, tmp in group.done:
        os.replace(tmp, path)
    for folder in {path.parent for path, _ in group.done}:
        _fsync_dir(folder)
