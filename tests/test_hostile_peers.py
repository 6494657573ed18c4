"""Peers that misbehave towards a client (docs/protocol.md): real ``tvcfs`` CLI
subprocesses against real servers on loopback — ``tvcfs serve`` and the test-only
TensorSwap server of :mod:`support.server`, whose ``--foreign`` mode answers a DAG
request with good blocks of no DAG that was asked for and still ends it "ok". Every
server started here is stopped by its PID.
"""

from __future__ import annotations

import os
import time

import pytest

from support.cli import run_tvcfs
from support.repo import all_blocks, refs_of
from support.server import Server
from support.trees import assert_same_tree
from tvcfs.encoding.cid import DAG_CBOR, DAG_PB, cid_str, make_cid
from tvcfs.repo import Repo

pytestmark = pytest.mark.timeout(120)


def tv(*args, ok=True):
    return run_tvcfs(*args, ok=ok, text=True, timeout=60)


@pytest.fixture
def small_repo(tmp_path):
    """A repository at ``tmp_path / "src-repo"`` with one commit on ``main`` of five
    300 kB random files; returns ``(repo path, source directory)``."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(5):
        (src / "d" / f"f{i}.bin").write_bytes(os.urandom(300_000))
    path = str(tmp_path / "src-repo")
    with Repo.init(path) as r:
        r.commit_dir(str(src), message="five files")
    return path, src


def test_answer_of_foreign_blocks_said_ok_is_incomplete_and_the_next_remote_fills_it(
        small_repo, tmp_path, servers):
    """A peer that answers a clone with other blocks than the DAG's and says "ok":
    the clone fails with one line (incomplete, nothing updated, run again), no ref
    names the commit whose blocks are missing and ``fsck`` is clean; a fetch with a
    good remote configured next asks it for what is missing and completes."""
    path, src = small_repo
    good = servers(path, tmp_path)
    with Server(path, foreign=True) as liar:
        dst = tmp_path / "clone"
        p = tv("clone", liar.url, dst, ok=False)
        err = p.stderr
        assert err.startswith("tvcfs: error: ") and err.count("\n") == 1, err
        assert "incomplete" in err and "nothing was updated" in err, err
        assert not refs_of(dst), refs_of(dst)
        tv("--repo", dst, "fsck")

        tv("--repo", dst, "remote", "add", "good", good.url)
        p = tv("--repo", dst, "fetch", "origin")
        assert "asking remote good" in p.stderr, p.stderr
    main = refs_of(path)["refs/heads/main"]
    assert refs_of(dst)["refs/remotes/origin/main"] == main
    assert set(all_blocks(path)) <= set(all_blocks(dst))
    tv("--repo", dst, "fsck")
    tv("--repo", dst, "checkout", "origin/main", tmp_path / "wd")
    assert_same_tree(str(src), str(tmp_path / "wd"))


def test_blocks_of_no_asked_dag_are_not_stored_and_a_flood_of_them_ends_the_fetch(small_repo, tmp_path):
    """The client keeps only blocks it asked for or that an accepted block links to
    (answers come parents first, docs/protocol.md "DAG requests"): a clone from a peer
    answering with foreign blocks stores none of them (before: every good-hashing
    block was stored, until ``gc``), and past ``STRAY_LIMIT`` of them the clone stops
    with one line saying why."""
    from tvcfs.transport.client import STRAY_LIMIT

    path, _ = small_repo
    with Server(path, foreign=True) as liar:
        dst = tmp_path / "clone"
        p = tv("clone", liar.url, dst, ok=False)
        assert "incomplete" in p.stderr, p.stderr
    stored = set(all_blocks(dst))
    foreign = stored - set(all_blocks(path))
    print(f"\n{len(stored)} blocks stored, {len(foreign)} of no asked DAG")
    assert stored and not foreign, [cid_str(c) for c in list(foreign)[:3]]

    # more leaves than the bound: the answer ends with a clear error
    src = tmp_path / "many"
    src.mkdir()
    for i in range(STRAY_LIMIT + 16):
        (src / f"f{i:03d}.bin").write_bytes(os.urandom(1000))
    many = str(tmp_path / "many-repo")
    with Repo.init(many) as r:
        r.commit_dir(str(src), message="many small files")
    with Server(many, foreign=True) as liar:
        dst = tmp_path / "clone-many"
        p = tv("clone", liar.url, dst, ok=False)
    err = p.stderr.splitlines()[0]
    assert err.startswith("tvcfs: error: remote 127.0.0.1:"), p.stderr
    assert f"more than {STRAY_LIMIT} blocks of no DAG that was asked for" in err, err
    assert "resume" not in p.stderr, p.stderr  # the same clone from this peer fails the same way
    assert not set(all_blocks(dst)) - set(all_blocks(many))
    assert not refs_of(dst)


@pytest.mark.parametrize("stall", ["all", "dag"])
def test_peer_stalled_after_the_handshake_is_given_up_and_the_command_resumes(
        small_repo, tmp_path, servers, stall):
    """A peer that finishes the handshake and then answers nothing (``all``: not even
    the refs; ``dag``: the refs, but no block): its QUIC stack still answers PINGs,
    so only the session's answer timeout can end the wait. ``tvcfs clone`` fails
    within ``TVCFS_ANSWER_TIMEOUT`` (2 s here) with one line naming the peer and what
    to do, instead of hanging for ever; run again against a peer that answers, it
    completes."""
    path, src = small_repo
    env = {"TVCFS_ANSWER_TIMEOUT": "2"}
    dst = tmp_path / "clone"
    with Server(path, stall=stall) as stalled:
        t0 = time.monotonic()
        p = run_tvcfs("clone", stalled.url, dst, ok=False, text=True, timeout=30, env=env)
        assert time.monotonic() - t0 < 20
        err = p.stderr
        assert err.startswith("tvcfs: error: ") and err.count("\n") == 1, err
        assert f"remote 127.0.0.1:{stalled.port} sent nothing for 2 s" in err, err
        assert "run the command again" in err, err
    good = servers(path, tmp_path)
    tv("clone", good.url, dst)
    tv("--repo", dst, "fsck")
    tv("--repo", dst, "checkout", "main", tmp_path / "wd")
    assert_same_tree(str(src), str(tmp_path / "wd"))


@pytest.mark.parametrize("codec", ["dag-cbor", "dag-pb"])
def test_ref_to_a_block_that_does_not_decode_is_named_and_nothing_is_updated(
        small_repo, tmp_path, codec):
    """A peer whose branch names a block that hashes to its CID but does not decode
    (a damaged or hostile repository: every copy is as broken): ``tvcfs clone``
    fails with one line naming the remote, the block and that running it again will
    not help, instead of a bare decoder message ("dag-cbor: indefinite length at
    offset 0") followed by "run the same clone again to resume"; no ref is set and
    the clone's ``fsck`` is clean."""
    path, _ = small_repo
    junk = b"\xff\xfe not a node"
    cid = make_cid(DAG_CBOR if codec == "dag-cbor" else DAG_PB, junk)
    with Repo.open(path) as r:
        r.store.put(cid, junk)
        with r.store.write() as w:
            w.set_ref("refs/heads/damaged", cid, None, message="test: a damaged branch")
    dst = tmp_path / "clone"
    with Server(path) as srv:
        err = tv("clone", srv.url, dst, ok=False).stderr
    assert err.startswith("tvcfs: error: ") and err.count("\n") == 1, err
    what = "commit" if codec == "dag-cbor" else "dag-pb node"
    assert f"block {cid_str(cid)} is not a valid {what}" in err, err
    assert "the refs of origin lead to a damaged DAG" in err and "will not help" in err, err
    assert "resume" not in err, err
    assert not refs_of(dst)
    tv("--repo", dst, "fsck")


@pytest.mark.fuse
def test_lazy_mount_keeps_no_block_a_peer_sends_unasked(small_repo, tmp_path):
    """A lazy mount whose only peer answers its wants with foreign blocks (the
    ``--foreign`` server): the read fails within the fetch timeout, the blocks are
    counted ``unsolicited_blocks`` and none of them is stored (before: each was stored
    in the clone's store, then counted)."""
    from support.mount import lazy_mount, remote_stats

    path, _ = small_repo
    dst = tmp_path / "lazy"
    with Server(path, foreign=True) as liar:
        tv("clone", "--lazy", "-q", liar.url, dst)  # no raw leaf is asked: a good clone
        before = set(all_blocks(dst))
        with lazy_mount(str(dst), str(tmp_path / "mnt"), "--fetch-timeout", 3) as m:
            with pytest.raises(OSError):
                with open(os.path.join(m, "branches", "main", "d", "f0.bin"), "rb") as f:
                    f.read()
            unsolicited = remote_stats(m)["unsolicited_blocks"]
    foreign = set(all_blocks(dst)) - before
    print(f"\n{unsolicited} unsolicited blocks; {len(foreign)} stored")
    assert unsolicited > 0
    assert not foreign, [cid_str(c) for c in list(foreign)[:3]]


HOSTILE_REFS = ["refs/heads/a\nb", "refs/heads/x\x1b[31mred", "refs/heads/../../evil", "refs/heads/.hidden",
                "refs/tags/..", "refs/heads/" + "y" * 490]


def test_refs_with_names_this_repository_refuses_are_skipped_and_named(small_repo, tmp_path, servers):
    """A peer whose branches and tags have names ``tvcfs branch`` refuses (a newline,
    a terminal escape, ``..``, 490 bytes): ``clone`` and ``fetch`` skip them with one
    warning line each (escaped), take the rest, and store no ref of them; before, the
    clone made local branches of them all (the escape printed raw by ``tvcfs
    branch``), and a name whose remote-tracking ref passed LMDB's key size failed
    the whole fetch as "unexpected failure … this is a bug". A push of such a ref
    into ``tvcfs serve`` is refused naming it; the server's refs are unchanged."""
    path, src = small_repo
    with Repo.open(path) as r, r.store.write() as w:
        head = w.get_ref("refs/heads/main")
        for name in HOSTILE_REFS:
            w.set_ref(name, head, None, message="test: a hostile name")
    srv = servers(path, tmp_path)
    dst = tmp_path / "clone"
    p = tv("clone", srv.peer_url, dst)
    for shown in ("branch name 'a\\nb'", "branch name 'x\\x1b[31mred'", "branch name '../../evil'",
                  "branch name '.hidden'", "tag name '..'", "490 bytes long, at most 200"):
        assert shown in p.stderr, (shown, p.stderr)
    assert p.stderr.count("refuses, skipped") == len(HOSTILE_REFS), p.stderr
    assert "\x1b" not in p.stderr and "a\nb" not in p.stderr
    assert refs_of(dst).keys() == {"refs/heads/main", "refs/remotes/origin/main"}
    assert_same_tree(str(src), str(tv("--repo", dst, "checkout", "main", tmp_path / "co") and tmp_path / "co"))
    p = tv("--repo", dst, "fetch")
    assert p.stderr.count("refuses, skipped") == len(HOSTILE_REFS), p.stderr
    assert refs_of(dst).keys() == {"refs/heads/main", "refs/remotes/origin/main"}
    tv("--repo", dst, "fsck")

    # the other way: a branch with a bad name pushed into a server that allows the pusher
    me = tv("--repo", dst, "id").stdout.strip()
    sroot = str(tmp_path / "served")
    tv("init", sroot)
    srv2 = servers(sroot, tmp_path, "--allow-push", me, name="srv2")
    tv("--repo", dst, "push", srv2.peer_url, "main")
    with Repo.open(str(dst)) as r, r.store.write() as w:
        w.set_ref("refs/heads/a\nb", w.get_ref("refs/heads/main"), None, message="test: a hostile name")
    p = tv("--repo", dst, "push", srv2.peer_url, "a\nb", ok=False)
    err = p.stderr.strip()
    assert err.startswith("tvcfs: error: ") and "\n" not in err and "invalid branch name 'a\\nb'" in err, err
    assert refs_of(sroot).keys() == {"refs/heads/main"}
