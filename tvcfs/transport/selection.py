"""Which blocks a DAG request selects, and which blocks a store lacks (no I/O).

The traversals behind TensorSwap's GraphSync-like requests (docs/protocol.md,
"DAG requests"): :func:`iter_selection` yields the blocks a
:class:`~.protocol.DagRequest` selects in the order the server sends them, and
:func:`missing_in_dag` the frontier of blocks a client still lacks. Both read a
:class:`~.base.BlockBackend` and nothing else; the server session
(:mod:`.session`) and the client's fetch and push use them.
"""

from __future__ import annotations

import collections

from ..encoding.cid import DAG_CBOR, DAG_PB, cid_codec
from ..errors import InvalidCID, TvcfsError
from . import protocol
from .base import BlockBackend, is_leaf, links_of

__all__ = ["held_blocks", "iter_selection", "missing_in_dag", "thin_plan"]


# Leaf indexes of files recently answered with byte-range selectors ({file CID:
# (FileIndex, interior node CIDs)}): a lazy mount asks many ranges of one file, and
# rebuilding the index of a 1 GiB file costs more than sending a leaf.
_RANGE_INDEX: collections.OrderedDict = collections.OrderedDict()


def iter_selection(backend: BlockBackend, req: protocol.DagRequest, known: set | None = None):
    """Yield ``(cid, data | None)`` for the blocks ``req`` selects, depth-first
    pre-order; ``None`` data = the server does not have it (its sub-graph is skipped).

    Each block is yielded at most once per request, however many of ``req.roots``
    (``SEL_ALL``) reach it. With ``selector.skeleton`` raw leaves are neither read
    nor yielded. Blocks in ``req.have`` are traversed but not yielded; sub-graphs
    under ``req.have_roots`` (and blocks reachable from those commits' trees) are
    pruned. ``known``: :func:`held_blocks` of ``req.have_roots`` when the caller has
    it already (a session answering many requests with the same have-roots).
    Raises ``TvcfsError`` subclasses (path not found, malformed object).
    """
    get = backend.get
    sel = req.selector
    have = set(req.have)
    if known is None:
        known = held_blocks(backend, req.have_roots)
    if sel.kind == protocol.SEL_ALL:
        yield from _walk(backend, req.roots, have, known, sel.history, leaves=not sel.skeleton)
        return
    # PATH / RANGE: the chain of nodes down to the target, then the target's sub-graph
    from ..dag import FileIndex, dir_lookup

    def visit(c):
        """``(block or None, what to send for it)``: a missing node is sent as
        ``(cid, None)``, one the client has is not sent."""
        d = get(c)
        return d, ([(c, None)] if d is None else [] if c in have else [(c, d)])

    node = req.root
    data, out = visit(node)
    yield from out
    if data is None:
        return
    if cid_codec(node) == DAG_CBOR:
        node = links_of(node, data, history=False)[0]
        data, out = visit(node)
        yield from out
        if data is None:
            return
    parts = [p for p in sel.path.strip("/").split("/") if p and p != "."]
    for part in parts:
        cache = {node: data}
        shards = []  # the HAMT shard nodes on the way to ``part`` (none in a plain directory)

        def dir_get(c):
            if c not in cache:
                b = get(c)
                if b is None:
                    from ..errors import BlockNotFound

                    raise BlockNotFound(c)
                cache[c] = b
                shards.append(c)
            return cache[c]

        link = dir_lookup(dir_get, node, part)
        for c in shards:
            if c not in have:
                yield c, cache[c]
        if link is None:
            from ..errors import PathNotFound

            raise PathNotFound(f"path not found: {sel.path}")
        node = link.hash
        data, out = visit(node)
        yield from out
        if data is None:
            return
    if sel.kind == protocol.SEL_PATH:
        yield from ((c, d) for c, d in _walk(backend, [node], have, known, False) if c != node)
        return
    # RANGE: interior nodes of the file (recorded while indexing), then leaves in range
    cached = _RANGE_INDEX.get(node)  # a lazy mount sends many ranges of one big file
    if cached is not None:
        _RANGE_INDEX.move_to_end(node)
        idx, interior = cached
        blocks = {}
    else:
        interior: list[bytes] = []
        blocks = {node: data}

        def rec_get(c):
            b = blocks.get(c)
            if b is None:
                b = get(c)
                if b is None:
                    raise KeyError(c)
                blocks[c] = b
            if c != node and cid_codec(c) == DAG_PB:
                interior.append(c)
            return b

        try:
            idx = FileIndex.build(rec_get, node)
        except KeyError as e:
            yield e.args[0], None
            return
        _RANGE_INDEX[node] = (idx, interior)  # content-addressed: valid for any store
        if len(_RANGE_INDEX) > 64:
            _RANGE_INDEX.popitem(last=False)
    for c in interior:
        if c not in have:
            yield c, blocks[c] if c in blocks else get(c)
    end = sel.end or idx.size
    for i in idx.leaf_range(sel.start, end - sel.start):
        c = idx.leaves[i]
        if i in idx.inline or c in have or c in known:
            continue
        yield c, get(c)


def held_blocks(backend, have_roots) -> set:
    """The blocks a peer holds when it holds the commits ``have_roots`` complete:
    those CIDs and every block of their trees (not their parents). Reads the
    interior nodes, never a raw leaf."""
    known: set[bytes] = set()
    for hr in have_roots:
        known.add(hr)
        data = backend.get(hr)
        if data is not None and cid_codec(hr) == DAG_CBOR:
            for c, _ in _walk(backend, links_of(hr, data, history=False)[:1], set(), set(),
                              False, read_have=False):
                known.add(c)
    return known


def thin_plan(backend, heads, have_roots, known: set | None = None) -> dict:
    """``{leaf CID: (element size, base CID)}``: how a thin transfer may send the raw
    tensor leaves of the commits reachable from ``heads`` that a peer holding the
    commits ``have_roots`` complete lacks — as the XOR with the same tensor (name,
    dtype, shape, offset) in the commit's named delta base or a parent, where that
    block is one the peer holds (:func:`held_blocks`). The candidate bases come from
    the backend's :meth:`~.base.BlockBackend.delta_hints` (the repository's adapter
    asks the packer): ``{}`` when ``backend`` has none or ``have_roots`` is empty.
    ``known``: the :func:`held_blocks` of ``have_roots`` if already computed."""
    hints = getattr(backend, "delta_hints", None)
    have_roots = [c for c in have_roots if cid_codec(c) == DAG_CBOR]
    if hints is None or not have_roots:
        return {}
    if known is None:
        known = held_blocks(backend, have_roots)
    out = {}
    for cid, h in hints(heads, have_roots).items():
        base = next((b for b in h.bases if b in known), None)
        if base is not None:
            out[cid] = (h.elem, base)
    return out


def _walk(backend, roots, have, known, history, read_have=True, leaves=True):
    # one ``seen`` set for all roots: a block they share is yielded once
    get = backend.get
    seen: set[bytes] = set()
    stack = list(reversed(roots))
    while stack:
        c = stack.pop()
        if c in seen or c in known:
            continue
        seen.add(c)
        leaf = is_leaf(c)
        if leaf and (c in have or not leaves):
            continue
        if leaf and not read_have:
            yield c, None
            continue
        data = get(c)
        if data is None:
            yield c, None
            continue
        if c not in have:
            yield c, data
        try:
            stack.extend(reversed(links_of(c, data, history)))
        except (InvalidCID, TvcfsError):
            continue


def missing_in_dag(backend: BlockBackend, root: bytes | list[bytes], complete: set[bytes],
                   history: bool = True, limit: int | None = None) -> list[bytes]:
    """CIDs under ``root`` (one CID or a list of them) that ``backend`` lacks, found
    by walking what is present; each CID once, in walk order.

    Sub-graphs under ``complete`` (commits known to be fully stored, e.g. ref
    values) are not walked. A missing block is reported, not descended into: the
    result is the *frontier* (request each with a whole-DAG selector).
    Stops after ``limit`` CIDs when given.
    """
    out: list[bytes] = []
    seen: set[bytes] = set()
    stack = [root] if isinstance(root, (bytes, bytearray)) else list(reversed(root))
    get = backend.get
    while stack:
        c = stack.pop()
        if c in seen or c in complete:
            continue
        seen.add(c)
        if is_leaf(c):
            if not backend.has(c):
                out.append(c)
        else:
            data = get(c)
            if data is None:
                out.append(c)
            else:
                stack.extend(reversed(links_of(c, data, history)))
        if limit is not None and len(out) >= limit:
            break
    return out
