"""``tvcfs.Repo`` on the real model: commits, deduplication, checkout, revisions,
refs and reflog, conflicts, bad input, crash safety (issue 2, "What must be shown")."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from support import MIB
from support.model import make_finetune
from support.trees import assert_same_tree, tree_bytes
from tvcfs.dag import KIND_FILE, KIND_SYMLINK
from tvcfs.encoding.cid import DAG_CBOR, RAW, cid_codec, cid_str, make_cid
from tvcfs.errors import (
    AmbiguousRevision, CorruptBlock, NotARepository, PathNotFound, RefConflict, RefExists,
    RevisionNotFound, TvcfsError,
)
from tvcfs.refs import InvalidRefName
from tvcfs.repo import Author, Repo

EMPTY_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
EMPTY_DIR = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
AUTHOR = Author("Test Author", "test@example.org")


def raw_leaf_bytes(repo: Repo) -> dict:
    """``{cid: len}`` of every raw leaf in the store."""
    out = {}
    with repo.store.read() as txn:
        cur = txn.cursor(db=repo.store.dbs["blocks"])
        for k, v in cur:
            if cid_codec(bytes(k)) == RAW:
                out[bytes(k)] = len(v)
    return out


# --------------------------------------------------------------------------- real model
def test_commit_checkout_cat_real_model(real_model_dir, tmp_repo, tmp_path):
    res = tmp_repo.commit_dir(real_model_dir, message="all-MiniLM-L6-v2", author=AUTHOR, timestamp=1_700_000_000)
    assert res.changed and res.branch == "main" and res.files == 13
    total = sum(len(v) for v in tree_bytes(real_model_dir).values())
    assert res.bytes == total
    assert total <= res.new_bytes <= total + 64 * 1024  # content + a few KiB of DAG nodes
    assert tmp_repo.head() == res.cid == tmp_repo.resolve("main")
    com = tmp_repo.read_commit(res.cid)
    assert (com.author_name, com.author_email, com.message, com.timestamp, com.parents) == \
        ("Test Author", "test@example.org", "all-MiniLM-L6-v2", 1_700_000_000, ())
    assert com.tree == res.tree

    out = tmp_path / "co"
    n = tmp_repo.checkout("main", str(out))
    assert n == total
    assert_same_tree(real_model_dir, str(out))

    src = tree_bytes(real_model_dir)
    for rel, data in src.items():
        assert b"".join(tmp_repo.read_file("main", rel)) == data, rel
    e = tmp_repo.entry("main", "model.safetensors")
    assert e.kind == KIND_FILE and e.size == len(src["model.safetensors"])
    assert b"".join(tmp_repo.cat(cid_str(e.cid))) == src["model.safetensors"]
    # random reads through the leaf index
    idx = tmp_repo.file_index(e.cid)
    data = src["model.safetensors"]
    for off, ln in ((0, 8), (12345, 3 * MIB), (len(data) - 10, 100), (MIB - 1, 2)):
        assert idx.read(tmp_repo.get, off, ln) == data[off:off + ln]
    # sub-path checkout and listing
    sub = tmp_path / "pool"
    tmp_repo.checkout("main", str(sub), path="1_Pooling")
    assert_same_tree(os.path.join(real_model_dir, "1_Pooling"), str(sub))
    names = {x.name for x in tmp_repo.ls("main")}
    assert names == set(os.listdir(real_model_dir))
    assert {p for p, x in tmp_repo.walk("main") if x.kind == KIND_FILE} == set(src)
    assert tmp_repo.verify(res.cid) > 190  # every block re-hashes to its CID


def test_finetune_stores_only_changed_tensors(real_model_dir, tmp_repo, tmp_path):
    first = tmp_repo.commit_dir(real_model_dir, message="base", author=AUTHOR)
    leaves_before = raw_leaf_bytes(tmp_repo)
    ft = make_finetune(real_model_dir, str(tmp_path / "ft"))
    # the fine-tune really moves every tensor laid out after the added one
    assert len(ft.moved) >= 95, ft.moved
    second = tmp_repo.commit_dir(str(tmp_path / "ft"), message="fine-tune", author=AUTHOR)
    assert second.changed and tmp_repo.read_commit(second.cid).parents == (first.cid,)

    changed_plus_added = ft.changed_bytes + ft.added_bytes
    slack = MIB * (len(ft.changed) + 1)  # one leaf per changed/added tensor
    bound = changed_plus_added + ft.header_bytes + slack
    assert second.new_bytes <= bound, (second.new_bytes, bound)
    # the new leaves are exactly the new header, the changed and the added tensors
    new_leaves = {c: n for c, n in raw_leaf_bytes(tmp_repo).items() if c not in leaves_before}
    assert sum(new_leaves.values()) <= changed_plus_added + ft.header_bytes
    assert sum(new_leaves.values()) >= ft.changed_bytes  # (sanity: they were stored)

    out = tmp_path / "co2"
    tmp_repo.checkout("main", str(out))
    assert_same_tree(str(tmp_path / "ft"), str(out))
    out1 = tmp_path / "co1"
    tmp_repo.checkout("main~1", str(out1))
    assert_same_tree(real_model_dir, str(out1))


def test_unchanged_directory_stores_nothing(real_model_dir, tmp_repo, tmp_path):
    first = tmp_repo.commit_dir(real_model_dir, message="one")
    blocks = tmp_repo.store.stat()["blocks"]
    again = tmp_repo.commit_dir(real_model_dir, message="two")
    assert not again.changed and again.cid is None
    assert (again.new_bytes, again.new_blocks) == (0, 0)
    assert again.tree == first.tree and tmp_repo.head() == first.cid
    # a copy elsewhere, with other mtimes: same content, same tree, nothing new
    copy = tmp_path / "copy"
    shutil.copytree(real_model_dir, copy)
    os.utime(copy / "model.safetensors", (1, 1))
    assert tmp_repo.commit_dir(str(copy)).new_bytes == 0
    assert tmp_repo.store.stat()["blocks"] == blocks
    # allow_empty records a commit: only its own block is new
    forced = tmp_repo.commit_dir(str(copy), message="forced", allow_empty=True)
    assert forced.changed and forced.new_blocks == 1
    assert forced.new_bytes == len(tmp_repo.get(forced.cid))
    # the same content on another branch adds only the commit
    other = tmp_repo.commit_dir(real_model_dir, branch="other", allow_empty=True)
    assert other.new_blocks == 1


# --------------------------------------------------------------------------- bad input
def test_empty_files_empty_dirs_and_odd_names(tmp_repo, tmp_path):
    src = tmp_path / "src"
    (src / "empty dir").mkdir(parents=True)
    (src / "nested" / "deeper" / "empty").mkdir(parents=True)
    (src / "empty.bin").write_bytes(b"")
    (src / "name with  spaces.txt").write_bytes(b"spaces\n")
    (src / "ünïcödé ✓ 模型.json").write_bytes('{"é": 1}'.encode())
    (src / "nested" / "日本語 file").write_bytes(os.urandom(3 * MIB + 17))
    (src / "nested" / "deeper" / "e").write_bytes(b"")
    (src / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(src / "run.sh", 0o755)
    os.symlink("nested/日本語 file", src / "link to file")
    tmp_repo.commit_dir(str(src), message="odd")
    out = tmp_path / "out"
    tmp_repo.checkout("main", str(out))
    assert_same_tree(str(src), str(out))
    assert os.path.isdir(out / "empty dir") and os.listdir(out / "empty dir") == []
    assert os.path.isdir(out / "nested" / "deeper" / "empty")
    assert os.stat(out / "run.sh").st_mode & 0o100
    assert not os.stat(out / "empty.bin").st_mode & 0o100
    assert os.readlink(out / "link to file") == "nested/日本語 file"

    e = tmp_repo.entry("main", "empty.bin")
    assert (cid_str(e.cid), e.size) == (EMPTY_RAW, 0)
    assert b"".join(tmp_repo.read_file("main", "empty.bin")) == b""
    assert cid_str(tmp_repo.entry("main", "empty dir").cid) == EMPTY_DIR
    assert tmp_repo.entry("main", "link to file").kind == KIND_SYMLINK
    assert b"".join(tmp_repo.read_file("main", "ünïcödé ✓ 模型.json")) == '{"é": 1}'.encode()
    assert tmp_repo.entry("main", "run.sh").mode == 0o755
    with pytest.raises(PathNotFound):
        tmp_repo.entry("main", "nope")
    with pytest.raises(PathNotFound):
        tmp_repo.entry("main", "empty.bin/below")
    with pytest.raises(TvcfsError):
        list(tmp_repo.read_file("main", "nested"))


def test_completely_empty_directory(tmp_repo, tmp_path):
    (tmp_path / "void").mkdir()
    res = tmp_repo.commit_dir(str(tmp_path / "void"), message="nothing")
    assert res.changed and cid_str(res.tree) == EMPTY_DIR
    assert tmp_repo.ls("main") == []
    tmp_repo.checkout("main", str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []
    with pytest.raises(TvcfsError, match="not an empty directory"):
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "x").write_bytes(b"x")
        tmp_repo.checkout("main", str(tmp_path / "busy"))


def test_not_a_repository(tmp_path):
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    for bad in (plain, plain / "sub", tmp_path / "missing"):
        with pytest.raises(NotARepository) as ei:
            Repo.open(str(bad))
        assert str(bad) in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(NotARepository):
        Repo.discover(str(plain / "sub"))
    (plain / ".tvcfs").mkdir()  # a control directory without a store is not enough
    with pytest.raises(NotARepository):
        Repo.open(str(plain))
    with pytest.raises(NotADirectoryError):
        r = Repo.init(str(tmp_path / "r"))
        try:
            r.commit_dir(str(tmp_path / "no such dir"))
        finally:
            r.close()


def test_init_is_idempotent_and_discover_walks_up(tmp_path):
    r = Repo.init(str(tmp_path / "r"))
    c = r.commit_tree(_empty_tree(r), message="x").cid
    r.close()
    r2 = Repo.init(str(tmp_path / "r"))
    try:
        assert r2.head() == c
    finally:
        r2.close()
    (tmp_path / "r" / "a" / "b").mkdir(parents=True)
    r3 = Repo.discover(str(tmp_path / "r" / "a" / "b"))
    try:
        assert r3.root == str(tmp_path / "r") and r3.head() == c
    finally:
        r3.close()
    r4 = Repo.open(str(tmp_path / "r" / ".tvcfs"))
    r4.close()


def _empty_tree(repo):
    from tvcfs.importer import Importer

    with repo.store.write() as w:
        return Importer(w).add_directory([])[0]


# --------------------------------------------------------------------------- conflicts
def test_stale_expected_gives_conflict_and_keeps_commit(tmp_repo, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(b"1")
    base = tmp_repo.commit_dir(str(d), message="base").cid
    (d / "a").write_bytes(b"2")
    winner = tmp_repo.commit_dir(str(d), message="winner", expected=base).cid
    (d / "a").write_bytes(b"3")
    with pytest.raises(RefConflict) as ei:
        tmp_repo.commit_dir(str(d), message="loser", expected=base)
    err = ei.value
    msg = str(err)
    assert "\n" not in msg and "refs/heads/main" in msg and "moved" in msg
    assert cid_str(base) in msg and cid_str(winner) in msg and cid_str(err.commit) in msg
    assert (err.expected, err.actual) == (base, winner)
    assert tmp_repo.head() == winner  # the branch did not move
    # the loser's commit is stored, readable, and reachable through the reflog
    lost = tmp_repo.read_commit(err.commit)
    assert lost.message == "loser" and lost.parents == (base,)
    out = tmp_path / "out"
    tmp_repo.checkout(cid_str(err.commit), str(out))
    assert (out / "a").read_bytes() == b"3"
    entry = tmp_repo.reflog("main")[-1]
    assert entry["new"] == cid_str(err.commit) and entry.get("rejected") is True
    assert tmp_repo.resolve(cid_str(err.commit)[:20]) == err.commit  # prefix finds it too


_RACER = textwrap.dedent(r"""
    import os, sys, time
    from tvcfs.repo import Repo
    from tvcfs.errors import RefConflict
    from tvcfs.encoding.cid import cid_str
    repo_dir, src, go = sys.argv[1], sys.argv[2], sys.argv[3]
    repo = Repo.open(repo_dir)
    base = repo.head()
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    try:
        res = repo.commit_dir(src, message=src, expected=base)
        print("won", cid_str(res.cid))
    except RefConflict as e:
        print("lost", cid_str(e.commit), str(e))
""")


def test_two_processes_racing_for_a_branch(tmp_repo, tmp_path):
    """Two processes commit on the same base at once: exactly one wins, the other
    gets a conflict and its commit stays in the reflog."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "f").write_bytes(b"base")
    base = tmp_repo.commit_dir(str(tmp_path / "base")).cid
    srcs = []
    for name in ("left", "right"):
        d = tmp_path / name
        d.mkdir()
        (d / "f").write_bytes(os.urandom(2 * MIB))
        srcs.append(str(d))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, tmp_repo.root, s, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in srcs]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.write_bytes(b"")
    outs = []
    for p in procs:
        out, errtxt = p.communicate(timeout=60)
        assert p.returncode == 0, errtxt
        outs.append(out.split(None, 2))
    assert sorted(o[0] for o in outs) == ["lost", "won"]
    won = next(o for o in outs if o[0] == "won")
    lost = next(o for o in outs if o[0] == "lost")
    assert cid_str(tmp_repo.head()) == won[1]
    assert "moved" in lost[2]
    rejected = [e for e in tmp_repo.reflog("main") if e.get("rejected")]
    assert [e["new"] for e in rejected] == [lost[1]]
    assert tmp_repo.read_commit(tmp_repo.resolve(lost[1])).parents == (base,)


# --------------------------------------------------------------------------- revisions
def _chain(repo, n, branch="main", start_ts=1_600_000_000):
    tree = _empty_tree(repo)
    cids = []
    for i in range(n):
        cids.append(repo.commit_tree(tree, branch=branch, message=f"c{i}", author=AUTHOR,
                                     timestamp=start_ts + i).cid)
    return cids


def test_revision_syntax(tmp_repo):
    with pytest.raises(RevisionNotFound, match="empty repository"):
        tmp_repo.resolve("HEAD")
    c0, c1, c2 = _chain(tmp_repo, 3)
    tmp_repo.create_branch("dev", "main~1")
    tmp_repo.create_tag("v1", "main~2")
    r = tmp_repo.resolve
    assert r("main") == r("HEAD") == r("@") == r("refs/heads/main") == c2
    assert r(cid_str(c1)) == c1  # full CID
    assert r(cid_str(c1)[:16]) == c1  # unique prefix
    assert r("main~1") == r("main^") == r("HEAD~1") == r("dev") == c1
    assert r("main~2") == r("main~1~1") == r("main^^") == r("v1") == r("refs/tags/v1") == c0
    assert r(cid_str(c2) + "~2") == c0
    assert r("dev~1") == c0
    with pytest.raises(RevisionNotFound, match="ancestors"):
        r("main~3")
    for unknown in ("nope", "main2", "bafyreiaaaaaaaaaaaaaaaa", "x~1", ""):
        with pytest.raises(RevisionNotFound):
            r(unknown)
    # a CID that is not a commit, or a commit CID not in this repository
    with pytest.raises(RevisionNotFound, match="not a commit"):
        r(cid_str(tmp_repo.read_commit(c0).tree))
    with pytest.raises(RevisionNotFound, match="not in this repository"):
        r(cid_str(make_cid(DAG_CBOR, b"elsewhere")))
    # REV:PATH
    assert tmp_repo.split_revpath("dev:a/b") == (c1, "a/b")
    assert tmp_repo.split_revpath(":x") == (c2, "x")


def test_ambiguous_prefix(tmp_repo):
    tree = _empty_tree(tmp_repo)
    seen = {}
    for i in range(200):  # birthday: two commits share 8 characters within ~10 tries
        cid = tmp_repo.commit_tree(tree, message=f"m{i}", timestamp=i).cid
        key = cid_str(cid)[:8]
        if key in seen:
            break
        seen[key] = cid
    else:
        pytest.fail("no shared 8-character prefix in 200 commits")
    with pytest.raises(AmbiguousRevision, match="ambiguous"):
        tmp_repo.resolve(key)
    assert issubclass(AmbiguousRevision, RevisionNotFound)
    # one more character disambiguates (unless they share 9, then 10 ...)
    a, b = cid_str(seen[key]), cid_str(cid)
    k = next(i for i in range(8, 60) if a[i] != b[i]) + 1
    assert tmp_repo.resolve(a[:k]) == seen[key] and tmp_repo.resolve(b[:k]) == cid


def test_log_order_and_first_parent(tmp_repo):
    c = _chain(tmp_repo, 4)
    assert [x for x, _ in tmp_repo.log()] == c[::-1]
    assert [x for x, _ in tmp_repo.log("main~1", max_count=2)] == [c[2], c[1]]
    side = tmp_repo.commit_tree(tmp_repo.read_commit(c[0]).tree, branch="side", parents=[c[1]],
                                timestamp=1_600_000_100, message="side").cid
    merge = tmp_repo.commit_tree(tmp_repo.read_commit(c[0]).tree, parents=[c[3], side],
                                 timestamp=1_600_000_200, message="merge").cid
    full = [x for x, _ in tmp_repo.log()]
    assert full[0] == merge and side in full and len(full) == 6
    assert side not in [x for x, _ in tmp_repo.log(first_parent=True)]
    assert tmp_repo.merge_base(c[3], side) == c[1]


# --------------------------------------------------------------------------- refs
def test_branches_tags_and_reflog(tmp_repo):
    c0, c1 = _chain(tmp_repo, 2)
    assert tmp_repo.head_branch() == "main" and tmp_repo.branches() == {"main": c1}
    assert tmp_repo.create_branch("feature/x") == c1
    assert tmp_repo.create_branch("old", cid_str(c0)) == c0
    with pytest.raises(RefExists):
        tmp_repo.create_branch("old")
    assert tmp_repo.create_branch("old", "main", force=True) == c1
    for bad in ("a..b", "-x", "has space", "x~1", "a:b", "HEAD", "end.lock", "x/", ".hidden"):
        with pytest.raises(InvalidRefName):
            tmp_repo.create_branch(bad)
    tmp_repo.create_tag("v1.0", "main~1")
    with pytest.raises(RefExists):
        tmp_repo.create_tag("v1.0")
    assert tmp_repo.tags() == {"v1.0": c0}
    assert tmp_repo.delete_tag("v1.0") == c0 and tmp_repo.tags() == {}
    with pytest.raises(RevisionNotFound):
        tmp_repo.delete_tag("v1.0")
    with pytest.raises(TvcfsError, match="HEAD"):
        tmp_repo.delete_branch("main")
    assert tmp_repo.delete_branch("old") == c1
    with pytest.raises(RevisionNotFound):
        tmp_repo.delete_branch("old")
    assert set(tmp_repo.branches()) == {"main", "feature/x"}
    # update_ref is compare-and-swap
    with pytest.raises(RefConflict):
        tmp_repo.update_ref("refs/heads/feature/x", c0, expected=c0)
    tmp_repo.update_ref("refs/heads/feature/x", c0, expected=c1, message="reset")

    # the reflog holds every ref change, in order, old -> new
    log = tmp_repo.reflog()
    got = [(e["ref"], e["old"], e["new"]) for e in log]
    s0, s1 = cid_str(c0), cid_str(c1)
    assert got == [
        ("refs/heads/feature/x", None, s1), ("refs/heads/feature/x", s1, s0),
        ("refs/heads/main", None, s0), ("refs/heads/main", s0, s1),
        ("refs/heads/old", None, s0), ("refs/heads/old", s0, s1), ("refs/heads/old", s1, None),
        ("refs/tags/v1.0", None, s0), ("refs/tags/v1.0", s0, None),
    ]
    assert [e["message"] for e in tmp_repo.reflog("main")] == ["commit: c0", "commit: c1"]
    # a deleted branch's commit is still found through the reflog
    assert tmp_repo.resolve(s1[:12]) == c1
    tmp_repo.set_head("feature/x")
    assert tmp_repo.head_branch() == "feature/x" and tmp_repo.head() == c0


def test_new_branch_starts_at_head(tmp_repo, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_bytes(b"x")
    c0 = tmp_repo.commit_dir(str(d)).cid
    (d / "f").write_bytes(b"y")
    c1 = tmp_repo.commit_dir(str(d), branch="exp").cid
    assert tmp_repo.read_commit(c1).parents == (c0,)
    assert tmp_repo.branches() == {"main": c0, "exp": c1}


# --------------------------------------------------------------------------- CAR
def test_car_export_import_between_repositories(real_model_dir, tmp_repo, tmp_path):
    c = tmp_repo.commit_dir(real_model_dir, message="m").cid
    buf = io.BytesIO()
    n = tmp_repo.export_car("main", buf)
    assert n > 190
    other = Repo.init(str(tmp_path / "other"))
    try:
        roots, new = other.import_car(io.BytesIO(buf.getvalue()), branch="imported")
        assert roots == [c] and new == n
        assert other.resolve("imported") == c
        out = tmp_path / "out"
        other.checkout("imported", str(out))
        assert_same_tree(real_model_dir, str(out))
        # a sub-path export is rooted at that file
        fbuf = io.BytesIO()
        tmp_repo.export_car("main", fbuf, path="config.json")
        roots, _ = other.import_car(io.BytesIO(fbuf.getvalue()))
        assert roots == [tmp_repo.entry("main", "config.json").cid]
    finally:
        other.close()


def test_import_of_corrupted_car_stores_nothing(real_model_dir, tmp_repo, tmp_path):
    tmp_repo.commit_dir(os.path.join(real_model_dir, "1_Pooling"))
    buf = io.BytesIO()
    tmp_repo.export_car("main", buf)
    raw = bytearray(buf.getvalue())
    raw[-3] ^= 0x55
    other = Repo.init(str(tmp_path / "other"))
    try:
        with pytest.raises(CorruptBlock):
            other.import_car(io.BytesIO(bytes(raw)), branch="x")
        assert other.store.stat()["blocks"] == 0 and other.branches() == {}
    finally:
        other.close()


# --------------------------------------------------------------------------- crash safety
_KILLED = textwrap.dedent(r"""
    import sys
    from tvcfs.repo import Repo
    repo = Repo.open(sys.argv[1])
    print("ready", flush=True)
    repo.commit_dir(sys.argv[2], message="big")
    print("done", flush=True)
""")


@pytest.mark.slow
def test_kill_9_during_a_big_commit_leaves_a_consistent_repository(tmp_repo, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    (small / "f").write_bytes(b"small")
    first = tmp_repo.commit_dir(str(small), message="first").cid
    big = tmp_path / "big"
    big.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # 3 x 100 MiB of incompressible bytes, nothing deduplicates
        (big / f"part{i}.bin").write_bytes(rng.integers(0, 1 << 63, (100 * MIB) // 8, dtype=np.int64).tobytes())
    killed_mid_commit = 0
    for delay in (0.05, 0.3, 0.6):
        p = subprocess.Popen([sys.executable, "-c", _KILLED, tmp_repo.root, str(big)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(delay)
        alive = p.poll() is None
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate(timeout=60)
        assert p.returncode in (-signal.SIGKILL, 0)
        if alive and "done" not in out:
            killed_mid_commit += 1
        # the repository opens; every ref points to a complete, verifiable commit
        r = Repo.open(tmp_repo.root)
        try:
            head = r.head()
            assert head == first or r.read_commit(head).message == "big"
            for name, cid in r.refs().items():
                assert r.verify(cid) >= 2, name
        finally:
            r.close()
    assert killed_mid_commit >= 1, "the commit always finished before the kill: make it bigger"
    # the writer lock of the killed process does not block the next commit
    res = tmp_repo.commit_dir(str(big), message="after the crash")
    assert res.changed or tmp_repo.read_commit(tmp_repo.head()).message == "big"
    out = tmp_path / "out"
    tmp_repo.checkout("main", str(out))
    assert_same_tree(str(big), str(out))
    tmp_repo.verify(tmp_repo.head())


def test_file_shrinking_while_added_is_refused(tmp_repo, tmp_path):
    """The leaf plan comes from the header; if the file is shorter when its leaves are
    read, the commit fails (nothing stored) instead of recording a short file."""
    from support.safetensors import write_safetensors_raw
    from tvcfs.importer import FileChanged, Importer

    path = str(tmp_path / "m.safetensors")
    write_safetensors_raw(path, [("a", "U8", [3 * MIB], os.urandom(3 * MIB)), ("b", "U8", [10], bytes(10))])
    size = os.path.getsize(path)
    blocks = tmp_repo.store.stat()["blocks"]
    fd = os.open(path, os.O_RDONLY)
    try:
        os.truncate(path, size - 2 * MIB)  # shrinks after `size` was taken
        with pytest.raises(FileChanged):
            with tmp_repo.store.write() as w:
                Importer(w).add_fd(fd, None, size, path)
    finally:
        os.close(fd)
    assert tmp_repo.store.stat()["blocks"] == blocks
