"""Packing: older history moves into the packed encodings, like git's packing of loose
objects (docs/repository.md, "Packing"; the encodings: docs/format.md, "Packed blocks").

What the mount and checkouts of the newest commits read stays raw (*hot*): every block
reachable from the newest ``keep_hot`` commits of each branch and tag (first-parent
line). The raw leaves of every other commit reachable from a ref are packed, commit by
commit in topological order (parents first):

* a leaf of a safetensors tensor gets as delta base the leaf at the same offset of the
  tensor of the same name, dtype and shape in a neighbouring commit — the commit's
  named delta base (``tvcfs commit --delta-base REV``: metadata ``delta_base``), its
  parents, its children — whose encoding is already settled (hot, or packed earlier in
  this run), the shallowest such base first; the same path is preferred, then the
  same tensor name in any file (a renamed file);
* it is then stored as the smallest of: the XOR with the base, byte-grouped, zstd;
  byte-grouped zstd (element size from the dtype); or raw when neither saves 5 %;
* other leaves (headers, configs, tokenizers) get plain zstd when it pays.

Delta chains stay at most :data:`~tvcfs.store.encodings.MAX_DEPTH` long: a base's
depth is known when it is chosen, and a block that stored deltas already use as base
is only ever stored self-contained (the store refuses otherwise). Packed blocks that
became hot are stored raw again. Every value is decoded and compared with the block
before it replaces it, in the same write transaction that checks its base is there.
"""

from __future__ import annotations

import bisect
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .chunking.safetensors import NotSafetensors, read_header_with
from .dag import FileIndex, KIND_DIR, KIND_FILE
from .encoding.cid import DAG_CBOR, RAW, cid_codec, cid_from_str, cid_str
from .errors import CorruptBlock, TvcfsError
from .store import encodings

DELTA_BASE_KEY = "delta_base"  # commit metadata: the CID (text) of a fine-tune's base commit


@dataclass(frozen=True)
class Leaf:
    """One raw leaf of a file: ``cid``, ``size`` (bytes), and when it lies in a tensor
    ``path``, ``tensor`` (name), ``dtype``, ``shape``, ``rel`` (its offset in the
    tensor, bytes) and ``elem`` (element size used for byte grouping, 1 otherwise)."""

    cid: bytes
    size: int
    path: str = ""
    tensor: str | None = None
    dtype: str = ""
    shape: tuple = ()
    rel: int = 0
    elem: int = 1

    @property
    def key(self):
        """``(tensor, dtype, shape, rel)``: the leaf's place in its tensor, matched across
        commits to find its delta base."""
        return (self.tensor, self.dtype, self.shape, self.rel)


def _elem(dtype: str) -> int:
    from .dtypes import UnsupportedDTypeError, itemsize

    try:
        n = itemsize(dtype)
    except UnsupportedDTypeError:
        return 1
    return n if n in (1, 2, 4, 8) else 1


def file_leaves(get, cid: bytes, path: str = "") -> list:
    """The raw leaves of file ``cid`` as :class:`Leaf` objects, with their tensors when
    the file is safetensors (read from its header leaves). ``get(cid) -> bytes``."""
    idx = FileIndex.build(get, cid)
    tensors = []
    try:
        hdr = read_header_with(lambda o, n: idx.read(get, o, n), idx.size)
        tensors = [t for t in hdr.tensors if t.end > t.start]
    except NotSafetensors:
        pass
    starts = [t.start for t in tensors]
    out = []
    for i, (c, s, n) in enumerate(zip(idx.leaves, idx.starts, idx.sizes)):
        if i in idx.inline or cid_codec(c) != RAW:
            continue
        k = bisect.bisect_right(starts, s) - 1
        t = tensors[k] if k >= 0 else None
        if t is not None and t.start <= s and s + n <= t.end:
            e = _elem(t.dtype)
            rel = s - t.start
            out.append(Leaf(c, n, path, t.name, t.dtype, t.shape, rel, e if rel % e == 0 else 1))
        else:
            out.append(Leaf(c, n, path))
    return out


class Layout:
    """The leaves of one commit's files: ``leaves`` (every :class:`Leaf`), and lookups
    of tensor leaves by ``(path, tensor, dtype, shape, rel)`` and by
    ``(tensor, dtype, shape, rel)``."""

    def __init__(self, leaves: list):
        self.leaves = leaves
        self.by_path, self.by_name = {}, {}
        for lf in leaves:
            if lf.tensor is not None:
                self.by_path.setdefault((lf.path, *lf.key), lf.cid)
                self.by_name.setdefault(lf.key, lf.cid)

    def match(self, lf: Leaf) -> bytes | None:
        """The CID of the leaf matching ``lf`` (same path first), or ``None``."""
        if lf.tensor is None:
            return None
        return self.by_path.get((lf.path, *lf.key)) or self.by_name.get(lf.key)


class Layouts:
    """``layouts(commit CID) -> Layout`` of the commits in ``commits`` (CID →
    :class:`~tvcfs.encoding.commit.Commit`), cached, with the leaves of each file
    read once however many commits hold it."""

    def __init__(self, repo, commits: dict):
        self.repo, self.commits = repo, commits
        self.layouts: dict = {}
        self.files: dict = {}

    def __call__(self, c: bytes) -> Layout:
        lay = self.layouts.get(c)
        if lay is None:
            leaves = []
            for path, f in _walk_tree(self.repo, self.commits[c].tree):
                if f not in self.files:
                    self.files[f] = file_leaves(self.repo.get, f, path)
                fl = self.files[f]
                leaves.extend(fl if fl[:1] and fl[0].path == path else
                              [Leaf(x.cid, x.size, path, x.tensor, x.dtype, x.shape, x.rel, x.elem)
                               for x in fl])
            lay = self.layouts[c] = Layout(leaves)
        return lay


@dataclass
class PackResult:
    """What :func:`pack` did: ``commits`` (considered), ``hot_commits``,
    ``packed`` blocks (``deltas`` of them against a base), ``kept_raw`` (encoding did
    not pay), ``unpacked`` (hot again), ``raw_bytes`` of the blocks packed and their
    ``stored_bytes`` after, ``saved`` bytes in total (negative: grew); ``keep_hot``:
    the newest commits of each branch and tag that stayed raw (the setting used)."""

    commits: int = 0
    hot_commits: int = 0
    packed: int = 0
    deltas: int = 0
    kept_raw: int = 0
    unpacked: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    saved: int = 0
    keep_hot: int = 1

    def as_dict(self) -> dict:
        """The counters as a plain ``dict`` (for ``--json``)."""
        return dict(vars(self))


def _walk_tree(repo, tree: bytes):
    """``(path, file CID)`` of every file below ``tree``."""
    from .dag import read_dir

    stack = [("", tree)]
    while stack:
        prefix, c = stack.pop()
        for name, e in read_dir(repo.get, c).items():
            if e.kind == KIND_DIR:
                stack.append((prefix + name + "/", e.cid))
            elif e.kind == KIND_FILE:
                yield prefix + name, e.cid


def reachable_blocks(repo, roots) -> set:
    """Every block CID below ``roots`` (commits: their trees only, not their parents)."""
    from .gc import mark

    return mark(repo, roots, parents=False)


def commit_graph(repo, heads) -> tuple[dict, dict, list]:
    """``(commits, children, order)`` for every commit reachable from ``heads``:
    ``commits`` CID → :class:`~tvcfs.encoding.commit.Commit`; ``children`` CID → the
    commits that have it as parent or as named delta base; ``order`` topological over
    both relations (parents and delta bases first; ties by timestamp, then CID)."""
    import heapq

    commits = {c: repo.read_commit(c) for c in repo.ancestors(heads, missing_ok=True)}
    children: dict = {c: [] for c in commits}
    indeg = {}
    for c, com in commits.items():
        ps = {p for p in [*com.parents, delta_base_of(com)] if p in commits and p != c}
        indeg[c] = len(ps)
        for p in ps:
            children[p].append(c)
    ready = [(commits[c].timestamp, c) for c, n in indeg.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, c = heapq.heappop(ready)
        order.append(c)
        for ch in children[c]:
            indeg[ch] -= 1
            if indeg[ch] == 0:
                heapq.heappush(ready, (commits[ch].timestamp, ch))
    if len(order) < len(commits):  # a delta base named by its own ancestor: a cycle
        done = set(order)
        order += sorted((c for c in commits if c not in done), key=lambda c: (commits[c].timestamp, c))
    return commits, children, order


def hot_commits(repo, commits: dict, keep_hot: int) -> set:
    """The newest ``keep_hot`` commits of every branch and tag (first-parent line)."""
    hot: set = set()
    if keep_hot <= 0:
        return hot
    for name, c in repo.refs().items():
        if not (name.startswith("refs/heads/") or name.startswith("refs/tags/")):
            continue
        for _ in range(keep_hot):
            if c not in commits:
                break
            hot.add(c)
            ps = commits[c].parents
            if not ps:
                break
            c = ps[0]
    return hot


def delta_base_of(com) -> bytes | None:
    """The named delta base of a commit (metadata ``delta_base``), or ``None``."""
    v = (com.metadata or {}).get(DELTA_BASE_KEY)
    if isinstance(v, str):
        try:
            return cid_from_str(v)
        except TvcfsError:
            return None
    return None


def _encode_task(store, lf: Leaf, base: bytes | None, base_depth: int):
    """Encode leaf ``lf`` (against ``base``): ``(cid, value | None)``; the value is
    decoded again and compared with the block before it is returned."""
    with store.view() as v:
        data = v.get(lf.cid)
        if data is None:
            return lf.cid, None
        bdata = v.get(base) if base is not None else None
        data = bytes(data)
        if base is not None and bdata is None:
            base = None
        value = encodings.encode(data, lf.elem, base, bdata, base_depth, version=encodings.LOCAL_VERSION)
        if value is not None and encodings.decode(value, bdata) != data:
            raise CorruptBlock(f"packing {cid_str(lf.cid)} did not round-trip (a bug in tvcfs): "
                               "nothing was changed")
    return lf.cid, value


def pack(repo, keep_hot: int | None = None, progress=None, threads: int | None = None, hot=()) -> PackResult:
    """Pack the history of ``repo`` (see the module docstring). ``keep_hot``: how many
    newest commits of each branch and tag stay raw (0: pack everything; ``None``: the
    repository's ``pack.keep_hot`` setting, 1 unless set); ``hot``:
    more commits (binary CIDs) whose blocks stay raw (``tvcfs pack --hot REV``).
    ``progress(done bytes, total bytes, phase)``. Returns a :class:`PackResult`.
    Raises :class:`~tvcfs.store.lmdb_store.StoreFull` (nothing changed by the failed
    batch), :class:`CorruptBlock` when a block does not decode, :class:`TvcfsError`
    for a negative ``keep_hot`` (nothing changed)."""
    from .repo import PACKED_FORMAT

    if keep_hot is None:
        keep_hot = repo.config.get("pack.keep_hot")
    if keep_hot < 0:
        from .errors import TvcfsError

        raise TvcfsError(f"--keep-hot takes a number of commits (0, 1, 2, ...), not {keep_hot}")
    res = PackResult(keep_hot=keep_hot)
    store = repo.store
    # a tvcfs that cannot decode packed blocks must refuse this repository, not call
    # its packed blocks missing: mark the format before the first one is written
    repo.config.update("format", lambda fmt: max(fmt or 1, PACKED_FORMAT))
    heads = [c for c in repo.refs().values() if cid_codec(c) == DAG_CBOR]
    commits, children, order = commit_graph(repo, heads)
    res.commits = len(commits)
    hot = hot_commits(repo, commits, keep_hot) | {c for c in hot if c in commits}
    res.hot_commits = len(hot)
    hot_blocks = reachable_blocks(repo, hot)

    # packed blocks that are hot again go back to raw
    with store.view(verify=False) as v:
        back = [c for c in hot_blocks if cid_codec(c) == RAW and v.is_packed(c)]
    if back:
        with store.write() as w:
            for c in back:
                res.saved -= w.unpack_block(c)
                res.unpacked += 1

    layout = Layouts(repo, commits)
    depth: dict = {c: 0 for c in hot_blocks}  # settled blocks: CID -> delta depth
    cold = [c for c in order if c not in hot]
    total = sum(lf.size for c in cold for lf in layout(c).leaves)
    done = 0
    pool = ThreadPoolExecutor(max_workers=threads or min(4, os.cpu_count() or 2),
                              thread_name_prefix="tvcfs-pack")
    try:
        for c in cold:
            com = commits[c]
            neigh = [x for x in [delta_base_of(com), *com.parents, *children[c]]
                     if x is not None and x in commits]
            todo = []
            with store.view(verify=False) as v:
                for lf in layout(c).leaves:
                    done += lf.size
                    if lf.cid in depth:
                        continue
                    info = v.info(lf.cid)
                    if info is None:
                        continue  # not held (a lazy clone)
                    if info.encoding != "raw":
                        depth[lf.cid] = info.depth
                        continue
                    base, bd = None, None
                    if lf.tensor is not None and not v.dependents(lf.cid):
                        for n in neigh:
                            y = layout(n).match(lf)
                            yd = depth.get(y, -1) if y is not None and y != lf.cid else -1
                            if 0 <= yd < encodings.MAX_DEPTH and (bd is None or yd < bd):
                                base, bd = y, yd
                    depth[lf.cid] = -1  # claimed: settled by _apply
                    todo.append((lf, base, bd or 0))
            for i in range(0, len(todo), 256):
                _apply(store, pool, todo[i:i + 256], depth, res)
            if progress is not None:
                progress(done, total, "packing")
    finally:
        pool.shutdown()
    store.sync()
    return res


def _apply(store, pool, todo: list, depth: dict, res: PackResult) -> None:
    """Encode ``todo`` (``(Leaf, base, base depth)``) on the pool, then store the values
    in one write transaction."""
    results = list(pool.map(lambda t: _encode_task(store, *t), todo))
    with store.write(sync=False) as w:
        for (lf, base, bd), (cid, value) in zip(todo, results):
            if value is None:
                depth[cid] = 0
                res.kept_raw += 1
                continue
            if w.info(cid) is None:  # deleted meanwhile (a gc in another process)
                continue
            h = encodings.header(value)
            if h.base is not None and (w.base_depth(h.base) is None or w.dependents(cid)):
                depth[cid] = 0  # the base went away, or the block became a base: keep raw
                res.kept_raw += 1
                continue
            delta = w.pack_block(cid, value)
            res.saved -= delta
            res.packed += 1
            res.deltas += h.base is not None
            res.raw_bytes += lf.size
            res.stored_bytes += len(value)
            depth[cid] = h.depth


def _stored(v, cids) -> tuple[int, int, dict]:
    """``(raw bytes, stored bytes, {encoding: count})`` of the blocks ``cids`` held
    (blocks not held count nowhere)."""
    raw = stored = 0
    encs: dict = {}
    for c in cids:
        try:
            info = v.info(c)
        except CorruptBlock:
            info = None
        if info is None:
            continue
        raw += info.raw
        stored += info.stored
        encs[info.encoding] = encs.get(info.encoding, 0) + 1
    return raw, stored, encs


def commit_storage(repo, commit: bytes) -> dict:
    """Stored bytes of a commit, raw and encoded: ``{"blocks", "raw", "stored",
    "new_blocks", "new_raw", "new_stored", "encodings", "files"}`` where ``new_*``
    count the blocks no parent's tree has (what this commit added to the store),
    ``encodings`` counts the new blocks per encoding, and ``files`` is a list of
    ``{"path", "raw", "stored", "new_raw", "new_stored"}`` (bytes of all leaves, of
    the new ones). Blocks not held locally (a lazy clone) count nowhere."""
    com = repo.read_commit(commit)
    mine = reachable_blocks(repo, [commit])
    old = reachable_blocks(repo, com.parents) if com.parents else set()
    new = mine - old
    files = []
    with repo.store.view(verify=False) as v:
        total = _stored(v, mine)
        added = _stored(v, new)
        for path, f in sorted(_walk_tree(repo, com.tree)):
            leaves = set(reachable_blocks(repo, [f]))
            r, s, _ = _stored(v, leaves)
            nr, ns, _ = _stored(v, leaves & new)
            files.append({"path": path, "raw": r, "stored": s, "new_raw": nr, "new_stored": ns})
    return {"blocks": len(mine), "raw": total[0], "stored": total[1], "new_blocks": len(new),
            "new_raw": added[0], "new_stored": added[1], "encodings": added[2], "files": files}


def tensor_storage(repo, file_cid: bytes) -> dict:
    """``{tensor name: {"raw", "stored", "encodings"}}`` for the tensors of safetensors
    file ``file_cid`` (bytes of their leaves as held; ``encodings``: count of leaves
    per encoding); ``{}`` for another file."""
    out: dict = {}
    leaves = file_leaves(repo.get, file_cid)
    with repo.store.view(verify=False) as v:
        for lf in leaves:
            if lf.tensor is None:
                continue
            r, s, encs = _stored(v, [lf.cid])
            d = out.setdefault(lf.tensor, {"raw": 0, "stored": 0, "encodings": {}})
            d["raw"] += r
            d["stored"] += s
            for k, n in encs.items():
                d["encodings"][k] = d["encodings"].get(k, 0) + n
    return out


# ------------------------------------------------------------------ transfer hints
@dataclass(frozen=True)
class Hint:
    """How a leaf may be encoded when it is sent or stored elsewhere: ``elem`` (bytes
    per element, for byte grouping) and ``bases`` (CIDs of candidate delta bases of
    the same length — the same tensor name, dtype, shape and offset in the commit's
    named delta base, then in its parents — best first)."""

    elem: int = 1
    bases: tuple = ()


def delta_hints(repo, heads, held=None) -> dict:
    """``{leaf CID: Hint}`` for the raw leaves of the commits reachable from ``heads``
    (binary commit CIDs) that ``held`` does not report held — what a push sends.
    ``held(list of commit CIDs) -> [bool]`` (a remote's ``has_many``; ``None``: send
    everything). Candidate bases come from :func:`delta_base_of` and the parents,
    as in :func:`pack` (same path first, then the same tensor name). Blocks not held
    locally (a lazy clone) are listed all the same; nothing is read but commits,
    directories, file indexes and safetensors headers."""
    heads = [c for c in heads if c is not None and cid_codec(c) == DAG_CBOR]
    commits, _, order = commit_graph(repo, heads)
    todo = list(order)
    if held is not None and todo:
        todo = [c for c, h in zip(todo, held(todo)) if not h]
    layout = Layouts(repo, commits)
    out: dict = {}
    for c in todo:
        com = commits[c]
        neigh = [x for x in dict.fromkeys([delta_base_of(com), *com.parents]) if x is not None and x in commits]
        for lf in layout(c).leaves:
            if lf.cid in out:
                continue
            bases = []
            if lf.tensor is not None:
                for n in neigh:
                    y = layout(n).match(lf)
                    if y is not None and y != lf.cid and y not in bases:
                        bases.append(y)
            out[lf.cid] = Hint(lf.elem, tuple(bases))
    return out


class DeltaSource:
    """What a sender needs to encode the leaves of a push: :meth:`hint` per CID (from
    :func:`delta_hints`, computed on first use) and :meth:`get` for the bytes of a base
    from the local store. ``repo``: the local repository; ``heads``: the commits being
    pushed. A store that receives one calls :meth:`attach` with its ``has_many`` so
    that commits the receiver already holds are not planned."""

    def __init__(self, repo, heads):
        self.repo = repo
        self.heads = list(heads)
        self._held = None
        self._hints: dict | None = None
        self._lock = threading.Lock()

    def attach(self, held) -> None:
        """``held(list of commit CIDs) -> [bool]``: the receiver's commits."""
        self._held = held

    def hint(self, cid: bytes) -> Hint | None:
        """The :class:`Hint` of leaf ``cid``, or ``None`` when it is no planned leaf."""
        with self._lock:
            if self._hints is None:
                self._hints = delta_hints(self.repo, self.heads, self._held)
        return self._hints.get(bytes(cid))

    def get(self, cid: bytes) -> bytes | None:
        """The raw bytes of block ``cid`` from the local store (verified), or ``None``."""
        try:
            d = self.repo.store.get(cid)
        except TvcfsError:
            return None
        return None if d is None else bytes(d)
