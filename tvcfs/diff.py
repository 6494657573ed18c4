"""Tensor-level diff of two revisions (``tvcfs diff REV1 REV2 [PATH…]``).

Trees are compared by CID: identical sub-trees and files are skipped without reading
below them. Differing safetensors files are compared tensor by tensor: tensors with
equal dtype, shape and leaf CIDs are unchanged (no data read); modified tensors are
streamed in chunks and summarised in float64 (formulas in ``docs/merge.md``):

* ``l2_diff`` = ‖B − A‖₂, ``max_abs_diff`` = max|B − A|
* ``rel_change`` = ‖B − A‖₂ / ‖A‖₂ (``inf`` if ‖A‖ = 0 < ‖B − A‖; 0 if both 0)
* ``cosine`` = ⟨A, B⟩ / (‖A‖₂ ‖B‖₂) (``None`` if a norm is 0)

The numeric summaries need equal shapes (dtypes may differ: both sides are decoded
exactly by :mod:`tvcfs.dtypes`). Unsupported dtypes give byte counts only.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np

from . import dtypes
from .names import printable_name
from .dag import KIND_DIR, KIND_FILE, FileIndex, dir_links, stat_node
from .encoding.cid import cid_str
from .errors import naming
from .merge.stview import DataReader, StoredSafetensors, data_reader, numel, open_safetensors, tensors_equal

__all__ = ["TensorChange", "FileChange", "TreeDiff", "diff_trees", "diff_commits", "diff_files",
           "tensor_stats", "format_diff", "format_stat"]

Getter = Callable[[bytes], "bytes | memoryview"]
CHUNK_BYTES = 1 << 20  # bytes of the wider side per streamed chunk (= MAX_LEAF: one leaf)
SUB_ELEMS = 8192  # float64 elements per dot product: in L1/L2, and below the size
# (10000) at which OpenBLAS splits a dot over threads, which costs more than it gains here
GROUP_CHUNKS = 4  # chunks handed to a worker at a time (fewer thread wake-ups)
PREFETCH_CHUNKS = 8  # chunks whose views are taken ahead of the workers (MADV_WILLNEED);
# a view maps its leaf's page-cache folio into the process, so this bounds that too
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass
class TensorChange:
    """One added / removed / modified tensor.

    ``dtype_a``/``shape_a``/``nbytes_a`` describe the old side (``None`` when added),
    ``*_b`` the new side. For modified tensors: ``bytes_changed`` (bytes that differ;
    all new bytes when dtype or size changed), ``elements_changed``, ``leaves_changed``
    (leaves of the new side whose CID is not the old one's at that place), and for
    equal shapes the float64 summaries ``l2_diff``, ``max_abs_diff``, ``rel_change``,
    ``cosine`` (``None`` where undefined or the dtype is unsupported).
    """

    name: str
    status: str
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: list | None = None
    shape_b: list | None = None
    nbytes_a: int = 0
    nbytes_b: int = 0
    bytes_changed: int = 0
    elements_changed: int | None = None
    leaves_changed: int | None = None
    l2_diff: float | None = None
    max_abs_diff: float | None = None
    rel_change: float | None = None
    cosine: float | None = None
    norm_a: float | None = None
    norm_b: float | None = None


@dataclass
class FileChange:
    """One changed file. ``status``: ``added``, ``removed`` or ``modified``; ``kind``:
    ``safetensors`` when both present sides are safetensors, else ``file``/``symlink``.
    ``tensors``: changed tensors (name order of the new file, removed last);
    ``tensors_unchanged``: count; ``metadata_changes``: ``{key: [old, new]}`` of the
    ``__metadata__`` map (``None`` = absent)."""

    path: str
    status: str
    kind: str = "file"
    size_a: int | None = None
    size_b: int | None = None
    cid_a: str | None = None
    cid_b: str | None = None
    tensors: list = field(default_factory=list)
    tensors_unchanged: int = 0
    metadata_changes: dict = field(default_factory=dict)


@dataclass
class TreeDiff:
    """The result of a diff: ``files`` in path order, plus the compared roots."""

    a: str | None
    b: str | None
    files: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict (non-finite floats become the strings ``"inf"``, ``"nan"``)."""
        return _clean({"a": self.a, "b": self.b, "files": [asdict(f) for f in self.files]})

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text (``indent`` spaces; ``None``: one line)."""
        return json.dumps(self.to_dict(), indent=indent)

    def file(self, path: str) -> FileChange:
        """The change of file ``path``. Raises ``KeyError`` if the file did not change."""
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


def _clean(o):
    if isinstance(o, float) and not math.isfinite(o):
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


# --------------------------------------------------------------------------- tensors


class _ChunkStats:
    """Per-worker reused buffers of :func:`tensor_stats` (float64 ``a_values``,
    ``b_values``, ``delta`` (Δ) of one chunk, a float32 scratch for BF16 decoding, the
    byte scratch ``xor_bytes`` for XORs) and the summary of one chunk."""

    def __init__(self, elems: int):
        self.a_values = np.empty(elems)
        self.b_values = np.empty(elems)
        self.delta = np.empty(elems)
        self.s32 = np.empty(elems, dtype=np.float32)
        self.xor_bytes = np.empty(elems * 8, dtype=np.uint8)

    def load(self, buf, dtype: str, out: np.ndarray) -> np.ndarray:
        """Decode ``buf`` exactly into the float64 buffer ``out`` (BF16 via the
        float32 scratch, so nothing of the chunk's size is allocated)."""
        if dtype == "BF16":
            v = dtypes.decode_into(buf, dtype, self.s32)
            o = out[:v.size]
            np.copyto(o, v)
            return o
        return dtypes.decode_into(buf, dtype, out)

    def same(self, ra, dtype: str) -> tuple:
        """A chunk whose leaves are identical on both sides: only ‖A‖² is needed.
        Returns the tuple of :meth:`chunk`."""
        x = self.load(ra, dtype, self.a_values)
        sq = 0.0
        for s0 in range(0, x.size, SUB_ELEMS):
            xs = x[s0:s0 + SUB_ELEMS]
            sq += float(np.dot(xs, xs))
        return 0.0, sq, sq, sq, 0.0, False, 0, 0

    def chunk(self, ra, dta: str, rb, dtb: str) -> tuple:
        """Summary of one chunk of both sides (equal element counts):
        ``(ΣΔ², ΣA², ΣB², ΣAB, max|Δ|, NaN seen, elements changed, bytes changed)``."""
        x = self.load(ra, dta, self.a_values)
        y = self.load(rb, dtb, self.b_values)
        n = x.size
        d = self.delta[:n]
        np.subtract(y, x, out=d)
        ss_d = ss_a = ss_b = 0.0
        for s0 in range(0, n, SUB_ELEMS):  # slices below OpenBLAS's threading threshold
            xs, ys, ds = x[s0:s0 + SUB_ELEMS], y[s0:s0 + SUB_ELEMS], d[s0:s0 + SUB_ELEMS]
            ss_a += float(np.dot(xs, xs))
            ss_b += float(np.dot(ys, ys))
            ss_d += float(np.dot(ds, ds))
        # ⟨A,B⟩ = (‖A‖² + ‖B‖² − ‖Δ‖²)/2 exactly; in float64 its error is ~1e-16·(‖A‖²+‖B‖²),
        # i.e. ~1e-16 on the cosine, as for a direct dot product (one pass fewer)
        dot = (ss_a + ss_b - ss_d) / 2
        mx, nan = 0.0, False
        if n:
            mx = max(float(d.max()), -float(d.min()))
            nan = math.isnan(mx)
        if dta == dtb:
            # changed elements / bytes from the XOR of the raw storage words
            ut = _UINT[dtypes.itemsize(dta)]
            z = self.xor_bytes[:len(ra)].view(ut)
            np.bitwise_xor(np.frombuffer(ra, dtype=ut), np.frombuffer(rb, dtype=ut), out=z)
            ce, cb = int(np.count_nonzero(z)), int(np.count_nonzero(z.view(np.uint8)))
        else:
            ce, cb = int(np.count_nonzero((x != y) & ~(np.isnan(x) & np.isnan(y)))), 0
        return ss_d, ss_a, ss_b, dot, (0.0 if nan else mx), nan, ce, cb


def tensor_stats(a: StoredSafetensors, ta, b: StoredSafetensors, tb, reader: DataReader | None = None,
                 threads: int | None = None) -> dict:
    """Numeric comparison of two same-shape stored tensors, streamed in chunks of
    :data:`CHUNK_BYTES` of the wider dtype (one leaf of a tensor-aligned file).

    Each chunk is decoded exactly (:func:`tvcfs.dtypes.decode_into`) into reused
    float64 buffers and summed with BLAS dot products on cache-sized slices
    (ΣΔ², ΣA², ΣB² in float64: the values of a float64 computation over the whole
    tensor up to summation order, relative error ~1e-16·√n; ΣAB = (ΣA² + ΣB² − ΣΔ²)/2
    per chunk); max |Δ| is exact.
    Chunks whose leaf CIDs are equal on both sides (same dtype) are read once.

    ``reader``: a :class:`~tvcfs.merge.stview.DataReader` for zero-copy views of the
    store's map; the calling thread then takes the views of up to
    :data:`PREFETCH_CHUNKS` chunks ahead (``MADV_WILLNEED``: their disk reads are
    queued early), ``threads`` workers (default ``min(2, cpu count)``; numpy and BLAS
    release the GIL) summarise them, and each chunk's map pages are dropped from the
    process once summed (``MADV_DONTNEED``). Without a reader the files' getters are
    used in the calling thread. Per-chunk sums are added in chunk order, so the
    result does not depend on scheduling.

    Returns the ``TensorChange`` fields ``bytes_changed``, ``elements_changed``,
    ``l2_diff``, ``max_abs_diff``, ``rel_change``, ``cosine``, ``norm_a``,
    ``norm_b``. Raises :class:`tvcfs.dtypes.UnsupportedDTypeError` for unsupported
    dtypes.
    """
    isa, isb = dtypes.itemsize(ta.dtype), dtypes.itemsize(tb.dtype)
    n = numel(ta.shape)
    same_dtype = ta.dtype == tb.dtype
    step = max(1, CHUNK_BYTES // max(isa, isb))
    starts = range(0, n, step)
    data_get = reader.get if reader is not None else None
    results: list = [None] * len(starts)

    def views(e0: int):
        """(bytes of A, bytes of B or None when the leaves are identical)."""
        e1 = min(n, e0 + step)
        ra_off, ra_len = e0 * isa, (e1 - e0) * isa
        rb_off, rb_len = e0 * isb, (e1 - e0) * isb
        if same_dtype:
            la = a.leaf_ids(ta, ra_off, ra_len)
            if la is not None and la == b.leaf_ids(tb, rb_off, rb_len):
                return a.view(ta, ra_off, ra_len, data_get), None
        return a.view(ta, ra_off, ra_len, data_get), b.view(tb, rb_off, rb_len, data_get)

    def summarise(w: _ChunkStats, i: int, ra, rb) -> None:
        results[i] = w.same(ra, ta.dtype) if rb is None else w.chunk(ra, ta.dtype, rb, tb.dtype)
        if reader is not None:
            reader.dontneed(ra)
            if rb is not None:
                reader.dontneed(rb)

    nthreads = max(1, threads or min(2, os.cpu_count() or 1))
    if reader is None or len(starts) < 4:
        w = _ChunkStats(step)
        for i, e0 in enumerate(starts):
            summarise(w, i, *views(e0))
    else:
        q: queue.Queue = queue.Queue(maxsize=max(1, PREFETCH_CHUNKS // GROUP_CHUNKS))
        errors: list = []

        def consume() -> None:
            w = _ChunkStats(step)
            while (group := q.get()) is not None:
                for item in group:
                    if not errors:
                        try:
                            summarise(w, *item)
                        except BaseException as e:  # reported by the calling thread
                            errors.append(e)

        workers = [threading.Thread(target=consume, daemon=True) for _ in range(nthreads)]
        for t in workers:
            t.start()
        try:
            group = []
            for i, e0 in enumerate(starts):
                if errors:
                    break
                ra, rb = views(e0)
                reader.willneed(ra)
                if rb is not None:
                    reader.willneed(rb)
                group.append((i, ra, rb))
                if len(group) == GROUP_CHUNKS or i == len(starts) - 1:
                    q.put(group)
                    group = []
        finally:
            for _ in workers:
                q.put(None)
            for t in workers:
                t.join()
        if errors:
            raise errors[0]
    ss_d = ss_a = ss_b = dot = mx = 0.0
    nan_seen = False
    changed_el = changed_bytes = 0
    for r in results:
        ss_d += r[0]
        ss_a += r[1]
        ss_b += r[2]
        dot += r[3]
        mx = max(mx, r[4])
        nan_seen |= r[5]
        changed_el += r[6]
        changed_bytes += r[7]
    if not same_dtype:
        changed_bytes = tb.nbytes
    l2 = math.sqrt(ss_d) if not math.isnan(ss_d) else float("nan")
    na, nb = math.sqrt(ss_a) if ss_a >= 0 else float("nan"), math.sqrt(ss_b) if ss_b >= 0 else float("nan")
    if na > 0:
        rel = l2 / na
    else:
        rel = 0.0 if l2 == 0 else float("inf")
    cos = dot / (na * nb) if na > 0 and nb > 0 else None
    if cos is not None and not math.isnan(cos):
        cos = max(-1.0, min(1.0, cos))
    return {
        "bytes_changed": changed_bytes,
        "elements_changed": changed_el,
        "l2_diff": l2,
        "max_abs_diff": float("nan") if nan_seen else mx,
        "rel_change": rel,
        "cosine": cos,
        "norm_a": na,
        "norm_b": nb,
    }


def _leaves_changed(a: StoredSafetensors, ta, b: StoredSafetensors, tb) -> int | None:
    la, lb = a.leaf_ids(ta), b.leaf_ids(tb)
    if lb is None:
        return None
    if la is None or len(la) != len(lb):
        return len(lb)
    return sum(1 for x, y in zip(la, lb) if x != y)


def diff_safetensors(a: StoredSafetensors, b: StoredSafetensors, change: FileChange, numeric: bool = True,
                     reader: DataReader | None = None) -> None:
    """Fill ``change.tensors``, ``tensors_unchanged`` and ``metadata_changes`` from
    two opened safetensors files (``reader``: see :func:`tensor_stats`)."""
    for name, tb in b.tensors.items():
        ta = a.tensors.get(name)
        if ta is None:
            change.tensors.append(TensorChange(name, "added", dtype_b=tb.dtype, shape_b=list(tb.shape),
                                               nbytes_b=tb.nbytes, bytes_changed=tb.nbytes))
            continue
        if tensors_equal(a, ta, b, tb):
            change.tensors_unchanged += 1
            continue
        tc = TensorChange(name, "modified", ta.dtype, tb.dtype, list(ta.shape), list(tb.shape), ta.nbytes, tb.nbytes,
                          bytes_changed=tb.nbytes, leaves_changed=_leaves_changed(a, ta, b, tb))
        if numeric and tuple(ta.shape) == tuple(tb.shape):
            try:
                for k, v in tensor_stats(a, ta, b, tb, reader).items():
                    setattr(tc, k, v)
            except dtypes.UnsupportedDTypeError:
                pass
        change.tensors.append(tc)
    for name, ta in a.tensors.items():
        if name not in b.tensors:
            change.tensors.append(TensorChange(name, "removed", dtype_a=ta.dtype, shape_a=list(ta.shape),
                                               nbytes_a=ta.nbytes))
    for k in sorted(set(a.metadata) | set(b.metadata)):
        va, vb = a.metadata.get(k), b.metadata.get(k)
        if va != vb:
            change.metadata_changes[k] = [va, vb]


def diff_files(get: Getter, path: str, cid_a: bytes, cid_b: bytes, numeric: bool = True,
               reader: DataReader | None = None) -> FileChange:
    """Compare two stored files (UnixFS file CIDs). Safetensors on both sides are
    compared tensor by tensor (tensor data through ``reader`` when given, see
    :func:`tensor_stats`); otherwise only sizes are reported. A damaged block
    (:class:`~tvcfs.errors.CorruptBlock`) is raised with ``path`` in its message."""
    with naming(path):
        ia, ib = FileIndex.build(get, cid_a), FileIndex.build(get, cid_b)
        ch = FileChange(path, "modified", "file", ia.size, ib.size, cid_str(cid_a), cid_str(cid_b))
        sa = open_safetensors(get, cid_a, ia)
        sb = open_safetensors(get, cid_b, ib) if sa is not None else None
        if sa is not None and sb is not None:
            ch.kind = "safetensors"
            diff_safetensors(sa, sb, ch, numeric, reader)
    return ch


# --------------------------------------------------------------------------- trees


def _links(get: Getter, cid: bytes | None) -> dict:
    if cid is None:
        return {}
    return {link.name: link for link in dir_links(get, cid)}


def _wanted(path: str, filters: list[str] | None) -> tuple[bool, bool]:
    """(include this path, descend into it)."""
    if not filters:
        return True, True
    for f in filters:
        if path == f or path.startswith(f + "/"):
            return True, True
    for f in filters:
        if f.startswith(path + "/"):
            return False, True
    return False, False


def _list_added(get: Getter, cid: bytes, path: str, status: str, filters, out: list) -> None:
    e = stat_node(get, cid, path)
    if e.kind == KIND_DIR:
        for name, link in sorted(_links(get, cid).items()):
            p = f"{path}/{name}"
            inc, desc = _wanted(p, filters)
            if desc:
                _list_added(get, link.hash, p, status, filters, out)
        return
    if not _wanted(path, filters)[0]:
        return
    fc = FileChange(path, status, "file" if e.kind == KIND_FILE else e.kind)
    if status == "added":
        fc.size_b, fc.cid_b = e.size, cid_str(cid)
    else:
        fc.size_a, fc.cid_a = e.size, cid_str(cid)
    out.append(fc)


def diff_trees(get: Getter, tree_a: bytes | None, tree_b: bytes | None, paths: Iterable[str] | None = None,
               numeric: bool = True, reader: DataReader | None = None) -> TreeDiff:
    """Diff two directory DAGs (binary CIDs; ``None`` = empty tree).

    ``paths``: optional path filters (``a/b`` limits the diff to that file or
    directory). Sub-trees with equal CIDs are not read. Tensor data of modified
    tensors is read through ``reader`` when given (zero-copy views and page-cache
    hints, see :func:`tensor_stats`), else through ``get``. Returns a :class:`TreeDiff`
    whose ``files`` are sorted by path. Raises :class:`~tvcfs.errors.BlockNotFound`
    for missing blocks.
    """
    filters = [p.strip("/") for p in paths or [] if p.strip("/")] or None
    out: list[FileChange] = []

    def rec(ca, cb, prefix):
        la, lb = _links(get, ca), _links(get, cb)
        for name in sorted(set(la) | set(lb), key=lambda s: s.encode()):
            p = f"{prefix}{name}"
            inc, desc = _wanted(p, filters)
            if not desc:
                continue
            xa, xb = la.get(name), lb.get(name)
            if xa is not None and xb is not None and xa.hash == xb.hash:
                continue
            ea = stat_node(get, xa.hash, name, xa.tsize) if xa is not None else None
            eb = stat_node(get, xb.hash, name, xb.tsize) if xb is not None else None
            if ea and eb and ea.kind == eb.kind == KIND_DIR:
                rec(xa.hash, xb.hash, p + "/")
            elif ea and eb and ea.kind == eb.kind == KIND_FILE:
                if inc:
                    out.append(diff_files(get, p, xa.hash, xb.hash, numeric, reader))
            else:
                if ea is not None:
                    _list_added(get, xa.hash, p, "removed", filters, out)
                if eb is not None:
                    _list_added(get, xb.hash, p, "added", filters, out)

    if tree_a != tree_b:
        rec(tree_a, tree_b, "")
    out.sort(key=lambda f: f.path.encode())
    return TreeDiff(cid_str(tree_a) if tree_a else None, cid_str(tree_b) if tree_b else None, out)


def diff_commits(repo, rev_a, rev_b, paths: Iterable[str] | None = None, numeric: bool = True) -> TreeDiff:
    """Diff two revisions of ``repo`` (:class:`tvcfs.Repo`; revisions as accepted by
    ``Repo.resolve`` or binary commit CIDs). ``TreeDiff.a``/``.b`` are the commits.
    Tensor data is read zero-copy in one read transaction of the repository's store."""
    ca = rev_a if isinstance(rev_a, bytes) else repo.resolve(rev_a)
    cb = rev_b if isinstance(rev_b, bytes) else repo.resolve(rev_b)
    ta, tb = repo.read_commit(ca).tree, repo.read_commit(cb).tree
    with data_reader(repo.store, repo.blocks) as reader:
        d = diff_trees(repo.get, ta, tb, paths, numeric, reader)
    d.a, d.b = cid_str(ca), cid_str(cb)
    return d


# --------------------------------------------------------------------------- output


def _hsize(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _g(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def _tdesc(dtype, shape) -> str:
    return f"{dtype} {list(shape)}"


def format_diff(d: TreeDiff) -> str:
    """Human-readable listing: one line per file (``A``/``D``/``M``), and for
    safetensors one line per changed tensor (``+``/``-``/``~``) with its summaries;
    paths and tensor names escaped (:func:`tvcfs.names.printable_name`)."""
    lines = []
    mark = {"added": "A", "removed": "D", "modified": "M"}
    for f in d.files:
        if f.status == "modified":
            lines.append(f"M {printable_name(f.path)} ({_hsize(f.size_a)} -> {_hsize(f.size_b)})")
        else:
            size = f.size_b if f.status == "added" else f.size_a
            lines.append(f"{mark[f.status]} {printable_name(f.path)} ({_hsize(size)})")
        for t in f.tensors:
            if t.status == "added":
                lines.append(f"    + {printable_name(t.name)}  {_tdesc(t.dtype_b, t.shape_b)}")
            elif t.status == "removed":
                lines.append(f"    - {printable_name(t.name)}  {_tdesc(t.dtype_a, t.shape_a)}")
            else:
                head = f"    ~ {printable_name(t.name)}  {_tdesc(t.dtype_a, t.shape_a)}"
                if (t.dtype_a, t.shape_a) != (t.dtype_b, t.shape_b):
                    head += f" -> {_tdesc(t.dtype_b, t.shape_b)}"
                head += f"  bytes changed {t.bytes_changed:,}"
                if t.l2_diff is not None:
                    head += (f"  L2 {_g(t.l2_diff)}  max|d| {_g(t.max_abs_diff)}  rel {_g(t.rel_change)}"
                             f"  cos {_g(t.cosine)}")
                lines.append(head)
        for k, (old, new) in f.metadata_changes.items():
            lines.append(f"    metadata {printable_name(k)}: {json.dumps(old)} -> {json.dumps(new)}")
        if f.kind == "safetensors":
            lines.append(f"    ({f.tensors_unchanged} tensors unchanged)")
    return "\n".join(lines)


def format_stat(d: TreeDiff) -> str:
    """``git diff --stat``-like summary: one line per file and a total line."""
    lines = []
    tot = {"added": 0, "removed": 0, "modified": 0}
    for f in d.files:
        tot[f.status] += 1
        if f.kind == "safetensors":
            c = {"added": 0, "removed": 0, "modified": 0}
            for t in f.tensors:
                c[t.status] += 1
            changed = sum(t.bytes_changed for t in f.tensors if t.status != "removed")
            lines.append(f" {printable_name(f.path)} | tensors: {c['modified']} modified, {c['added']} added, {c['removed']} removed,"
                         f" {f.tensors_unchanged} unchanged; {_hsize(changed)} changed"
                         + (f"; {len(f.metadata_changes)} metadata keys" if f.metadata_changes else ""))
        else:
            lines.append(f" {printable_name(f.path)} | {f.status} ({_hsize(f.size_a)} -> {_hsize(f.size_b)})")
    lines.append(f" {len(d.files)} files changed: {tot['modified']} modified, {tot['added']} added, {tot['removed']} removed")
    return "\n".join(lines)
