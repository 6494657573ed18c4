"""One sync path for every remote kind (tvcfs/sync.py; docs/architecture.md, "Sync"):
the same clone, resume rule, remote-tracking refs, pull and lazy (skeleton) fetch
for an ``s3://`` bucket (moto's S3 server) and a ``tvcfs://`` peer (a server
process over QUIC), and one choice of the next remote that crosses kinds. Real
LMDB repositories, real processes; servers are ended by PID."""

from __future__ import annotations

import re

import pytest
from support.s3 import new_bucket
from support.cli import run_tvcfs
from support.server import Server
from support.repo import make_repo, rnd, write_files

from tvcfs import sync
from tvcfs.encoding.cid import RAW, cid_codec
from tvcfs.repo import Repo

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["s3", "tvcfs"])
def remote_kind(request, tmp_path, monkeypatch):
    """``(kind, src repo path, url, publish())``: a source repository with two files
    on ``main`` and a tag, reachable at ``url``; ``publish()`` makes its current
    refs visible there (a push for a bucket; a peer serves the live repository)."""
    src = make_repo(tmp_path / "a", {"f.bin": rnd(3 << 20, 1), "d/g.bin": rnd(700_000, 2),
                                     "empty": b""})
    src.update_ref("refs/tags/v1", src.head(), None)
    src.close()
    path = str(tmp_path / "a" / "repo")
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        url = f"s3://{new_bucket(endpoint)}/m"
        run_tvcfs("-C", path, "remote", "add", "origin", url)

        def publish():
            run_tvcfs("-C", path, "push", "-q")
            with Repo.open(path) as r:
                tag = r.ref_db.get("refs/tags/v1")
            with sync.open_remote(url) as rem:  # a push moves a branch; the tag by hand
                if "refs/tags/v1" not in rem.list_refs():
                    rem.compare_and_swap("refs/tags/v1", None, tag)

        publish()
        yield request.param, path, url, publish
        return
    srv = Server(path)
    try:
        yield request.param, path, srv.url, lambda: None
    finally:
        srv.kill()


def _new_commit(path: str, tmp_path, seed: int) -> bytes:
    write_files(tmp_path / "a" / "wt", {f"new{seed}.bin": rnd(400_000, seed)})
    with Repo.open(path) as r:
        return r.commit_dir(str(tmp_path / "a" / "wt"), message=f"c{seed}",
                            timestamp=1_700_000_000 + seed).cid


def test_interrupted_clone_resumes_and_tracks_the_same_way(remote_kind, tmp_path):
    """An interrupted clone (some leaves stored, remote added, no branch) is resumed
    by the same clone and moves only the missing bytes; then the tracking refs, the
    tag, HEAD and a pull's fast-forward are the same for both kinds of remote."""
    _kind, path, url, publish = remote_kind
    dest = str(tmp_path / "clone")
    with Repo.open(path) as src:
        blocks = {c: bytes(src.store.get(c)) for c in src.store}
        head = src.head()
        tag = src.ref_db.get("refs/tags/v1")
    leaves = sorted(c for c in blocks if cid_codec(c) == RAW and blocks[c])
    kept = leaves[: len(leaves) // 2]
    with Repo.init(dest) as r:  # what a clone killed half-way leaves behind
        r.add_remote("origin", url)
        r.store.put_many([(c, blocks[c]) for c in kept])
    missing = sum(len(d) for c, d in blocks.items() if c not in kept)
    p = run_tvcfs("clone", url, dest)
    err = p.stderr.decode()
    assert "Resuming the interrupted clone" in err, err
    with Repo.open(dest) as r:
        assert set(r.store) == set(blocks)
        assert r.ref_db.get("refs/remotes/origin/main") == head
        assert r.ref_db.get("refs/heads/main") == head
        assert r.ref_db.get("refs/tags/v1") == tag
        assert r.head_branch() == "main"
    got = [int(m.group(1)) for m in re.finditer(r"\((\d+) bytes, (\d+) on the wire\) from origin", err)]
    assert got == [missing], err  # nothing already stored was asked again

    # a new commit there: fetch updates only the tracking ref, pull fast-forwards
    new = _new_commit(path, tmp_path, 7)
    publish()
    with Repo.open(dest) as r:
        res = sync.fetch(r, "origin")
        assert res.updated == [("refs/remotes/origin/main", head, new)]
        assert [name for name, _ in res.stats] == ["origin"] and res.blocks > 0
        assert r.ref_db.get("refs/heads/main") == head
        pr = sync.pull(r, "origin", "main")
        assert (pr.kind, pr.old, pr.new) == ("fast-forward", head, new)
        assert sync.fetch(r, "origin").updated == []  # nothing changed: nothing to do


def test_lazy_clone_and_fetch_take_the_skeleton_only(remote_kind, tmp_path):
    """A lazy clone and its next fetch store commits, directories and file nodes
    but no raw leaf (the empty one is made locally), and the unchanged local branch
    follows the remote — the same for both kinds."""
    _kind, path, url, publish = remote_kind
    repo, res = sync.clone(url, str(tmp_path / "lazy"), lazy=True, quiet=True)
    old = res.refs["refs/heads/main"]
    try:
        assert repo.config.lazy and repo.head_branch() == "main"
        leaves = [c for c in repo.store if cid_codec(c) == RAW and repo.store.get(c)]
        assert leaves == []
        new = _new_commit(path, tmp_path, 8)
        publish()
        res = sync.fetch(repo, "origin")
        assert ("refs/heads/main", old, new) in res.updated
        assert repo.ref_db.get("refs/heads/main") == new
        assert [c for c in repo.store if cid_codec(c) == RAW and repo.store.get(c)] == []
    finally:
        repo.close()


def test_blocks_a_peer_lacks_come_from_the_next_remote_of_another_kind(s3_endpoint, tmp_path,
                                                                       monkeypatch):
    """One choice of the next remote for every kind: a tvcfs:// peer that lacks
    some leaves, then an s3:// bucket that holds them; the fetch completes from the
    bucket and only then sets the tracking refs."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    src = make_repo(tmp_path / "a", {"f.bin": rnd(2 << 20, 3), "g.bin": rnd(500_000, 4)})
    head = src.head()
    bucket_url = f"s3://{new_bucket(s3_endpoint)}/m"
    src.add_remote("bucket", bucket_url)
    src.close()
    path = str(tmp_path / "a" / "repo")
    run_tvcfs("-C", path, "push", "-q", "bucket")
    # a peer serving a copy that lost some leaves
    holey = make_repo(tmp_path / "b", {"f.bin": rnd(2 << 20, 3), "g.bin": rnd(500_000, 4)})
    gone = [c for c in holey.store if cid_codec(c) == RAW][:3]
    for c in gone:
        holey.store.delete(c)
    holey.close()
    srv = Server(str(tmp_path / "b" / "repo"))
    try:
        with Repo.init(str(tmp_path / "c")) as r:
            r.add_remote("peer", srv.url)
            r.add_remote("bucket", bucket_url)
            warnings = []
            res = sync.fetch(r, "peer", warn=warnings.append)
            assert [name for name, _ in res.stats] == ["peer", "bucket"], warnings
            assert any("asking remote bucket" in w for w in warnings), warnings
            assert all(r.store.has(c) for c in gone)
            assert r.ref_db.get("refs/remotes/peer/main") == head
    finally:
        srv.kill()
