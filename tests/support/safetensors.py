"""Write and read safetensors files by hand in tests (docs/testing.md).

The format (https://huggingface.co/docs/safetensors/index#format): a u64
little-endian header length N, N bytes of JSON header, then the tensor data.
"""

from __future__ import annotations

import json


def write_safetensors_raw(path: str, tensors: list, metadata: dict | None = None,
                          header_pad: int = 0) -> dict:
    """Write a safetensors file by hand (any dtype string, e.g. ``"F8_E4M3"``).

    ``tensors``: list of ``(name, dtype, shape, data_bytes)`` laid out in list order.
    ``metadata``: the ``__metadata__`` map (str → str). ``header_pad`` extra spaces in
    the JSON header. Returns the header dict written.
    """
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode() + b" " * header_pad
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for *_, data in tensors:
            f.write(data)
    return header


def read_safetensors_header(path: str) -> tuple[int, dict]:
    """``(N, header dict)`` of a safetensors file (N = JSON header length, bytes;
    tensor data starts at byte ``8 + N``)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n, json.loads(f.read(n))


def tensor_range(path: str, name: str) -> tuple[int, int]:
    """Absolute ``(start, end)`` byte offsets of tensor ``name`` in the file."""
    n, h = read_safetensors_header(path)
    a, b = h[name]["data_offsets"]
    return 8 + n + a, 8 + n + b
