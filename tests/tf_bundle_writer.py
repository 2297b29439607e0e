"""A small writer of TF2 tensor bundles, for tests: checkpoints with several shards, many index blocks,
every numpy dtype, strings and Snappy-compressed blocks, without TensorFlow. TensorFlow's reader accepts
what it writes (checked in tests/test_tf_bundle.py's cross-check)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from vatt.checkpoint.tf_bundle import (DT_STRING, NUMPY_DTYPES, TABLE_MAGIC, crc32c, mask_crc, shard_path)

TF_DTYPES = {np.dtype(t): code for code, t in NUMPY_DTYPES.items()}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return varint(number << 3 | wire) + payload


def _block(items: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    buf, restarts, last = bytearray(), [], b""
    for i, (key, value) in enumerate(items):
        shared = 0
        if i % restart_interval:
            while shared < min(len(key), len(last)) and key[shared] == last[shared]:
                shared += 1
        else:
            restarts.append(len(buf))
        buf += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        last = key
    restarts = restarts or [0]
    return bytes(buf) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def _append_block(out: bytearray, contents: bytes, snappy: bool) -> bytes:
    kind = 0
    if snappy:
        import cramjam

        contents, kind = bytes(cramjam.snappy.compress_raw(contents)), 1
    handle = varint(len(out)) + varint(len(contents))
    out += contents + bytes([kind]) + struct.pack("<I", mask_crc(crc32c(bytes([kind]), crc32c(contents))))
    return handle


def _string_bytes(values: np.ndarray) -> tuple[bytes, int]:
    lengths, crc = b"", 0
    for v in values.ravel():
        lengths += varint(len(v))
        crc = crc32c(len(v).to_bytes(4, "little"), crc)
    length_crc = struct.pack("<I", mask_crc(crc))
    crc = crc32c(length_crc, crc)
    data = b"".join(values.ravel())
    return lengths + length_crc + data, mask_crc(crc32c(data, crc))


def write_bundle(prefix: str | Path, arrays: dict[str, np.ndarray], num_shards: int = 1,
                 block_size: int = 4096, snappy: bool = False) -> None:
    """Save `arrays` (numeric, or object arrays of bytes) under `prefix`, spread round-robin on shards."""
    shards = [bytearray() for _ in range(num_shards)]
    entries = {}
    for i, (key, array) in enumerate(sorted(arrays.items())):
        shard = shards[i % num_shards]
        if array.dtype == object:
            raw, crc, dtype = *_string_bytes(array), DT_STRING
        else:
            raw = np.ascontiguousarray(array).tobytes()
            crc, dtype = mask_crc(crc32c(raw)), TF_DTYPES[array.dtype]
        shape = b"".join(_field(2, 2, varint(len(d)) + d) for d in (_field(1, 0, varint(n)) for n in array.shape))
        entries[key.encode()] = (_field(1, 0, varint(dtype)) + _field(2, 2, varint(len(shape)) + shape)
                                 + _field(3, 0, varint(i % num_shards)) + _field(4, 0, varint(len(shard)))
                                 + _field(5, 0, varint(len(raw))) + _field(6, 5, struct.pack("<I", crc)))
        shard += raw
    for shard_id, data in enumerate(shards):
        shard_path(prefix, shard_id, num_shards).write_bytes(bytes(data))
    version = _field(1, 0, varint(1))
    items = [(b"", _field(1, 0, varint(num_shards)) + _field(3, 2, varint(len(version)) + version))]
    items += sorted(entries.items())
    out, index, pending = bytearray(), [], []
    for item in items:  # data blocks of about block_size bytes, each indexed by its last key
        pending.append(item)
        if sum(len(k) + len(v) for k, v in pending) >= block_size or item is items[-1]:
            index.append((pending[-1][0], _append_block(out, _block(pending, 16), snappy)))
            pending = []
    meta = _append_block(out, _block([], 16), snappy)
    footer = meta + _append_block(out, _block(index, 1), snappy)
    out += footer.ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    Path(f"{prefix}.index").write_bytes(bytes(out))
