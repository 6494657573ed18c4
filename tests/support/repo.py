"""Read a repository's refs, blocks and DAGs in tests (docs/testing.md)."""

from __future__ import annotations

import os

from support.wait import wait_until
from tvcfs.dag import walk_dag
from tvcfs.encoding.cid import cid_str
from tvcfs.repo import Repo


def fetch_levels(blocks, root: bytes) -> int:
    """Fetch the DAG under ``root`` through the block store ``blocks`` level by level
    (one ``get_many`` per level: remote tiers batch it, a router verifies and writes
    the blocks back into its local store); assert every block was found; return how
    many were fetched."""
    from tvcfs.dag import block_links

    frontier, fetched = [root], 0
    while frontier:
        got = list(blocks.get_many(frontier))
        assert all(d is not None for _, d in got), [c for c, d in got if d is None][:3]
        fetched += len(got)
        frontier = list(dict.fromkeys(c for cid, d in got for c in block_links(cid, d)))
    return fetched


def head(repo, branch: str = "main") -> bytes | None:
    """The commit CID (bytes) of ``branch`` in the open ``repo``, or ``None``."""
    return repo.ref_db.get("refs/heads/" + branch)


def wait_head_change(repo, old: bytes | None, branch: str = "main", timeout: float = 20.0) -> bytes:
    """Wait (up to ``timeout`` seconds) until ``branch`` points to a commit other than
    ``old``; return it."""
    return wait_until(lambda: (h := head(repo, branch)) != old and h, timeout, what=f"a commit on {branch}")


def commit_count(repo, branch: str = "main") -> int:
    """Number of commits in the history of ``branch``."""
    return sum(1 for _ in repo.log(branch))


def check_refs_complete(repo) -> int:
    """Every ref (and every commit its history reaches) resolves to blocks that are
    all present: walk the whole DAG from each ref, parents included. Returns the
    number of distinct blocks walked."""
    seen: set = set()

    def get(c):
        b = repo.store.get(c)
        assert b is not None, f"missing block {cid_str(c)}"
        return b

    for name, cid in repo.refs().items():
        for c, _ in walk_dag(get, cid, skip=lambda c: c in seen, follow_parents=True):
            seen.add(c)
    return len(seen)


def block_set(repo) -> set:
    """The set of CIDs (bytes) stored in ``repo``."""
    return set(repo.store)


def new_block_bytes(repo, before: set) -> int:
    """Bytes of the blocks stored in ``repo`` that are not in ``before``."""
    return sum(len(repo.store.get(c)) for c in set(repo.store) - before)


def commit_dir(repo_path: str, src_dir: str, message: str = "model") -> None:
    """Commit directory ``src_dir`` on ``main`` of the repository at ``repo_path``
    (created if missing)."""
    from tvcfs.repo import Repo

    r = Repo.init(repo_path) if not os.path.isdir(os.path.join(repo_path, ".tvcfs")) else Repo.open(repo_path)
    try:
        r.commit_dir(src_dir, branch="main", message=message)
    finally:
        r.close()


def raw_leaf_count(repo_path: str) -> int:
    """Number of raw (codec 0x55) leaf blocks stored in the repository at ``repo_path``."""
    from tvcfs.encoding.cid import cid_codec
    from tvcfs.repo import Repo

    with Repo.open(repo_path) as r:
        return sum(1 for c in r.store if cid_codec(c) == 0x55 and r.store.get(c))


# --------------------------------------------------------------- small repositories
def make_repo(path, files: dict[str, bytes], message="c1") -> Repo:
    """A new repository at ``path/repo`` with one commit of ``files`` (name -> bytes,
    written under ``path/wt``) at a fixed timestamp."""
    repo = Repo.init(str(path / "repo"))
    write_files(path / "wt", files)
    repo.commit_dir(str(path / "wt"), message=message, timestamp=1_700_000_000)
    return repo


def write(path, data: bytes) -> str:
    """Write ``data`` to file ``path`` (its parent directories made); returns the path."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def write_files(wt, files):
    """Write ``files`` (relative name -> bytes) under the ``pathlib.Path`` ``wt``."""
    for name, data in files.items():
        p = wt / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def rnd(n, seed):
    """``n`` pseudo-random bytes, the same for the same ``seed``."""
    import random

    return random.Random(seed).randbytes(n)


def repo_with_file(path, size: int, seed: int):
    """A new repository at ``path/repo`` with one commit of ``f.bin``: ``size`` random
    bytes (seeded by ``seed``). Returns ``(repo, index, interior)``: the open
    :class:`~tvcfs.repo.Repo`, the file's :class:`~tvcfs.dag.FileIndex` and the CIDs
    of its interior (dag-pb) nodes, root first."""
    from tvcfs.dag import FileIndex, block_links, resolve_path
    from tvcfs.encoding.cid import DAG_PB, cid_codec

    repo = make_repo(path, {"f.bin": rnd(size, seed)}, message="f")
    tree = repo.read_commit(repo.head()).tree
    cid = resolve_path(repo.get, tree, "f.bin").cid
    idx = FileIndex.build(repo.get, cid)
    interior = [cid]
    stack = [cid]
    while stack:
        c = stack.pop()
        for ch in block_links(c, repo.get(c)):
            if cid_codec(ch) == DAG_PB:
                interior.append(ch)
                stack.append(ch)
    return repo, idx, interior


def all_cids(repo):
    """The set of binary CIDs of every raw-stored block in ``repo``'s LMDB store."""
    with repo.store.read() as txn:
        return {bytes(k) for k, _ in txn.cursor(db=repo.store.dbs["blocks"])}


def forget_checksums(root: str) -> int:
    """Drop every recorded checksum (a store written by code older than them)."""
    with Repo.open(root) as repo, repo.store.write() as w:
        keys = [bytes(k) for k, _ in w.txn.cursor(db=w.db["sums"])]
        for k in keys:
            w.txn.delete(k, db=w.db["sums"])
    return len(keys)


def all_blocks(repo_path) -> dict:
    """``{cid: size}`` of every block in a repository (opened read-only here)."""
    from tvcfs.repo import Repo

    with Repo.open(str(repo_path)) as r:
        with r.store.read() as txn:
            return {bytes(k): len(v) for k, v in txn.cursor(db=r.store.dbs["blocks"])}


def stored_bytes(repo_path) -> int:
    """Bytes of blocks committed so far in a repository another process is writing
    (LMDB readers see each committed transaction at once); 0 before it exists."""
    from tvcfs.repo import Repo

    try:
        r = Repo.open(str(repo_path))
    except Exception:  # noqa: BLE001 - not created yet
        return 0
    with r:
        with r.store.read() as txn:
            return sum(len(v) for _, v in txn.cursor(db=r.store.dbs["blocks"]))


def refs_of(repo_path) -> dict:
    """``{ref name: commit CID}`` of the repository at ``repo_path``."""
    from tvcfs.repo import Repo

    with Repo.open(str(repo_path)) as r:
        return r.refs()
