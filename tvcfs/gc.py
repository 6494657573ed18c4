"""Garbage collection and integrity checks of a repository's block store.

:func:`collect_garbage` marks every block reachable from the refs, from reflog entries
younger than the expiry (so a commit dropped by a branch deletion or a rejected
update stays recoverable for that long), from pins, from the staged state of
mounts (their base commits and every CID their ``state.json`` names), from the
worktree records (the base commit and tree of each ``tvcfs checkout`` directory) and
from the records of fetches not finished (config ``fetching``: the roots a fetch or
clone is storing blocks of before its refs move; the record of a fetch still running
whatever the expiry, that of one that failed until it expires), then deletes the rest in one LMDB
transaction, held from before the marking (no other write lands in between); it
refuses to run while a push is being received (config ``receiving``). The base of
every packed delta that is kept is kept too (and its base, along the chain:
:func:`mark_bases`), so a kept delta always decodes. A reachable block that is damaged (does not match its CID or recorded
checksum) stops the collection before anything is deleted (:class:`DamagedReachable`):
what it links to cannot be known, and deleting it as garbage would turn one damaged
block into a lost model. Freed pages are reused by LMDB (the file does not shrink). :func:`fsck`
re-hashes blocks against their CIDs (packed ones decoded afresh; sha-256 whatever
checksums are recorded), compares them with the checksums recorded at rest and records
those missing (a store made before checksums were), and checks that every ref points
at a complete commit. Blocks missing from a lazy clone are not errors for GC (they are simply not
there); ``fsck --lazy-ok`` accepts missing leaves.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from .dag import traverse
from .encoding.cid import RAW, cid_codec, cid_from_str, cid_str
from .errors import CorruptBlock, InvalidCID, TvcfsError
from .fileio import process_alive
from .store.encodings import header

DEFAULT_EXPIRE_DAYS = 90
RECEIVE_IDLE = 3600  # seconds: a push recorded as received but storing nothing for this long
                     # no longer holds gc back (tvcfs serve renews the record while it stores)


def _roots(repo, expire_days: float | None) -> set:
    roots = set(repo.refs().values())
    cutoff = 0 if expire_days is None else time.time() - expire_days * 86400
    for e in repo.reflog_db.entries():
        if e["time"] >= cutoff:
            for k in ("old", "new"):
                if e.get(k):
                    roots.add(cid_from_str(e[k]))
    roots.update(repo.pin_db.all())
    for rec in repo.config.get("fetching").values():  # blocks a fetch stored before its refs moved
        # a fetch still running keeps them whatever the expiry (gc --expire 0 deleted what it
        # had stored so far); a failed one's are kept for its resume until they expire
        if rec.get("time", 0) >= cutoff or process_alive(rec.get("pid")):
            roots.update(cid_from_str(c) for c in rec.get("roots", ()))
    staging = os.path.join(repo.control, "staging")
    if os.path.isdir(staging):
        for name in os.listdir(staging):
            try:
                with open(os.path.join(staging, name, "state.json")) as f:
                    text = f.read()
            except OSError:
                continue
            try:
                st = json.loads(text)
            except ValueError as e:  # which blocks its staged tree uses is unknown: delete nothing
                from .fs.workspace import damaged_state

                raise TvcfsError(f"nothing was deleted: {damaged_state(os.path.join(staging, name, 'state.json'), e)}"
                                 ) from None
            if st.get("base"):
                roots.add(cid_from_str(st["base"]))
            for token in text.split('"'):
                if token.startswith("baf") and len(token) > 50:
                    try:
                        roots.add(cid_from_str(token))
                    except Exception:
                        pass
    for m in repo.config.conflicts:
        roots.add(cid_from_str(m["commit"]))
    for wt in repo.worktrees().values():  # what `tvcfs commit` of a checkout compares against
        roots.update((wt["base"], wt["tree"]))
    return roots


def mark_receiving(repo, key: str, started: bool) -> None:
    """Record (``started``; again to renew its time) or drop a push being received
    into ``repo`` under ``key`` (config ``receiving``: key -> ``{pid, time}``, time in
    seconds since the epoch of the last renewal): its blocks are stored before the ref
    update that names them, so :func:`collect_garbage` refuses to run while a live
    process has a record renewed within :data:`RECEIVE_IDLE` seconds (a record of a
    dead process, or of a session that stored nothing for that long — a client that
    pushed blocks and never sent its ref update — is ignored)."""
    def change(recs: dict) -> None:
        if started:
            recs[key] = {"pid": os.getpid(), "time": int(time.time())}
        else:
            recs.pop(key, None)

    repo.config.update("receiving", change)


def _refuse_while_receiving(repo) -> None:
    now = time.time()
    for rec in repo.config.get("receiving").values():
        pid = rec.get("pid")
        if pid != os.getpid() and process_alive(pid) and now - rec.get("time", 0) < RECEIVE_IDLE:
            since = time.strftime("%H:%M:%S", time.localtime(rec.get("time", 0)))
            raise TvcfsError(f"a push into {repo.root} is being received (tvcfs serve, pid {pid}, since {since}): "
                             "the blocks it stored are not named by a ref yet, so nothing was deleted; run gc "
                             "again once the push is over")


class DamagedReachable(TvcfsError):
    """A block reachable from the roots of :func:`mark` is damaged (does not match its
    CID or its recorded checksum, or does not decode): what it links to cannot be
    known, so garbage collection and packing stop before changing anything."""


def mark(repo, roots, progress=None, parents: bool = True) -> set:
    """Every CID reachable from ``roots`` (commits follow their parents, unless not
    ``parents``: then only their trees), whether or not the block is stored locally
    (:func:`tvcfs.dag.traverse`: raw leaves are named by their parents' links, never
    read). Every interior block read is verified (its recorded checksum, else its
    CID): a damaged one raises :class:`DamagedReachable` naming it — skipping it
    would drop everything below it as garbage; a block whose bytes are authentic
    but do not decode keeps only itself. ``progress(blocks marked, None,
    "marking")`` is called every 1000 blocks."""
    seen: set[bytes] = set()

    def damaged(c: bytes, e: Exception):
        if not isinstance(e, CorruptBlock):
            return  # authentic bytes that do not decode (e.g. a pinned foreign block): no links
        raise DamagedReachable(
            f"block {cid_str(c)}, reachable from the refs, is damaged in {repo.root}: the blocks "
            "it links to cannot be told apart from garbage, so nothing was changed; restore it "
            "(tvcfs fetch from a remote that has it, or tvcfs import a CAR holding it) and run "
            "again (tvcfs fsck lists every damaged block)") from None

    with repo.store.view(verify=True) as blocks:
        for c, _ in traverse(blocks.get, roots, parents=parents, read_leaves=False, missing_ok=True,
                             on_error=damaged):
            seen.add(c)
            if progress is not None and len(seen) % 1000 == 0:
                progress(len(seen), None, "marking")
    if progress is not None:
        progress(len(seen), len(seen), "marking")
    return seen


def _depth(value) -> int:
    try:
        return header(value).depth
    except CorruptBlock:
        return 0


def mark_bases(repo, live: set) -> set:
    """Add to ``live`` (in place, and return it) the delta base of every live packed
    block, and their bases, along each chain."""
    with repo.store.view(verify=False) as blocks:
        todo = [c for c, v, packed in blocks.stored() if packed and c in live]
        while todo:
            nxt = []
            for c in todo:
                try:
                    info = blocks.info(c)
                except CorruptBlock:  # a damaged header: fsck reports it
                    continue
                if info is not None and info.base is not None and info.base not in live:
                    live.add(info.base)
                    nxt.append(info.base)
            todo = nxt
    return live


def collect_garbage(repo, dry_run: bool = False, expire_days: float | None = DEFAULT_EXPIRE_DAYS,
                    progress=None) -> dict:
    """Delete unreachable blocks (raw or packed), never the base of a kept delta.
    ``expire_days``: reflog entries older than this are not roots; ``None``: every
    entry is (the CLI's choice while the repository is mounted: a live mount's open
    file may be of a branch deleted since). Returns ``{"kept", "deleted", "deleted_bytes"}``
    (counts, stored bytes). With
    ``dry_run`` nothing is deleted. ``progress``: a callback ``progress(blocks, total
    blocks | None, phase)`` (phases "marking", "sweeping").

    Unless ``dry_run``, the store's write transaction is held from before the roots
    are read until the deletions commit: a commit, a fetch's blocks or a ref update
    of another process land before the marking (and are kept) or wait until the
    collection is over — never between the marking and the sweep, where their new
    blocks, or old blocks they reuse, would be deleted as garbage."""
    with contextlib.nullcontext() if dry_run else repo.store.write() as w:
        if w is not None:
            _refuse_while_receiving(repo)
        live = mark_bases(repo, mark(repo, _roots(repo, expire_days), progress))
        dead = []
        nbytes = 0
        total = repo.store.stat()["blocks"] if progress is not None else 0
        with repo.store.view(verify=False) as blocks:
            for i, (cid, v, packed) in enumerate(blocks.stored(), 1):
                if progress is not None and (i % 1000 == 0 or i == total):
                    progress(i, total, "sweeping")
                if cid not in live:
                    # dead deltas first (deepest first), then what they were based on: a
                    # base is never deleted before its dead dependents (which would
                    # otherwise be re-encoded without it, for nothing)
                    dead.append((-_depth(v) if packed else 1, cid))
                    nbytes += len(v)
        if w is not None:
            dead.sort()
            for _, c in dead:
                w.delete_block(c)
    return {"kept": len(live), "deleted": len(dead), "deleted_bytes": nbytes}


def fsck(repo, lazy_ok: bool = False, progress=None, stats: dict | None = None) -> list:
    """Check the repository. Returns a list of problems (strings); empty means sound:
    every stored block hashes to its CID (sha-256) and decodes, matches the checksum
    recorded when it was stored, and every ref's commit, tree and file nodes are
    present (and leaves too unless ``lazy_ok``), and that every ref value is a CID and
    every reflog entry and pin record reads. ``progress``: a callback
    ``progress(blocks re-hashed, total blocks, "verifying")``.

    Writes one thing: the checksum (:func:`tvcfs.store.lmdb_store.checksum`) of every
    block that hashes to its CID and has none recorded (stored by older code), or
    whose record disagrees with it (a damaged record: listed as a problem too), so
    that reads check it at xxh3's speed from then on (docs/repository.md, "Verified
    reads"). ``stats``, if given, gets ``{"blocks", "checksums_recorded"}`` (counts)."""
    import hashlib

    from .store.lmdb_store import checksum

    problems = []
    record = []  # (cid, checksum) of blocks that hash to their CIDs, their record missing or wrong
    total = repo.store.stat()["blocks"] if progress is not None else 0
    n = 0
    with repo.store.view(verify=False) as blocks:
        for n, (cid, v, packed) in enumerate(blocks.stored(), 1):
            if progress is not None and (n % 64 == 0 or n == total):
                progress(n, total, "verifying")
            if packed:
                try:
                    v = blocks.decode(cid, v, fresh=True)
                except CorruptBlock as e:  # a missing base, a damaged value
                    problems.append(f"corrupt block {cid_str(cid)} (packed): {e}")
                    continue
            want, got = blocks.recorded_checksum(cid), checksum(v)
            if hashlib.sha256(v).digest() != cid[4:]:
                problems.append(f"corrupt block {cid_str(cid)}" + (
                    " (it does not match the checksum recorded when it was stored either)"
                    if want is not None and want != got else ""))
            elif want != got:
                if want is not None:
                    problems.append(f"block {cid_str(cid)} hashes to its CID but its recorded checksum "
                                    "is damaged (recorded again now)")
                record.append((cid, got))
    if record:
        with repo.store.write() as w:
            record = [c for c, s in record if w.record_checksum(c, s)]
    if stats is not None:
        stats.update(blocks=n, checksums_recorded=len(record))
    for records in (repo.reflog_db.entries, repo.pin_db.all):
        try:
            records()
        except TvcfsError as e:  # a damaged reflog entry or pin
            problems.append(str(e))
    for ref, cid in sorted(repo.refs().items()):
        try:
            cid_codec(cid)
        except InvalidCID:
            problems.append(f"{ref}: damaged value {cid.hex()[:80]} (not a CID)")
            continue

        def broken(c, e, ref=ref):
            if not isinstance(e, CorruptBlock):  # a damaged block is listed above
                problems.append(f"{ref}: {cid_str(c)}: {e}")

        for c, block in traverse(repo.store.get, [cid], parents=True, read_leaves=not lazy_ok,
                                 missing_ok=True, on_error=broken):
            if block is None and not (lazy_ok and cid_codec(c) == RAW):
                problems.append(f"{ref}: missing block {cid_str(c)}")
    return problems
