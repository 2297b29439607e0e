"""A local search page over an index: `make_app(index)` is a FastAPI app (run it with uvicorn).

Routes:
    GET  /                         the page (vatt/index/page.html: plain HTML, CSS and JavaScript)
    GET  /api/search?q=&k=&in=     moments for a sentence, as JSON
    POST /api/search/audio         moments for an uploaded sound file (multipart field "file"; k, in as query)
    GET  /thumb/{row}              a window's JPEG thumbnail
    GET  /media/{file}             a file of the index by its number, with HTTP range requests (206)

Only files of the index are served, and only by their number in the index (there is no route that takes a
path, so no path can leave the index and nothing is listed). Bad queries and uploads get a 400 with a
one-line reason in `{"error": ...}`.
"""
from __future__ import annotations

import mimetypes
import os
import re
import tempfile
from pathlib import Path

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from vatt.data.errors import MediaError
from vatt.index.search import Index

PAGE = Path(__file__).with_name("page.html")
MAX_UPLOAD_BYTES = 50 * 2**20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 256 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _parse_k_in(k: str, in_: str) -> tuple[int, str]:
    try:
        kk = int(k)
    except ValueError:
        raise ValueError(f"k must be a whole number, got {k!r}") from None
    if not 1 <= kk <= 200:
        raise ValueError(f"k must be between 1 and 200, got {kk}")
    if in_ not in ("video", "audio"):
        raise ValueError(f"in must be 'video' or 'audio', got {in_!r}")
    return kk, in_


def make_app(index: Index) -> FastAPI:
    app = FastAPI(title="vatt search", docs_url=None, redoc_url=None, openapi_url=None)
    files = sorted(set(index.paths.tolist()))
    file_ids = {p: i for i, p in enumerate(files)}
    thumbs = index.table["thumbnail"]

    def moments_json(moments) -> dict:
        out = []
        for m in moments:
            has_thumb = thumbs[m.row].is_valid
            out.append({**m.as_dict(), "name": os.path.basename(m.path), "file": file_ids[m.path],
                        "media": f"/media/{file_ids[m.path]}", "thumbnail": f"/thumb/{m.row}" if has_thumb else None})
        return {"moments": out}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        c = index.manifest["counts"]
        return (PAGE.read_text(encoding="utf-8").replace("{{FILES}}", str(c.get("files", 0)))
                .replace("{{WINDOWS}}", str(c.get("windows", 0))))

    @app.get("/api/search")
    def search_text(request: Request):
        q = request.query_params.get("q", "")
        try:
            kk, where = _parse_k_in(request.query_params.get("k", "12"), request.query_params.get("in", "video"))
            if not q.strip():
                raise ValueError("the text query is empty")
            return moments_json(index.search(q, k=kk, in_=where))
        except (ValueError, MediaError) as e:
            return _error(400, str(e))

    @app.post("/api/search/audio")
    async def search_audio(request: Request, file: UploadFile = File(...)):
        try:
            kk, where = _parse_k_in(request.query_params.get("k", "12"), request.query_params.get("in", "video"))
        except ValueError as e:
            return _error(400, str(e))
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if not data:
            return _error(400, "the uploaded sound file is empty")
        if len(data) > MAX_UPLOAD_BYTES:
            return _error(400, f"the uploaded file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
        suffix = Path(file.filename or "").suffix[:10]
        fd, tmp = tempfile.mkstemp(prefix="vatt-query-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return moments_json(index.search(audio=tmp, k=kk, in_=where))
        except MediaError as e:
            return _error(400, f"{file.filename or 'the upload'} is not a sound file we can read ({e.reason}: {e.detail})")
        except ValueError as e:
            return _error(400, str(e))
        finally:
            os.unlink(tmp)

    @app.get("/thumb/{row}")
    def thumbnail(row: int):
        if not 0 <= row < len(thumbs) or not thumbs[row].is_valid:
            return _error(404, "no such thumbnail")
        return Response(thumbs[row].as_py(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/media/{file}")
    def media(file: int, request: Request):
        if not 0 <= file < len(files):
            return _error(404, "no such file in the index")
        path = files[file]
        if not os.path.isfile(path):
            return _error(404, "the file is in the index but no longer on disk")
        size = os.path.getsize(path)
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        headers = {"Accept-Ranges": "bytes"}
        rng = request.headers.get("range")
        start, end = 0, size - 1
        status = 200
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # the last N bytes
                start, end = max(0, size - int(m.group(2))), size - 1
            if start > end or start >= size:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)

        def body():
            with open(path, "rb") as f:
                f.seek(start)
                left = end - start + 1
                while left > 0:
                    chunk = f.read(min(_CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    yield chunk

        return StreamingResponse(body(), status_code=status, media_type=kind, headers=headers)

    return app
