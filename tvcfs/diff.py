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
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np

from . import dtypes
from .dag import KIND_DIR, KIND_FILE, FileIndex, dir_links, stat_node
from .encoding.cid import cid_str
from .merge.stview import StoredSafetensors, numel, open_safetensors, tensors_equal

__all__ = ["TensorChange", "FileChange", "TreeDiff", "diff_trees", "diff_commits", "diff_files",
           "tensor_stats", "format_diff", "format_stat"]

Getter = Callable[[bytes], "bytes | memoryview"]
CHUNK_ELEMS = 1 << 20  # elements per streamed chunk (8 MiB per float64 array)
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
        return json.dumps(self.to_dict(), indent=indent)

    def file(self, path: str) -> FileChange:
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


def tensor_stats(a: StoredSafetensors, ta, b: StoredSafetensors, tb) -> dict:
    """Numeric comparison of two same-shape stored tensors, streamed in chunks of
    :data:`CHUNK_ELEMS` elements. Chunks whose leaf CIDs are equal on both sides
    (same dtype) are read once. Returns the ``TensorChange`` fields
    ``bytes_changed``, ``elements_changed``, ``l2_diff``, ``max_abs_diff``,
    ``rel_change``, ``cosine``, ``norm_a``, ``norm_b``.
    Raises :class:`tvcfs.dtypes.UnsupportedDTypeError` for unsupported dtypes."""
    isa, isb = dtypes.itemsize(ta.dtype), dtypes.itemsize(tb.dtype)
    n = numel(ta.shape)
    same_dtype = ta.dtype == tb.dtype
    step = CHUNK_ELEMS
    ss_d = ss_a = ss_b = dot = 0.0
    mx = 0.0
    changed_el = changed_bytes = 0
    nan_seen = False
    for e0 in range(0, n, step):
        e1 = min(n, e0 + step)
        ra_off, ra_len = e0 * isa, (e1 - e0) * isa
        rb_off, rb_len = e0 * isb, (e1 - e0) * isb
        ident = False
        if same_dtype:
            la = a.leaf_ids(ta, ra_off, ra_len)
            lb = b.leaf_ids(tb, rb_off, rb_len)
            ident = la is not None and la == lb
        ra = a.read(ta, ra_off, ra_len)
        x = dtypes.to_float64(ra, ta.dtype)
        sq = float(np.dot(x, x))
        if ident:
            ss_a += sq
            ss_b += sq
            dot += sq
            continue
        rb = b.read(tb, rb_off, rb_len)
        y = dtypes.to_float64(rb, tb.dtype)
        d = y - x
        ss_a += sq
        ss_b += float(np.dot(y, y))
        dot += float(np.dot(x, y))
        ss_d += float(np.dot(d, d))
        if d.size:
            with np.errstate(invalid="ignore"):
                m = float(np.max(np.abs(d)))
            if math.isnan(m):
                nan_seen = True
            else:
                mx = max(mx, m)
        if same_dtype:
            changed_bytes += int(np.count_nonzero(np.frombuffer(ra, dtype=np.uint8) != np.frombuffer(rb, dtype=np.uint8)))
            ut = _UINT[isa]
            changed_el += int(np.count_nonzero(np.frombuffer(ra, dtype=ut) != np.frombuffer(rb, dtype=ut)))
        else:
            changed_el += int(np.count_nonzero((x != y) & ~(np.isnan(x) & np.isnan(y))))
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


def diff_safetensors(a: StoredSafetensors, b: StoredSafetensors, change: FileChange, numeric: bool = True) -> None:
    """Fill ``change.tensors``, ``tensors_unchanged`` and ``metadata_changes`` from
    two opened safetensors files."""
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
                for k, v in tensor_stats(a, ta, b, tb).items():
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


def diff_files(get: Getter, path: str, cid_a: bytes, cid_b: bytes, numeric: bool = True) -> FileChange:
    """Compare two stored files (UnixFS file CIDs). Safetensors on both sides are
    compared tensor by tensor; otherwise only sizes are reported."""
    ia, ib = FileIndex.build(get, cid_a), FileIndex.build(get, cid_b)
    ch = FileChange(path, "modified", "file", ia.size, ib.size, cid_str(cid_a), cid_str(cid_b))
    sa = open_safetensors(get, cid_a, ia)
    sb = open_safetensors(get, cid_b, ib) if sa is not None else None
    if sa is not None and sb is not None:
        ch.kind = "safetensors"
        diff_safetensors(sa, sb, ch, numeric)
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
               numeric: bool = True) -> TreeDiff:
    """Diff two directory DAGs (binary CIDs; ``None`` = empty tree).

    ``paths``: optional path filters (``a/b`` limits the diff to that file or
    directory). Sub-trees with equal CIDs are not read. Returns a :class:`TreeDiff`
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
                    out.append(diff_files(get, p, xa.hash, xb.hash, numeric))
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
    ``Repo.resolve`` or binary commit CIDs). ``TreeDiff.a``/``.b`` are the commits."""
    ca = rev_a if isinstance(rev_a, bytes) else repo.resolve(rev_a)
    cb = rev_b if isinstance(rev_b, bytes) else repo.resolve(rev_b)
    ta, tb = repo.read_commit(ca).tree, repo.read_commit(cb).tree
    d = diff_trees(repo.get, ta, tb, paths, numeric)
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
    safetensors one line per changed tensor (``+``/``-``/``~``) with its summaries."""
    lines = []
    mark = {"added": "A", "removed": "D", "modified": "M"}
    for f in d.files:
        if f.status == "modified":
            lines.append(f"M {f.path} ({_hsize(f.size_a)} -> {_hsize(f.size_b)})")
        else:
            lines.append(f"{mark[f.status]} {f.path} ({_hsize(f.size_b if f.status == 'added' else f.size_a)})")
        for t in f.tensors:
            if t.status == "added":
                lines.append(f"    + {t.name}  {_tdesc(t.dtype_b, t.shape_b)}")
            elif t.status == "removed":
                lines.append(f"    - {t.name}  {_tdesc(t.dtype_a, t.shape_a)}")
            else:
                head = f"    ~ {t.name}  {_tdesc(t.dtype_a, t.shape_a)}"
                if (t.dtype_a, t.shape_a) != (t.dtype_b, t.shape_b):
                    head += f" -> {_tdesc(t.dtype_b, t.shape_b)}"
                head += f"  bytes changed {t.bytes_changed:,}"
                if t.l2_diff is not None:
                    head += (f"  L2 {_g(t.l2_diff)}  max|d| {_g(t.max_abs_diff)}  rel {_g(t.rel_change)}"
                             f"  cos {_g(t.cosine)}")
                lines.append(head)
        for k, (old, new) in f.metadata_changes.items():
            lines.append(f"    metadata {k}: {json.dumps(old)} -> {json.dumps(new)}")
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
            lines.append(f" {f.path} | tensors: {c['modified']} modified, {c['added']} added, {c['removed']} removed,"
                         f" {f.tensors_unchanged} unchanged; {_hsize(changed)} changed"
                         + (f"; {len(f.metadata_changes)} metadata keys" if f.metadata_changes else ""))
        else:
            lines.append(f" {f.path} | {f.status} ({_hsize(f.size_a)} -> {_hsize(f.size_b)})")
    lines.append(f" {len(d.files)} files changed: {tot['modified']} modified, {tot['added']} added, {tot['removed']} removed")
    return "\n".join(lines)
