"""Repository merge: commit DAG, three-way tree merge, tensor-level safetensors merge.

Semantics are documented in ``docs/merge.md``. In short: find the merge base; the
result kind is ``up-to-date``, ``fast-forward``, ``merged`` (a commit with parents
``[ours, theirs]``) or ``conflict`` (nothing written). A merge first *plans* the
whole result from directory nodes and safetensors headers only, so every conflict is
known before anything is written; then it *writes* the planned files tensor by
tensor in one LMDB write transaction together with the commit and the ref update.
Copied tensors reuse their source leaves (neither read nor rewritten); merged tensors
are read, combined in float32 by a :mod:`~tvcfs.merge.strategies` strategy, rounded
back to their dtype and cut into leaves exactly as the importer would. Element-wise
strategies are streamed leaf by leaf (:class:`_Stream`: each output leaf is computed
from the same element range of the sides, read as zero-copy views of the store's
map), so memory holds a few leaves, not copies of the tensor; ``slerp`` and
``ties`` read the sides once more first, for their whole-tensor statistics (norms;
magnitude thresholds, 4 bytes per element per side while they are found).
"""

from __future__ import annotations

import fnmatch
import functools
import json
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from .. import dtypes
from ..chunking.safetensors import MAX_LEAF, parse_header, tensor_spans
from ..dag import KIND_DIR, KIND_FILE, dir_links, stat_node
from ..encoding.cid import RAW, cid_str, make_cid
from ..encoding.hamt import build_directory_dag
from ..encoding.unixfs import EXEC_FILE_MODE, build_file
from ..errors import TvcfsError
from .stview import DataReader, StoredSafetensors, data_reader, numel, open_safetensors, tensors_equal
from .strategies import SUM_BLOCK, Strategy, StrategyError, parse_params, parse_strategy_spec

__all__ = [
    "UP_TO_DATE", "FAST_FORWARD", "MERGED", "CONFLICT",
    "Conflict", "MergeResult", "MergeConflictError", "StrategyRules",
    "merge", "plan_tree_merge", "write_plan",
]

UP_TO_DATE = "up-to-date"
FAST_FORWARD = "fast-forward"
MERGED = "merged"
CONFLICT = "conflict"

Getter = Callable[[bytes], "bytes | memoryview"]


class MergeConflictError(TvcfsError):
    """Raised by the CLI helper when a merge ends in conflicts (exit code 1)."""


@dataclass(frozen=True)
class Conflict:
    """One conflict: ``path`` of the file, ``tensor`` name (``None`` for a whole
    file; ``__metadata__.KEY`` for a header metadata key) and a one-line ``reason``."""

    path: str
    tensor: str | None
    reason: str

    def __str__(self) -> str:
        where = self.path + (f" :: {self.tensor}" if self.tensor else "")
        return f"{where}: {self.reason}"


@dataclass
class MergeResult:
    """Outcome of :func:`merge`.

    ``kind``: :data:`UP_TO_DATE`, :data:`FAST_FORWARD`, :data:`MERGED` or
    :data:`CONFLICT`; ``ours``/``theirs``/``base``: binary commit CIDs (``base``
    ``None`` for unrelated histories); ``commit``: the branch head after the merge
    (ours, theirs, the new merge commit, or ``None`` on conflict or dry run);
    ``tree``: the merged tree (``None`` unless merged); ``conflicts``: list of
    :class:`Conflict`; ``stats``: counts (``tensors_merged``, ``tensors_copied``,
    ``files_merged``, ``leaves_written``, ``leaves_reused``, ``bytes_read``).
    """

    kind: str
    ours: bytes | None
    theirs: bytes
    base: bytes | None = None
    commit: bytes | None = None
    tree: bytes | None = None
    conflicts: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the merge succeeded (any kind but a conflict)."""
        return self.kind != CONFLICT

    def to_dict(self) -> dict:
        """The result as JSON-ready data (CIDs as strings or ``None``, conflicts as ``{path,
        tensor, reason}``), for ``tvcfs merge --json``."""
        c = lambda x: cid_str(x) if x else None  # noqa: E731
        return {"kind": self.kind, "ours": c(self.ours), "theirs": c(self.theirs), "base": c(self.base),
                "commit": c(self.commit), "tree": c(self.tree),
                "conflicts": [{"path": x.path, "tensor": x.tensor, "reason": x.reason} for x in self.conflicts],
                "stats": self.stats}


class StrategyRules:
    """Which strategy resolves a tensor or file changed on both sides.

    ``default``: a :class:`Strategy` or ``None`` (no default: conflict); ``rules``:
    ``[(glob, Strategy)]`` tried in order, first match wins. A tensor matches when the
    glob matches its name or ``PATH:NAME``; a whole file (or a ``__metadata__`` key)
    when the glob matches its path (``fnmatch.fnmatchcase``).
    """

    def __init__(self, default: Strategy | None = None, rules: Sequence[tuple[str, Strategy]] = ()):
        self.default = default
        self.rules = list(rules)

    @classmethod
    def from_specs(cls, specs: Iterable[str] | str | None = None,
                   params: Mapping[str, object] | Iterable[str] | None = None) -> "StrategyRules":
        """Build from CLI-style specs (``"ties"``, ``"*.bias=average-ours-theirs:alpha=0.3"``;
        see :func:`~tvcfs.merge.strategies.parse_strategy_spec`) and global params
        (``{"alpha": 0.3}`` or ``["alpha=0.3"]``). The last spec without a glob is the
        default. Raises :class:`StrategyError` for bad specs, and for a global
        parameter that no given strategy accepts."""
        if isinstance(specs, str):
            specs = [specs]
        if params is not None and not isinstance(params, Mapping):
            params = parse_params(params)
        params = dict(params or {})
        default, rules = None, []
        for spec in specs or []:
            glob, s = parse_strategy_spec(spec, params)
            if glob is None:
                default = s
            else:
                rules.append((glob, s))
        used = {p.name for s in [default, *[s for _, s in rules]] if s is not None for p in s.definition.params}
        unused = sorted(set(params) - used)
        if unused:
            raise StrategyError(f"parameter(s) {', '.join(unused)} not taken by any chosen strategy")
        return cls(default, rules)

    def for_tensor(self, path: str, name: str) -> Strategy | None:
        """The strategy for tensor ``name`` of file ``path``: the first rule whose glob matches
        ``name`` or ``PATH:NAME``, else the default (``None``: conflict)."""
        for glob, s in self.rules:
            if fnmatch.fnmatchcase(name, glob) or fnmatch.fnmatchcase(f"{path}:{name}", glob):
                return s
        return self.default

    def for_file(self, path: str) -> Strategy | None:
        """The strategy for a whole file ``path``: the first rule whose glob matches it, else
        the default (``None``: conflict)."""
        for glob, s in self.rules:
            if fnmatch.fnmatchcase(path, glob):
                return s
        return self.default

    def describe(self) -> str:
        """The rules as ``tvcfs merge -s`` would spell them (``DEFAULT GLOB=STRATEGY...``), for
        messages."""
        parts = [str(self.default)] if self.default else []
        parts += [f"{g}={s}" for g, s in self.rules]
        return " ".join(parts)


# --------------------------------------------------------------------------- plans


@dataclass
class _Link:
    """Reuse an existing node: ``cid`` and its ``tsize``."""

    cid: bytes
    tsize: int


@dataclass
class _TensorOut:
    name: str
    dtype: str
    shape: tuple
    nbytes: int
    src: StoredSafetensors | None = None  # copy from this file...
    info: object = None  # ...this TensorInfo
    strategy: Strategy | None = None  # or compute from (base, ours, theirs) sides
    sides: tuple = ()  # ((StoredSafetensors, TensorInfo) | None) * 3


@dataclass
class _FilePlan:
    path: str
    tensors: list
    metadata: dict
    mode: int | None


@dataclass
class _DirPlan:
    entries: list  # [(name, _Link | _DirPlan | _FilePlan)]


def _side_desc(present_b, present_o, present_t) -> str:
    if not present_o and present_t:
        return "deleted by us, modified by them" if present_b else "added by them only"
    if present_o and not present_t:
        return "modified by us, deleted by them" if present_b else "added by us only"
    return "changed on both sides" if present_b else "added on both sides with different content"


def _pick(s: Strategy, b, o, t):
    return {"ours": o, "theirs": t, "base": b}[s.passthrough]


class _Planner:
    def __init__(self, get: Getter, rules: StrategyRules):
        self.get = get
        self.rules = rules
        self.conflicts: list[Conflict] = []

    # directories --------------------------------------------------------------
    def links(self, cid):
        return {} if cid is None else {link.name: link for link in dir_links(self.get, cid)}

    def kind(self, link):
        return None if link is None else stat_node(self.get, link.hash, link.name, link.tsize).kind

    def tree(self, b, o, t, prefix: str = "") -> _DirPlan:
        lb, lo, lt = self.links(b), self.links(o), self.links(t)
        entries = []
        for name in sorted(set(lb) | set(lo) | set(lt), key=lambda s: s.encode()):
            xb, xo, xt = lb.get(name), lo.get(name), lt.get(name)
            hb, ho, ht = (x.hash if x is not None else None for x in (xb, xo, xt))
            path = prefix + name
            if ho == ht:
                chosen = xo
            elif ho == hb:
                chosen = xt
            elif ht == hb:
                chosen = xo
            else:
                plan = self.both_changed(path, xb, xo, xt)
                if plan is not None:
                    entries.append((name, plan))
                continue
            if chosen is not None:
                entries.append((name, _Link(chosen.hash, chosen.tsize)))
        return _DirPlan(entries)

    def both_changed(self, path, xb, xo, xt):
        kb, ko, kt = self.kind(xb), self.kind(xo), self.kind(xt)
        if ko == kt == KIND_DIR:
            return self.tree(xb.hash if kb == KIND_DIR else None, xo.hash, xt.hash, path + "/")
        if ko == kt == KIND_FILE:
            so = open_safetensors(self.get, xo.hash)
            st = open_safetensors(self.get, xt.hash) if so is not None else None
            sb = open_safetensors(self.get, xb.hash) if (st is not None and kb == KIND_FILE) else None
            if so is not None and st is not None and (kb != KIND_FILE or sb is not None):
                return self.safetensors(path, sb, so, st)
        s = self.rules.for_file(path)
        if s is not None and s.passthrough:
            x = _pick(s, xb, xo, xt)
            return None if x is None else _Link(x.hash, x.tsize)
        why = _side_desc(xb is not None, xo is not None, xt is not None)
        if ko and kt and ko != kt:
            why = f"{ko} in ours, {kt} in theirs"
        elif ko == kt == KIND_FILE:
            why += " (not safetensors; use strategy ours/theirs/base)"
        self.conflicts.append(Conflict(path, None, why))
        return None

    # safetensors ---------------------------------------------------------------
    def safetensors(self, path, sb: StoredSafetensors | None, so: StoredSafetensors, st: StoredSafetensors):
        names = list(so.tensors) + [n for n in st.tensors if n not in so.tensors]
        if sb is not None:
            names += [n for n in sb.tensors if n not in so.tensors and n not in st.tensors]
        out = []

        def eq(x, y):
            if x is None or y is None:
                return x is None and y is None
            return tensors_equal(x[0], x[1], y[0], y[1])

        for name in names:
            b = (sb, sb.tensors[name]) if sb is not None and name in sb.tensors else None
            o = (so, so.tensors[name]) if name in so.tensors else None
            t = (st, st.tensors[name]) if name in st.tensors else None
            if eq(o, t):
                chosen = o
            elif eq(o, b):
                chosen = t
            elif eq(t, b):
                chosen = o
            else:
                s = self.rules.for_tensor(path, name)
                if s is None:
                    self.conflicts.append(Conflict(path, name, _side_desc(b is not None, o is not None, t is not None)
                                                   + " (no strategy)"))
                    continue
                if s.passthrough:
                    chosen = _pick(s, b, o, t)
                else:
                    plan = self.compute(path, name, s, b, o, t)
                    if plan is not None:
                        out.append(plan)
                    continue
            if chosen is not None:
                f, ti = chosen
                out.append(_TensorOut(name, ti.dtype, tuple(ti.shape), ti.nbytes, src=f, info=ti))
        meta = self.metadata(path, sb, so, st)
        mode = EXEC_FILE_MODE if so.index.mode & 0o111 else None
        return _FilePlan(path, out, meta, mode)

    def compute(self, path, name, s: Strategy, b, o, t):
        why = None
        if o is None or t is None:
            why = _side_desc(b is not None, o is not None, t is not None)
        else:
            to, tt = o[1], t[1]
            if tuple(to.shape) != tuple(tt.shape):
                why = f"shape mismatch: ours {list(to.shape)}, theirs {list(tt.shape)}"
            elif to.dtype != tt.dtype:
                why = f"dtype mismatch: ours {to.dtype}, theirs {tt.dtype}"
            elif to.dtype not in dtypes.DTYPES or not dtypes.is_float(to.dtype):
                why = f"dtype {to.dtype} cannot be merged arithmetically"
            elif s.needs_base and b is None:
                why = "added on both sides, and strategy needs the merge base"
            elif s.needs_base and tuple(b[1].shape) != tuple(to.shape):
                why = f"shape mismatch with the base: base {list(b[1].shape)}, ours/theirs {list(to.shape)}"
            elif b is not None and b[1].dtype not in dtypes.DTYPES and s.needs_base:
                why = f"base dtype {b[1].dtype} unsupported"
        if why:
            self.conflicts.append(Conflict(path, name, f"{why} (strategy {s.name})"))
            return None
        if b is not None and (tuple(b[1].shape) != tuple(o[1].shape) or b[1].dtype not in dtypes.DTYPES):
            b = None  # strategies that do not need the base get none if it does not fit
        ti = o[1]
        return _TensorOut(name, ti.dtype, tuple(ti.shape), ti.nbytes, strategy=s, sides=(b, o, t))

    def metadata(self, path, sb, so, st) -> dict:
        mb = sb.metadata if sb is not None else {}
        mo, mt = so.metadata, st.metadata
        out = {}
        for k in list(mo) + [k for k in mt if k not in mo] + [k for k in mb if k not in mo and k not in mt]:
            vb, vo, vt = mb.get(k), mo.get(k), mt.get(k)
            if vo == vt:
                v = vo
            elif vo == vb:
                v = vt
            elif vt == vb:
                v = vo
            else:
                s = self.rules.for_file(path)
                if s is not None and s.passthrough:
                    v = {"ours": vo, "theirs": vt, "base": vb}[s.passthrough]
                else:
                    self.conflicts.append(Conflict(path, f"__metadata__.{k}",
                                                   f"metadata changed on both sides: ours {vo!r}, theirs {vt!r}"))
                    continue
            if v is not None:
                out[k] = v
        return out


def plan_tree_merge(get: Getter, base_tree: bytes | None, ours_tree: bytes, theirs_tree: bytes,
                    rules: StrategyRules) -> tuple[_DirPlan, list]:
    """Plan the three-way merge of three directory DAGs (binary CIDs, ``base_tree``
    may be ``None``). Reads directory nodes and safetensors headers only. Returns
    ``(plan, conflicts)``; the plan is written by :func:`write_plan`."""
    p = _Planner(get, rules)
    plan = p.tree(base_tree, ours_tree, theirs_tree)
    return plan, p.conflicts


# --------------------------------------------------------------------------- writing


def _header_bytes(fp: _FilePlan) -> tuple[bytes, list]:
    """The safetensors header (8-byte length + JSON padded with spaces to a multiple
    of 8, as the safetensors library writes it) and the tensors' data offsets."""
    obj = {}
    if fp.metadata:
        obj["__metadata__"] = fp.metadata
    offsets = []
    pos = 0
    for t in fp.tensors:
        obj[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
        offsets.append(pos)
        pos += t.nbytes
    js = json.dumps(obj, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return len(js).to_bytes(8, "little") + js, offsets


def _read_f32(side) -> np.ndarray | None:
    if side is None:
        return None
    f, ti = side
    return dtypes.to_float32(f.read(ti), ti.dtype, ti.shape)


def _used_sides(t: _TensorOut) -> tuple:
    """The planned sides, without the base when the strategy does not use it."""
    b, o, th = t.sides
    return (b if t.strategy.needs_base else None), o, th


class _Stream:
    """Computes a merged tensor piece by piece with a streamable strategy.

    ``piece(lo, hi)`` returns bytes ``[lo, hi)`` of the merged tensor (in its dtype):
    the covering element range of each used side is taken as a view (zero-copy from
    ``reader``'s map when given), decoded to float32 (F32 needs no copy; other dtypes
    go into a reused buffer per side), combined by the strategy's streamer and
    encoded; the sides' map pages are then dropped from the process. Memory: one
    float32 buffer per side of the largest piece plus the strategy's temporaries
    for it (a few MiB for 1 MiB leaves). A two-pass strategy first reads the sides
    once in pieces for its whole-tensor statistics (``slerp``: norms and dot
    product; ``ties``: magnitude thresholds, which hold 4 bytes per element per side
    meanwhile). Raises what the strategy raises.
    """

    def __init__(self, t: _TensorOut, reader: DataReader | None, stats: dict):
        self.tensor = t
        self.sides = _used_sides(t)
        self.reader = reader
        self.stats = stats
        self.isz = dtypes.itemsize(t.dtype)
        self.bufs: list = [None, None, None]
        n = numel(t.shape)
        state = None
        if t.strategy.two_pass:  # slerp's norms, ties' thresholds: a first pass over the sides
            acc = t.strategy.first_pass(t.name, n)
            step = SUM_BLOCK * 32  # pieces start on SUM_BLOCK boundaries, as slerp's pass requires
            for e0 in range(0, n, step):
                raws, arrs = zip(*(self._side(k, e0, min(n, e0 + step)) for k in range(3)))
                acc.feed(*arrs, e0)
                self._drop(*raws)
            state = acc.result()
        self.fn = t.strategy.streamer(t.name, n, state)

    def _drop(self, *raws) -> None:
        if self.reader is not None:
            for r in raws:
                if r is not None:
                    self.reader.dontneed(r)

    def _side(self, k: int, e0: int, e1: int):
        side = self.sides[k]
        if side is None:
            return None, None
        f, ti = side
        isz = dtypes.itemsize(ti.dtype)
        raw = f.view(ti, e0 * isz, (e1 - e0) * isz, self.reader.get if self.reader else None)
        self.stats["bytes_read"] += (e1 - e0) * isz
        if ti.dtype == "F32":
            return raw, dtypes.decode(raw, "F32")
        if self.bufs[k] is None or self.bufs[k].size < e1 - e0:
            self.bufs[k] = np.empty(e1 - e0, dtype=np.float32)
        return raw, dtypes.decode_into(raw, ti.dtype, self.bufs[k])

    def piece(self, lo: int, hi: int) -> bytes:
        e0, e1 = lo // self.isz, -(-hi // self.isz)
        raws, arrs = zip(*(self._side(k, e0, e1) for k in range(3)))
        out = dtypes.from_float32(self.fn(*arrs, e0), self.tensor.dtype)
        self._drop(*raws)
        a = lo - e0 * self.isz
        return out[a:a + hi - lo]


class _Writer:
    def __init__(self, txn, stats: dict, reader: DataReader | None = None):
        self.txn = txn
        self.stats = stats
        self.reader = reader

    def leaf(self, data) -> tuple[bytes, int]:
        cid = make_cid(RAW, data)
        self.txn.put_block(cid, data)
        self.stats["leaves_written"] += 1
        return cid, len(data)

    def node(self, plan) -> tuple[bytes, int]:
        if isinstance(plan, _Link):
            return plan.cid, plan.tsize
        if isinstance(plan, _DirPlan):
            entries = [(name, *self.node(p)) for name, p in plan.entries]
            cid, tsize, blocks = build_directory_dag(entries)
            for c, b in blocks:
                self.txn.put_block(c, b)
            return cid, tsize
        return self.file(plan)

    def computed(self, t: _TensorOut) -> bytes:
        """The whole merged tensor's bytes (strategies that are not streamable)."""
        sides = _used_sides(t)
        b, o, th = (_read_f32(s) for s in sides)
        self.stats["bytes_read"] += sum(s[1].nbytes for s in sides if s is not None)
        out = t.strategy(b, o, th, key=t.name)
        del b, o, th
        self.stats["tensors_merged"] += 1
        return dtypes.from_float32(out.reshape(t.shape), t.dtype)

    def file(self, fp: _FilePlan) -> tuple[bytes, int]:
        hdr, offsets = _header_bytes(fp)
        data_start = len(hdr)
        size = data_start + sum(t.nbytes for t in fp.tensors)
        spans = tensor_spans(parse_header(hdr, size), size, MAX_LEAF)
        # regions in file order: (start, end, tensor)
        regions = [(data_start + off, data_start + off + t.nbytes, t) for off, t in zip(offsets, fp.tensors)
                   if t.nbytes]
        ri = 0
        cache: dict = {}  # per computed region index: its _Stream or whole bytes, dropped when passed
        leaves = []
        for off, ln in spans:
            end = off + ln
            while ri < len(regions) and regions[ri][1] <= off:
                cache.pop(ri, None)
                ri += 1
            # a span inside one copied tensor that matches a source leaf: reuse its CID
            if ri < len(regions):
                rs, re_, t = regions[ri]
                if t.src is not None and rs <= off and end <= re_:
                    ids = t.src.leaf_ids(t.info, off - rs, ln)
                    if ids is not None and len(ids) == 1:
                        leaves.append((ids[0], ln))
                        self.stats["leaves_reused"] += 1
                        continue
            parts = []
            pos = off
            if pos < data_start:
                parts.append(hdr[pos:min(end, data_start)])
                pos = min(end, data_start)
            j = ri
            while pos < end:
                rs, re_, t = regions[j]
                if pos < rs:  # cannot happen: tensors are contiguous
                    raise AssertionError("gap in merged safetensors layout")
                hi = min(end, re_)
                if t.src is not None:
                    parts.append(t.src.read(t.info, pos - rs, hi - pos))
                    self.stats["bytes_read"] += hi - pos
                else:
                    if j not in cache:
                        if t.strategy.streamable:
                            cache[j] = _Stream(t, self.reader, self.stats)
                            self.stats["tensors_merged"] += 1
                        else:
                            cache[j] = self.computed(t)
                    c = cache[j]
                    parts.append(c.piece(pos - rs, hi - rs) if isinstance(c, _Stream) else c[pos - rs:hi - rs])
                pos = hi
                if pos == re_:
                    j += 1
            leaves.append(self.leaf(b"".join(parts) if len(parts) != 1 else parts[0]))
        for t in fp.tensors:
            if t.src is not None:
                self.stats["tensors_copied"] += 1
        self.stats["files_merged"] += 1
        root, tsize, blocks = build_file(leaves or [self.leaf(b"")], fp.mode)
        for c, blk in blocks:
            self.txn.put_block(c, blk)
        return root, tsize


def _new_stats() -> dict:
    return {"files_merged": 0, "tensors_merged": 0, "tensors_copied": 0, "leaves_written": 0,
            "leaves_reused": 0, "bytes_read": 0}


def write_plan(txn, plan: _DirPlan, stats: dict | None = None, reader: DataReader | None = None) -> tuple[bytes, int]:
    """Write a planned tree into the open write transaction ``txn`` (a
    :class:`~tvcfs.store.lmdb_store.WriteTxn`). ``reader``: a
    :class:`~tvcfs.merge.stview.DataReader` through which streamed tensors read the
    sides zero-copy (default: the planned files' getters). Returns ``(tree_cid, tsize)``."""
    w = _Writer(txn, stats if stats is not None else _new_stats(), reader)
    return w.node(plan)


# --------------------------------------------------------------------------- repository


def _is_ancestor(repo, anc: bytes, desc: bytes) -> bool:
    return anc == desc or anc in set(repo.ancestors([desc]))


def _ieee(fn):
    """Run ``fn`` with numpy's floating-point warnings off: a merge computes IEEE
    arithmetic on whatever the tensors hold (NaN, ±inf: a NaN or inf result is the
    answer, as torch gives it), and a Python ``RuntimeWarning`` with a source line is
    not a message for the command line."""
    @functools.wraps(fn)
    def quiet(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return quiet


@_ieee
def merge(repo, theirs, *, branch: str | None = None, strategies: StrategyRules | Iterable[str] | str | None = None,
          params: Mapping[str, object] | Iterable[str] | None = None, message: str | None = None, author=None,
          no_ff: bool = False, dry_run: bool = False, timestamp: int | None = None) -> MergeResult:
    """Merge revision ``theirs`` into ``branch`` (default: HEAD's branch) of ``repo``.

    ``strategies``: a :class:`StrategyRules` or CLI-style specs (see
    :meth:`StrategyRules.from_specs`); ``params``: global strategy parameters.
    ``no_ff``: make a merge commit even when a fast-forward is possible.
    ``dry_run``: plan only (conflicts are reported, nothing is written).
    Returns a :class:`MergeResult`; a conflict writes nothing. Raises
    :class:`~tvcfs.errors.RevisionNotFound` for bad revisions,
    :class:`StrategyError` for bad strategy specs, :class:`~tvcfs.errors.RefConflict`
    if the branch moved during the merge, :class:`TvcfsError` for a detached HEAD.
    """
    from ..refs import HEADS

    rules = strategies if isinstance(strategies, StrategyRules) else StrategyRules.from_specs(strategies, params)
    branch = branch or repo.head_branch()
    if not branch:
        raise TvcfsError("HEAD is detached: name the branch to merge into")
    theirs_cid = theirs if isinstance(theirs, bytes) else repo.resolve(theirs)
    ours_cid = repo.ref_db.get(HEADS + branch)
    if ours_cid is None:  # unborn branch: fast-forward to theirs
        if not dry_run:
            repo.update_ref(HEADS + branch, theirs_cid, None, message=f"merge {theirs}: fast-forward")
        return MergeResult(FAST_FORWARD, None, theirs_cid, None, None if dry_run else theirs_cid)
    if _is_ancestor(repo, theirs_cid, ours_cid):
        return MergeResult(UP_TO_DATE, ours_cid, theirs_cid, theirs_cid, ours_cid)
    base = repo.merge_base(ours_cid, theirs_cid)
    if base == ours_cid and not no_ff:
        if not dry_run:
            repo.update_ref(HEADS + branch, theirs_cid, ours_cid, message=f"merge {theirs}: fast-forward")
        return MergeResult(FAST_FORWARD, ours_cid, theirs_cid, base, None if dry_run else theirs_cid)
    tb = repo.read_commit(base).tree if base else None
    to, tt = repo.read_commit(ours_cid).tree, repo.read_commit(theirs_cid).tree
    plan, conflicts = plan_tree_merge(repo.get, tb, to, tt, rules)
    if conflicts:
        return MergeResult(CONFLICT, ours_cid, theirs_cid, base, None, None, conflicts)
    stats = _new_stats()
    if dry_run:
        return MergeResult(MERGED, ours_cid, theirs_cid, base, None, None, [], stats)
    name = theirs if isinstance(theirs, str) else cid_str(theirs_cid)
    msg = message or f"Merge {name} into {branch}"
    meta = {"merge-strategies": rules.describe()} if rules.describe() else {}
    holder = {}

    def build(imp):
        with data_reader(repo.store, repo.blocks) as reader:
            tree, _ = write_plan(imp.txn, plan, stats, reader)
        holder["tree"] = tree
        return tree

    res = repo.commit_build(build, branch, msg, author, ours_cid, timestamp, True, meta, [ours_cid, theirs_cid])
    return MergeResult(MERGED, ours_cid, theirs_cid, base, res.cid, holder["tree"], [], stats)
