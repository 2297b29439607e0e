"""Find moments in media files by a sentence, a sound or a clip: build an index of windows, search it.

    from vatt.index import build_index, Index
    build_index(model, ["clips/"], "my_index", model_path="converted/bbs")
    Index.open("my_index").search(text="a dog catches a frisbee", k=5)

`build` (windows -> embeddings -> shards), `store` (the on-disk layout, readable without vatt),
`windows` (sliding windows decoded a stretch at a time), `search` (exact search and moments).
"""
from vatt.index.build import BuildReport, build_index
from vatt.index.search import Index, Moment

__all__ = ["BuildReport", "Index", "Moment", "build_index"]
