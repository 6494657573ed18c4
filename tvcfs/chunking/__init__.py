"""Chunkers: where a file is cut into leaves.

:func:`plan_spans` picks the tensor-aligned plan for a well-formed safetensors file
(:mod:`.safetensors`) and content-defined chunking (:mod:`.cdc`, FastCDC-style) for
everything else, including malformed safetensors. Both stream: only headers and
small read windows are held in memory.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from .safetensors import MAX_LEAF, NotSafetensors, read_header, tensor_spans


def plan_spans(f: BinaryIO, size: int | None = None) -> list:
    """Leaf spans ``[(offset, length), ...]`` (bytes) covering an open file exactly.

    ``f`` must be a real file (``fileno()``); ``size`` defaults to its ``fstat`` size.
    Never raises for content: a file that is not valid safetensors is chunked by
    content. An empty file has no spans (its DAG is the single empty leaf).
    """
    if size is None:
        size = os.fstat(f.fileno()).st_size
    if size == 0:
        return []
    try:
        header = read_header(f, size)
    except NotSafetensors:
        header = None
    if header is not None:
        return tensor_spans(header, size, MAX_LEAF)
    from .cdc import cdc_spans

    return list(cdc_spans(f, 0, size))
