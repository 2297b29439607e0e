"""The official frozen word-embedding table (`misc/word2vec.pkl`, key `word_embeddings`).

The release ships it as a pickle. Unpickling runs code chosen by whoever wrote the file, so we never do
it implicitly: `convert_word2vec_pickle(..., allow_pickle=True)` converts it once to safetensors, through
an unpickler that only accepts what a numpy array in a dict needs, and every later load reads the
safetensors file.

The same table is also a (frozen) variable of every official pre-training checkpoint, so
`convert_word_table_from_checkpoint` takes it from there instead: no pickle at all, and no TensorFlow.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from vatt.checkpoint.convert_tf import read_tf_checkpoint
from vatt.checkpoint.io import write_weights
from vatt.model.vatt import VATT, UnifiedVATT

KEY = "word_embeddings"

# The globals a pickled {str: numpy.ndarray} needs (numpy 1.x and 2.x module paths); nothing else loads.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays in a dict are allowed")


def convert_word2vec_pickle(pickle_path: str | Path, out_path: str | Path, allow_pickle: bool = False) -> torch.Tensor:
    """Convert the official `word2vec.pkl` to `out_path` (safetensors, key `word_embeddings`)."""
    pickle_path = Path(pickle_path)
    if not allow_pickle:
        raise PermissionError(f"{pickle_path}: converting a pickle needs an explicit allow_pickle=True "
                              "(--allow-pickle on the command line); only do it for a file you trust")
    try:
        data = _ArrayOnlyUnpickler(io.BytesIO(pickle_path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{pickle_path}: not a word-embedding pickle: {e}") from e
    if not isinstance(data, dict) or KEY not in data:
        raise ValueError(f"{pickle_path}: expected a dict with key {KEY!r}")
    table = np.asarray(data[KEY], dtype=np.float32)
    if table.ndim != 2:
        raise ValueError(f"{pickle_path}: {KEY} must be [vocab, dim], got shape {table.shape}")
    tensor = torch.from_numpy(table.copy())
    write_weights(out_path, {KEY: tensor}, what="word embeddings")
    return tensor


# Where the frozen table lives in official pre-training checkpoints (tx_fac, ut_fac), suffix removed.
CHECKPOINT_KEYS = (
    "model/layer_with_weights-0/_base_layer/txt_backbone/embedding/embeddings",
    "model/layer_with_weights-0/_base_layer/unified_backbone/unified_transformer/raw_to_embeddings/text/embeddings",
)


def convert_word_table_from_checkpoint(prefix: str, out_path: str | Path, reader: str = "native") -> torch.Tensor:
    """Take the word table out of an official pre-training checkpoint into `out_path` (safetensors)."""
    arrays = read_tf_checkpoint(prefix, reader)
    found = [k for k in CHECKPOINT_KEYS if k in arrays]
    if not found:
        raise ValueError(f"{prefix}: no word table in this checkpoint (looked for {' or '.join(CHECKPOINT_KEYS)}); "
                         "fine-tuned classifier checkpoints have none")
    table = np.asarray(arrays[found[0]], dtype=np.float32)
    tensor = torch.from_numpy(table.copy())
    write_weights(out_path, {KEY: tensor}, what="word embeddings")
    return tensor


def word_embedding_parameter(model: nn.Module) -> nn.Parameter:
    """The frozen word table of a tx_fac / ut_fac model."""
    if isinstance(model, VATT):
        return model.text_backbone.embedding.weight
    if isinstance(model, UnifiedVATT):
        return model.unified_backbone.tokenizers.text.weight
    raise TypeError(f"{type(model).__name__} has no word-embedding table")


def load_word_embeddings(model: nn.Module, path: str | Path) -> None:
    """Copy a converted `word2vec.safetensors` into the model's (frozen) word table."""
    table = load_file(str(path))[KEY]
    param = word_embedding_parameter(model)
    if table.shape != param.shape:
        raise ValueError(f"{path}: word table {tuple(table.shape)} does not fit the model's "
                         f"{tuple(param.shape)} (vocab_size, d_embedding)")
    with torch.no_grad():
        param.copy_(table)
