"""Hostile model files and damaged repository files against the real CLI (real
subprocesses, real LMDB): bad input gets a clear error or is stored as it is, and
loses nothing (README; docs/format.md "Chunking"; docs/repository.md).

- ``.safetensors`` files whose header is nested too deep for Python's JSON parser,
  or whose tensors' shape and dtype disagree with their byte span (a zero or a huge
  dimension, a shape of 10 elements over 8 KiB): ``commit`` stores them byte for byte
  as opaque files, ``diff``/``show``/``log --stat``/``merge`` treat them as such
  (before: ``commit`` died with "unexpected failure (maximum recursion depth
  exceeded …)"; ``diff`` allocated a list of 2^80 chunk slots and died with
  ``MemoryError``, or compared 10 elements of an 8 KiB tensor).

Only processes started here are ended (by PID).
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import pytest
from support.cli import err_of, run_tvcfs
from support.mount import Mounted, fusermount
from support.repo import all_blocks, make_repo
from support.safetensors import write_safetensors_raw
from support.trees import assert_same, snapshot

from tvcfs.repo import Repo

pytestmark = pytest.mark.timeout(120)


def _raw_st(path, header: bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + data)


def _hostile_dir(d, flip: int) -> None:
    """Files whose header parses but whose tensors do not span their bytes, and one
    whose JSON is nested 100 000 deep; ``flip`` changes their tensor bytes."""
    d.mkdir(exist_ok=True)
    data = bytes((i * 7 + flip) % 251 for i in range(16384))
    ok = ("b", "F32", [2048], data[8192:])
    write_safetensors_raw(str(d / "huge_dim.safetensors"), [("a", "F32", [2**40, 2**40], data[:8192]), ok])
    write_safetensors_raw(str(d / "zero_dim.safetensors"), [("a", "F32", [0, 2048], data[:8192]), ok])
    write_safetensors_raw(str(d / "short_shape.safetensors"), [("a", "F16", [10], data[:8192]), ok])
    _raw_st(d / "deep.safetensors", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", data)
    write_safetensors_raw(str(d / "good.safetensors"), [("a", "F32", [2048], data[:8192]), ok])


def test_safetensors_whose_tensors_do_not_span_their_bytes_are_opaque_files(tmp_path):
    repo = str(tmp_path / "repo")
    run_tvcfs("init", repo)
    _hostile_dir(tmp_path / "m", 0)
    p = run_tvcfs("-C", repo, "commit", tmp_path / "m", "-m", "one", ok=None)
    assert p.returncode == 0, err_of(p)
    run_tvcfs("-C", repo, "branch", "ft")
    _hostile_dir(tmp_path / "m", 1)
    run_tvcfs("-C", repo, "commit", tmp_path / "m", "--branch", "ft", "-m", "two")

    out = run_tvcfs("-C", repo, "--json", "diff", "main", "ft", timeout=60).stdout
    files = {f["path"]: f for f in json.loads(out)["files"]}
    assert files["good.safetensors"]["kind"] == "safetensors"
    for name in ("huge_dim", "zero_dim", "short_shape", "deep"):
        assert files[f"{name}.safetensors"]["kind"] == "file", files[f"{name}.safetensors"]
    run_tvcfs("-C", repo, "diff", "--stat", "main", "ft", timeout=60)
    run_tvcfs("-C", repo, "log", "--stat", timeout=60)
    for name in ("huge_dim", "zero_dim", "short_shape", "deep"):
        shown = run_tvcfs("-C", repo, "show", f"ft:{name}.safetensors", timeout=60, text=True).stdout
        assert " tensors:" not in shown and "\n  1 leaves\n" in shown, shown

    # a merge of both sides' changes: these files are opaque (ours/theirs/base only)
    run_tvcfs("-C", repo, "checkout", "main", tmp_path / "w")
    _hostile_dir(tmp_path / "w", 2)
    run_tvcfs("-C", repo, "commit", tmp_path / "w", "-m", "three")
    m = run_tvcfs("-C", repo, "merge", "--dry-run", "-s", "average-ours-theirs", "ft", ok=None, timeout=60)
    err = err_of(m) + m.stdout.decode()
    assert "Traceback" not in err and "unexpected failure" not in err, err
    for name in ("huge_dim", "zero_dim", "short_shape", "deep"):
        assert f"CONFLICT {name}.safetensors: changed on both sides (not safetensors" in err, err

    # byte-identical on checkout
    run_tvcfs("-C", repo, "checkout", "ft", tmp_path / "co")
    assert_same(snapshot(tmp_path / "co"), snapshot(tmp_path / "m"), "checkout of ft")
    run_tvcfs("-C", repo, "fsck")


# ------------------------------------------------------------ damaged data.mdb
def _store_file(repo) -> str:
    return str(repo / ".tvcfs" / "store" / "data.mdb")


def _zero_pages_holding(path: str, needle: bytes, psize: int = mmap.PAGESIZE, span: int = 8 << 20) -> int:
    """Overwrite with zeros every page (after LMDB's two meta pages) of the first
    ``span`` bytes of ``path`` that holds ``needle``; returns how many."""
    n = 0
    with open(path, "r+b") as f:
        buf = f.read(span)
        for off in range(2 * psize, len(buf), psize):
            if needle in buf[off:off + psize]:
                f.seek(off)
                f.write(b"\0" * psize)
                n += 1
    return n


@pytest.mark.parametrize("damage", ["empty", "truncated", "btree_page"])
def test_damaged_data_mdb_is_one_line_naming_the_file(tmp_path, damage):
    make_repo(tmp_path, {"a.bin": b"a" * 300_000}).close()
    repo = tmp_path / "repo"
    data = _store_file(repo)
    if damage == "empty":
        os.truncate(data, 0)
    elif damage == "truncated":
        os.truncate(data, 2 * mmap.PAGESIZE)
    else:  # the pages of the refs and the reflog: the store opens, reading a ref fails
        assert _zero_pages_holding(data, b"refs/heads/main") >= 1
    for cmd in (["log"], ["cat", "main:a.bin"], ["reflog"], ["fsck"], ["commit", tmp_path / "wt", "-m", "x"]):
        p = run_tvcfs("-C", repo, *cmd, ok=False, timeout=60)
        err = err_of(p)
        assert err.startswith("tvcfs: error: ") and err.count("\n") == 1, (cmd, err)
        assert "unexpected failure" not in err and "Traceback" not in err, (cmd, err)
        assert f"{data}: the repository store is damaged" in err and "restore" in err, (cmd, err)
    # tvcfs mount: the same line, and no mount or daemon left (before: a mount came up
    # and answered EIO on branches/main)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        p = run_tvcfs("mount", repo, mnt, ok=None, timeout=60)
        err = err_of(p)
        assert p.returncode == 1 and err.startswith("tvcfs: error: ") and err.count("\n") == 1, err
        assert f"{data}: the repository store is damaged" in err, err
    finally:
        if str(mnt) in Path("/proc/mounts").read_text():
            fusermount("-u", "-z", str(mnt))
    if damage == "empty":  # nothing was written into it
        assert os.path.getsize(data) == 0


def test_store_lmdb_cannot_open_is_one_line_naming_it(tmp_path):
    """``lock.mdb`` replaced by a directory: one line naming the store and what it
    needs (before: "unexpected failure (…/store: Is a directory); this is a bug")."""
    make_repo(tmp_path, {"a.bin": b"a"}).close()
    store = tmp_path / "repo" / ".tvcfs" / "store"
    (store / "lock.mdb").unlink()
    (store / "lock.mdb").mkdir()
    err = err_of(run_tvcfs("-C", tmp_path / "repo", "log", ok=False))
    assert err == (f"tvcfs: error: {store}: LMDB cannot open the store (Is a directory): data.mdb and "
                   "lock.mdb there must be files this user may read and write, on a disk with space\n"), err


# ------------------------------------------------------------ damaged configuration
@pytest.mark.parametrize("key,raw,cmd", [
    ("remotes", b"[1]", ["remote", "list"]),           # a list where a map belongs
    ("remotes", b'{"origin": 5}', ["log"]),             # an item of the wrong type
    ("worktrees", b'{"/x": 5}', ["status"]),
    ("conflicts", b"[5]", ["gc", "-n"]),
    ("lazy", b"garb", ["cat", "main:a.bin"]),           # not JSON
    ("pack.keep_hot", b'"a"', ["pack"]),
    ("verify.reads", b"{", ["config", "--list"]),
])
def test_damaged_configuration_record_is_named_and_can_be_removed(tmp_path, key, raw, cmd):
    repo = make_repo(tmp_path, {"a.bin": b"a" * 1000})
    st = repo.store
    with st.env.begin(write=True) as txn:  # behind tvcfs's back
        txn.put(key.encode(), raw, db=st.dbs["meta"])
    repo.close()
    root = tmp_path / "repo"
    p = run_tvcfs("-C", root, *cmd, ok=False)
    err = err_of(p)
    assert err.startswith("tvcfs: error: ") and err.count("\n") == 1, err
    assert "unexpected failure" not in err, err
    assert f"the configuration record {key!r} in {root}/.tvcfs/store is damaged" in err, err
    assert f"tvcfs config --unset {key}" in err, err
    run_tvcfs("-C", root, "config", "--unset", key)
    run_tvcfs("-C", root, *cmd)
    run_tvcfs("-C", root, "fsck")


def test_only_a_damaged_internal_record_can_be_unset(tmp_path):
    make_repo(tmp_path, {"a.bin": b"a"}).close()
    p = run_tvcfs("-C", tmp_path / "repo", "config", "--unset", "remotes", ok=False)
    assert "'remotes' is not a key you can set" in err_of(p), err_of(p)


# ------------------------------------------------------------ damaged staging state
def test_damaged_staging_state_is_named_by_status_gc_and_recover(tmp_path):
    """A mount killed with staged writes, then its ``state.json`` damaged on disk
    (it is written atomically, so only the disk can cut it): ``status`` lists it with
    one line saying where the staged bytes are, ``gc`` deletes nothing and names it,
    ``recover`` names it, ``recover --discard`` removes it (before: ``status`` and
    ``recover`` said nothing was staged, and ``gc`` failed with a bare "Unterminated
    string starting at …")."""
    repo = make_repo(tmp_path, {"a.bin": b"a" * 1000})
    root = repo.root
    repo.close()
    m = Mounted(root, str(tmp_path / "mnt"), commit_delay=600)
    try:
        m.start()
        with open(m.branch("main", "new.txt"), "wb") as f:
            f.write(b"staged bytes\n")
        m.kill9()
        fusermount("-u", "-z", m.mnt)
    finally:
        m.stop()
    (sdir,) = (tmp_path / "repo" / ".tvcfs" / "staging").iterdir()
    state = sdir / "state.json"
    state.write_bytes(state.read_bytes()[:40])
    blocks = len(all_blocks(root))

    st = run_tvcfs("-C", root, "status", text=True).stdout
    assert f"{state} is damaged" in st and str(sdir / "data") in st, st
    for cmd in (["gc", "--expire", "0"], ["recover"]):
        p = run_tvcfs("-C", root, *cmd, ok=False)
        err = err_of(p)
        assert err.startswith("tvcfs: error: ") and err.count("\n") == 1, err
        assert f"{state} is damaged" in err and "tvcfs recover --discard" in err, err
    assert len(all_blocks(root)) == blocks
    assert b"staged bytes\n" in b"".join(p.read_bytes() for p in (sdir / "data").iterdir())
    run_tvcfs("-C", root, "recover", "--discard")
    assert "No staged changes" in run_tvcfs("-C", root, "status", text=True).stdout
    run_tvcfs("-C", root, "gc")


def test_merge_of_tensors_holding_inf_prints_no_python_warning(tmp_path):
    """Both sides change a tensor holding +inf and -inf; ``merge -s average-ours-theirs``
    gives NaN there (IEEE, as torch) and prints no ``RuntimeWarning`` with a source
    line (before: two lines of numpy's "invalid value encountered in multiply")."""
    import numpy as np

    repo = str(tmp_path / "repo")
    run_tvcfs("init", repo)
    w = tmp_path / "w"
    w.mkdir()

    def model(vals):
        write_safetensors_raw(str(w / "m.safetensors"), [("t", "F32", [4], np.array(vals, "<f4").tobytes())])

    model([1, 2, 3, 4])
    run_tvcfs("-C", repo, "commit", w, "-m", "base")
    run_tvcfs("-C", repo, "branch", "b")
    model([np.inf, 2, 3, 5])
    run_tvcfs("-C", repo, "commit", w, "-m", "ours")
    model([-np.inf, 2, 3, 6])
    run_tvcfs("-C", repo, "commit", w, "--branch", "b", "-m", "theirs")
    p = run_tvcfs("-C", repo, "merge", "-s", "average-ours-theirs", "b", text=True)
    assert "Warning" not in p.stderr and "Merge made" in p.stdout, (p.stdout, p.stderr)
    out = np.frombuffer(run_tvcfs("-C", repo, "cat", "main:m.safetensors").stdout[-16:], "<f4")
    assert np.isnan(out[0]) and list(out[1:]) == [2, 3, 5.5], out


# ------------------------------------------------------------ damaged node key
@pytest.mark.parametrize("content", [b"", b"garbage\n", b"-----BEGIN PRIVATE KEY-----\nMC4C\n"])
def test_damaged_node_key_is_one_line_saying_what_to_do(tmp_path, content):
    """``.tvcfs/node.key`` empty, garbage or cut: ``tvcfs id`` and ``tvcfs serve`` fail
    with one line naming it and what to do (before: ``id`` gave cryptography's "Unable
    to load PEM file. See https://… MalformedFraming", ``serve`` "unexpected failure
    (Exceptions from Trio nursery (1 sub-exception)); this is a bug in tvcfs")."""
    make_repo(tmp_path, {"a.txt": b"a\n"}).close()
    root = tmp_path / "repo"
    key = root / ".tvcfs" / "node.key"
    key.write_bytes(content)
    for cmd in (["id"], ["serve", "--listen", "127.0.0.1:0"]):
        p = run_tvcfs("-C", root, *cmd, ok=False, timeout=60)
        err = err_of(p)
        assert err.startswith("tvcfs: error: ") and err.count("\n") == 1, (cmd, err)
        assert f"{key} is damaged" in err and "move the file away" in err, (cmd, err)
    key.unlink()
    assert run_tvcfs("-C", root, "id", text=True).stdout.startswith("12D3KooW")


def test_a_damaged_journal_line_with_changes_after_it_is_named_not_skipped(tmp_path):
    """A mount killed after namespace changes (each a line of the staging journal),
    then a line in the middle of the journal damaged on disk: ``recover`` refuses with
    one line naming the journal and where the staged bytes are, commits nothing, and
    ``recover --discard`` removes it (before: the replay stopped at the damaged line as
    if it were the last one torn by the crash, and ``recover`` committed a tree without
    the later changes, exit 0). A torn last line alone is still the crash's and is
    dropped (tests/test_writes_crash.py)."""
    repo = make_repo(tmp_path, {"a.bin": b"a" * 1000})
    root = repo.root
    head = repo.refs()["refs/heads/main"]
    repo.close()
    m = Mounted(root, str(tmp_path / "mnt"), commit_delay=600)
    try:
        m.start()
        for d in ("d1", "d2", "d3"):
            os.mkdir(m.branch("main", d))
        m.kill9()
        fusermount("-u", "-z", m.mnt)
    finally:
        m.stop()
    (sdir,) = (tmp_path / "repo" / ".tvcfs" / "staging").iterdir()
    (journal,) = sdir.glob("journal-*.jsonl")
    lines = journal.read_bytes().split(b"\n")
    assert len([x for x in lines if x.strip()]) >= 2, lines  # the first change may be in the snapshot
    lines[0] = b'{"op": "mk' + b"\0" * 8
    journal.write_bytes(b"\n".join(lines))

    p = run_tvcfs("-C", root, "recover", ok=False)
    err = err_of(p)
    assert err.startswith("tvcfs: error: ") and err.count("\n") == 1, err
    assert f"{journal} is damaged (line 1 does not read and" in err and str(sdir / "data") in err, err
    with Repo.open(root) as r:
        assert r.refs()["refs/heads/main"] == head
    run_tvcfs("-C", root, "recover", "--discard")
    assert "No staged changes" in run_tvcfs("-C", root, "status", text=True).stdout
