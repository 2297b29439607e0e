"""Search an index by a sentence, a sound or a video clip, and merge matching windows into moments.

    index = vatt.Index.open("my_index")                      # loads the model the index names
    index.search(text="a red ball going right", k=5)         # -> [Moment(path, start_s, end_s, score, ...)]
    index.search(audio="bark.wav", in_="audio")              # sounds like this, in the soundtracks
    index.search(video="clip.mp4", video_start_s=12.0)       # looks like this window of a clip

Which spaces meet (the FAC head's common spaces, spec section 5):

| query | in_="video" (the pictures) | in_="audio" (the soundtracks) |
|---|---|---|
| text  | text vt  · video vt | text vt · audio vt (audio va through the va->vt projection) |
| audio | audio va · video va | audio va · audio va |
| video | video va · video va | video va · audio va |

Scores are cosine similarities (L2-normalised vectors, one matrix product over all windows: exact).

Moments. Windows are scored one by one; a moment grows from the best window not yet used over the
neighbouring windows of the same file while their scores stay at least half way from the median score
of all windows up to the peak (`median + 0.5 * (peak - median)`, a "half maximum" width). Its time
range runs from the first window's start to the last window's end, its score is the peak's. Windows
that overlap by the stride therefore merge into one moment per matching stretch of a file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from vatt.checkpoint.io import load
from vatt.configs import input_spec
from vatt.data import decoding, transforms
from vatt.data.text import WordTokenizer
from vatt.embed import embed_audio, embed_text
from vatt.index import store
from vatt.index.ann import load_ann
from vatt.inference import forward_modality

SPACES = {("text", "video"): ("vt", "video_vt"), ("text", "audio"): ("vt", "audio_vt"),
          ("audio", "video"): ("va", "video_va"), ("audio", "audio"): ("va", "audio_va"),
          ("video", "video"): ("va", "video_va"), ("video", "audio"): ("va", "audio_va")}


@dataclass
class Moment:
    path: str
    start_s: float
    end_s: float
    score: float  # cosine similarity of the best window
    best_start_s: float  # the best window's start
    windows: int  # windows merged
    row: int  # the best window's row in the index (`Index.table`)

    def as_dict(self) -> dict:
        return {"path": self.path, "start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3),
                "score": round(self.score, 5), "best_start_s": round(self.best_start_s, 3),
                "windows": self.windows}


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def merge_moments(scores: np.ndarray, paths: np.ndarray, windows: np.ndarray, starts: np.ndarray,
                  ends: np.ndarray, k: int, valid: np.ndarray | None = None) -> list[Moment]:
    """Moments from per-window scores (rows sorted by path, then window); see the module doc."""
    valid = np.isfinite(scores) if valid is None else valid & np.isfinite(scores)
    if not valid.any():
        return []
    median = float(np.median(scores[valid]))
    used = ~valid
    order = np.argsort(-np.where(valid, scores, -np.inf), kind="stable")
    moments: list[Moment] = []
    n = len(scores)

    def joins(i: int, j: int, threshold: float) -> bool:
        return (0 <= j < n and not used[j] and paths[j] == paths[i] and abs(int(windows[j]) - int(windows[i])) == 1
                and scores[j] >= threshold)

    for seed in order:
        if len(moments) >= k or not valid[seed]:
            break
        if used[seed]:
            continue
        peak = float(scores[seed])
        threshold = median + 0.5 * (peak - median)
        lo = hi = int(seed)
        used[seed] = True
        while joins(lo, lo - 1, threshold):
            lo -= 1
            used[lo] = True
        while joins(hi, hi + 1, threshold):
            hi += 1
            used[hi] = True
        moments.append(Moment(path=str(paths[seed]), start_s=float(starts[lo]), end_s=float(ends[hi]), score=peak,
                              best_start_s=float(starts[seed]), windows=hi - lo + 1, row=int(seed)))
    return moments


class Index:
    """An index opened for search: every window's embeddings in memory, L2-normalised."""

    def __init__(self, index_dir: Path, manifest: dict, table, model: nn.Module | None, model_path: str | None):
        self.dir, self.manifest, self.table = index_dir, manifest, table
        self._model, self._model_path = model, model_path
        self.paths = np.asarray(table["path"].to_pylist(), dtype=object)
        self.windows = np.asarray(table["window"], dtype=np.int64)
        self.starts = np.asarray(table["start_s"], dtype=np.float64)
        video_end = np.asarray(table["end_s"], dtype=np.float64)
        has_video = np.asarray(table["has_video"], dtype=bool)
        audio_clip = manifest["protocol"].get("audio_clip_s") or 0.0
        # An audio window longer than the video one may run past the end of the file (its sound is looped
        # there); a moment ends at the file's end, taken as the last video window's end.
        file_end: dict[str, float] = {}
        for p, e in zip(self.paths, video_end):
            file_end[p] = max(file_end.get(p, 0.0), e)
        last = np.asarray([file_end[p] for p in self.paths], dtype=np.float64)
        audio_end = np.minimum(self.starts + audio_clip, last)
        self.ends = {"video": video_end, "audio": np.where(has_video, audio_end, video_end)}
        self._vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._ann: dict | None = None

    @classmethod
    def open(cls, index_dir: str | os.PathLike, model: nn.Module | None = None, model_path: str | None = None,
             device: str = "cpu", vocab: str | None = None) -> "Index":
        """Open an index. The model that embeds queries is `model`, else loaded from `model_path`, else from
        the folder the manifest names; it must be the model that built the index (same fingerprint).
        `vocab`: a word vocabulary file for a model folder without vocab.txt (text queries)."""
        index_dir = Path(index_dir)
        manifest = store.read_manifest(index_dir)
        if store.merge_journals(index_dir, manifest):
            raise ValueError(f"{index_dir}: an indexing run is in progress or was killed; "
                             f"run `vatt index` again to finish it")
        table = store.read_shards(index_dir, sorted(manifest["shards"]))
        if table is None:
            raise ValueError(f"{index_dir}: the index is empty (no file could be indexed)")
        table = table.sort_by([("path", "ascending"), ("window", "ascending")])
        idx = cls(index_dir, manifest, table, None, None)
        if model is not None:
            idx._check_model(model)
            idx._model = model
        else:
            idx._model_path = model_path or manifest["model"].get("path")
            idx._device = device
        idx._vocab = vocab
        return idx

    def __len__(self) -> int:
        return self.table.num_rows

    def _check_model(self, model: nn.Module) -> None:
        if store.model_fingerprint(model) != self.manifest["model"]["fingerprint"]:
            raise ValueError(f"{self.dir} was built by another model (fingerprint "
                             f"{self.manifest['model']['fingerprint'][:12]}, from {self.manifest['model'].get('path')}); "
                             f"search it with that model or index again")

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            path = self._model_path
            if not path or not Path(path).is_dir():
                raise FileNotFoundError(f"the model that built {self.dir} is not at {path}; pass its folder "
                                        f"(--model / model_path=)")
            model = load(path, map_location=getattr(self, "_device", "cpu"))
            self._check_model(model)
            if getattr(self, "_vocab", None):
                model.tokenizer = WordTokenizer.from_vocab_file(self._vocab)
            self._model = model.eval()
        return self._model

    def vectors(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised `[rows, D]` vectors of a column and the rows that have them."""
        if column not in self._vectors:
            x, valid = store.vectors(self.table, column)
            self._vectors[column] = (_normalise(x), valid)
        return self._vectors[column]

    # ----------------------------------------------------------------------------------------------
    # Queries
    # ----------------------------------------------------------------------------------------------

    def embed_query(self, *, text: str | None = None, audio=None, video=None,
                    video_start_s: float | None = None) -> tuple[str, np.ndarray]:
        """(query kind, embedding `[D]`) of a sentence, a sound file (its middle window)
        or a video (file, from `video_start_s` or its middle window)."""
        given = [name for name, v in (("text", text), ("audio", audio), ("video", video)) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one query: a text, a sound (audio=) or a video clip (video=)")
        model = self.model
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("the text query is empty")
            return "text", embed_text(model, [text]).vt[0].numpy()
        if audio is not None:
            return "audio", embed_audio(model, [os.fspath(audio)]).va[0].numpy()
        spec = input_spec(model, self.manifest["protocol"]["fps"])
        path = os.fspath(video)
        if video_start_s is None:
            info = decoding.probe(path)
            video_start_s = decoding.sample_start(info.duration_s or 0.0, spec.video_seconds, mode="center")[0]
        clip = decoding.decode_clip(path, float(video_start_s), spec.num_frames, spec.fps, decode_audio=False,
                                    audio_samples=0)
        x = transforms.eval_video_transform(clip.frames, spec.size)[None]
        return "video", forward_modality(model, "video", x)["va"][0].numpy()

    @property
    def ann(self) -> dict:
        """The FAISS indexes built by `vatt index --ann` ({} if none, or if they no longer match the shards)."""
        if self._ann is None:
            self._ann = load_ann(self.dir, self.manifest)
        return self._ann

    def scores(self, kind: str, query: np.ndarray, in_: str = "video", exact: bool | None = None,
               candidates: int = 2000) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity of the windows to a query embedding, and which windows were scored.

        exact=None uses the FAISS index when there is one for the column (then only its best `candidates`
        windows are scored); exact=True always scores every window with one matrix product.
        """
        if in_ not in ("video", "audio"):
            raise ValueError(f"in_ must be 'video' or 'audio', got {in_!r}")
        column = SPACES[(kind, in_)][1]
        x, valid = self.vectors(column)
        if not valid.any():
            raise ValueError(f"no window of {self.dir} has {in_} to search")
        q = _normalise(np.asarray(query, dtype=np.float32).reshape(-1))
        if q.shape[0] != x.shape[1]:
            raise ValueError(f"query has {q.shape[0]} dimensions, the index's {column} has {x.shape[1]}")
        if not exact and column in self.ann:
            sims, ids = self.ann[column].search(q[None], min(candidates, len(self)))
            keep = ids[0] >= 0
            s = np.full(len(self), -np.inf, dtype=np.float32)
            s[ids[0][keep]] = sims[0][keep]
            scored = np.zeros(len(self), dtype=bool)
            scored[ids[0][keep]] = True
            scored &= valid
            return np.where(scored, s, -np.inf), scored
        s = x @ q
        return np.where(valid, s, -np.inf), valid

    def search(self, text: str | None = None, *, audio=None, video=None, video_start_s: float | None = None,
               k: int = 10, in_: str = "video", exact: bool | None = None) -> list[Moment]:
        """The k best moments for a query (see the module doc for the spaces and the merging).

        With FAISS indexes (`vatt index --ann`) the moments are formed from the best 2000 windows FAISS
        finds, unless exact=True."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        kind, q = self.embed_query(text=text, audio=audio, video=video, video_start_s=video_start_s)
        s, valid = self.scores(kind, q, in_, exact=exact)
        return merge_moments(s, self.paths, self.windows, self.starts, self.ends[in_], k, valid)
