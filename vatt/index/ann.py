"""Approximate nearest neighbours for large indexes: FAISS inverted lists (IVF-Flat, inner product).

`vatt index --ann` builds one FAISS index per searchable column (video_va, video_vt, audio_va, audio_vt)
over the L2-normalised vectors, in the order `Index.open` sorts the rows (path, window), and stores it as
`ann/<column>.faiss`. Its recall@10 against exact search is measured at build time on queries drawn from
the index itself and written into the manifest (`"ann"`). Search then asks FAISS for the best
`candidates` windows and forms moments from those. Any later change of the index (a run of `vatt index`
without --ann that adds or drops files) removes the FAISS files, so they are never stale.

Coarse quantiser: `nlist` = sqrt(rows) lists (at most rows / 39, FAISS's minimum training points per
list), trained by k-means on up to 64 points per list; nlist / 16 lists are scanned per query (`nprobe`).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from vatt.atomic import atomic_folder
from vatt.index import store

ANN_DIR = "ann"
COLUMNS = ("video_va", "video_vt", "audio_va", "audio_vt")


def _faiss():
    try:
        import faiss  # optional dependency (the `search` extra); only --ann needs it
    except ImportError:
        raise ImportError("approximate search (--ann) needs faiss-cpu: pip install 'vatt[search]'") from None
    return faiss


def choose_nlist(rows: int) -> int:
    return max(1, min(int(math.sqrt(rows)), rows // 39))


def build_ivf(x: np.ndarray, nlist: int | None = None, nprobe: int | None = None, seed: int = 0):
    """An IVF-Flat inner-product FAISS index over normalised float32 rows `x`."""
    faiss = _faiss()
    n, d = x.shape
    nlist = nlist or choose_nlist(n)
    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(n, size=64 * nlist, replace=False)] if n > 64 * nlist else x
    ivf.cp.seed = seed
    ivf.train(np.ascontiguousarray(sample))
    ivf.add(np.ascontiguousarray(x))
    ivf.nprobe = nprobe or max(1, min(nlist, int(math.ceil(nlist / 16))))
    return ivf


def recall_at(ivf, x: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Fraction of the exact top-k (matrix product) that the FAISS index returns, over `queries`."""
    exact = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :k]
    _, approx = ivf.search(np.ascontiguousarray(queries), k)
    hits = sum(len(set(e.tolist()) & set(a.tolist())) for e, a in zip(exact, approx))
    return hits / exact.size


def remove_ann(index_dir: Path, manifest: dict) -> None:
    shutil.rmtree(Path(index_dir) / ANN_DIR, ignore_errors=True)
    manifest["ann"] = None


def build_ann(index_dir: Path, manifest: dict, num_queries: int = 200, seed: int = 0) -> dict:
    """Build the FAISS indexes of an index (rank 0, after the shards are committed); returns manifest["ann"]."""
    faiss = _faiss()
    index_dir = Path(index_dir)
    table = store.read_shards(index_dir, sorted(manifest["shards"]))
    if table is None:
        raise ValueError(f"{index_dir}: nothing to build an ANN index over (no windows)")
    table = table.sort_by([("path", "ascending"), ("window", "ascending")])
    info = {"kind": "faiss-ivf-flat", "rows": table.num_rows, "shards": sorted(manifest["shards"]), "columns": {}}
    rng = np.random.default_rng(seed)
    # Written whole or not at all (vatt.atomic); a killed build leaves a `.tmp-*` the next run removes.
    with atomic_folder(index_dir / ANN_DIR, what="ANN index") as tmp_dir:
        for column in COLUMNS:
            if column not in table.column_names:
                continue
            x, valid = store.vectors(table, column)
            if not valid.any():
                continue
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            x[~valid] = 0.0  # rows without this modality: a zero vector never scores above a real match
            ivf = build_ivf(x, seed=seed)
            queries = x[rng.choice(np.flatnonzero(valid), size=min(num_queries, int(valid.sum())), replace=False)]
            recall = recall_at(ivf, x, queries)
            faiss.write_index(ivf, str(tmp_dir / f"{column}.faiss"))
            info["columns"][column] = {"nlist": ivf.nlist, "nprobe": ivf.nprobe, "recall@10": round(recall, 4),
                                       "queries": len(queries)}
    manifest["ann"] = info
    store.write_manifest(index_dir, manifest)
    return info


def load_ann(index_dir: Path, manifest: dict) -> dict:
    """{column: FAISS index} when the manifest's ANN indexes match its shards (and faiss is installed), else {}:
    search is then exact."""
    info = manifest.get("ann")
    if not info or info.get("shards") != sorted(manifest["shards"]):
        return {}
    try:
        faiss = _faiss()
    except ImportError:
        return {}
    return {c: faiss.read_index(str(Path(index_dir) / ANN_DIR / f"{c}.faiss")) for c in info["columns"]}
