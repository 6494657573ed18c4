"""Hostile input and damaged stores against the CLI and servers (real subprocesses,
real LMDB, real servers on loopback): bad input gets a one-line error and loses
nothing (README; docs/format.md "CAR v1"; docs/backends.md "The IPFS network").

- ``tvcfs import FILE.car -b BRANCH``: a CAR whose root commit is not in it, or
  whose commit lacks its tree or ancestors, is refused (no branch pointing at an
  incomplete commit, nothing stored); a damaged CAR's error names the file and
  says what is wrong (an identity-hash CID is "unsupported", not "out of range").
- ``tvcfs gc`` / ``tvcfs pack`` on a store where a reachable interior block is
  damaged: an error naming it, nothing deleted (before: everything below it was
  deleted as garbage); once the block is restored, everything reads again.
- damaged ref, reflog and pin records: ``fsck`` lists each (before: it stopped at
  the first with "unsupported CID 78797a"); ``reflog``, ``gc``, ``pin ls`` name the
  record instead of a bare JSON decoder message.
- ``tvcfs serve``: TLS clients that connect and never send their ``Hello`` (or
  trickle it a byte at a time) are disconnected after ``hello_timeout`` (10 s)
  instead of holding a socket and a task for ever; real clients are served meanwhile.

Only processes started here are ended (by PID).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
from support.cli import err_of, run_tvcfs
from support.repo import make_repo

from tvcfs.encoding.car import read_car, write_car
from tvcfs.encoding.cid import cid_str
from tvcfs.repo import Repo

pytestmark = pytest.mark.timeout(120)


def one_line_error(proc, *needles) -> str:
    """Assert ``proc`` failed with one ``tvcfs: error:`` line holding ``needles``."""
    err = err_of(proc)
    assert proc.returncode == 1 and err.startswith("tvcfs: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "unexpected failure" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# ----------------------------------------------------------------------- CAR import
@pytest.fixture
def two_commits(tmp_path):
    """A repository with commits c1 then c2 on main; returns ``(repo path, c1, c2)``
    (CID strings)."""
    repo = make_repo(tmp_path, {"a.bin": b"a" * 300_000, "d/b.txt": b"one\n"})
    c1 = repo.head()
    (tmp_path / "wt" / "d" / "b.txt").write_bytes(b"two\n")
    c2 = repo.commit_dir(str(tmp_path / "wt"), message="c2", timestamp=1_700_000_100).cid
    repo.close()
    return str(tmp_path / "repo"), cid_str(c1), cid_str(c2)


def _blocks_of(repo_path) -> int:
    with Repo.open(repo_path) as r:
        return r.store.stat()["blocks"]


def _rewrite_car(src, dst, keep) -> None:
    """Write ``dst``: the CAR ``src`` with its roots and only the blocks ``keep(i, cid)``
    accepts (``i``: the block's position)."""
    with open(src, "rb") as f:
        roots, blocks = read_car(f)
        chosen = [(c, b) for i, (c, b) in enumerate(blocks) if keep(i, c)]
    with open(dst, "wb") as out:
        write_car(out, roots, chosen)


@pytest.mark.parametrize("case", ["commit_only", "root_missing", "no_history"])
def test_import_never_points_a_branch_at_an_incomplete_commit(two_commits, tmp_path, case):
    """``import -b`` of a CAR holding only the commit block, of one whose root commit
    is not in it, or of a commit without its ancestors into an empty repository: one
    line naming the file and the missing block, no branch, nothing stored (before:
    the branch pointed at a commit ``fsck`` called broken, or "unexpected failure")."""
    src, c1, c2 = two_commits
    full = tmp_path / "full.car"
    run_tvcfs("-C", src, "export", "main", full)
    car = tmp_path / f"{case}.car"
    if case == "commit_only":
        _rewrite_car(full, car, lambda i, c: i == 0)
    elif case == "root_missing":
        _rewrite_car(full, car, lambda i, c: i > 0)
    else:
        car = full  # c2 without --history: c1 is not in it
    dst = tmp_path / "dst"
    run_tvcfs("init", dst)
    p = run_tvcfs("-C", dst, "import", car, "-b", "imp", ok=False)
    err = one_line_error(p, car.name, "nothing was imported")
    if case == "no_history":
        assert c1 in err and "--history" in err
    if case == "root_missing":
        assert c2 in err
    assert "imp" not in run_tvcfs("-C", dst, "branch").stdout.decode()
    assert _blocks_of(dst) == 0
    run_tvcfs("-C", dst, "fsck")
    # with the history it is complete: the branch is set, fsck is clean
    hist = tmp_path / "hist.car"
    run_tvcfs("-C", src, "export", "main", hist, "--history")
    run_tvcfs("-C", dst, "import", hist, "-b", "imp")
    run_tvcfs("-C", dst, "fsck")
    # and once c1 is held (a ref), the history-less CAR of c2 may set a branch too
    run_tvcfs("-C", dst, "import", full, "-b", "imp2")


def test_damaged_car_error_names_the_file_and_stores_nothing(two_commits, tmp_path):
    src, _, _ = two_commits
    full = tmp_path / "full.car"
    run_tvcfs("-C", src, "export", "main", full, "--history")
    data = full.read_bytes()
    dst = tmp_path / "dst"
    run_tvcfs("init", dst)
    with open(full, "rb") as f:
        read_car(f)  # reads the header only
        head = data[: f.tell()]  # the header: the sections start after it
    identity = b"\x01\x55\x00\x05hello"  # an identity-hash CID (Kubo's --inline): 9 bytes
    cases = {
        "truncated.car": (data[: len(data) // 2], "truncated"),
        "header-cut.car": (data[:30], ""),
        "varint.car": (b"\xff" * 16, "varint"),
        "empty.car": (b"", ""),
        "identity.car": (head + bytes([len(identity) + 5]) + identity + b"hello", "unsupported CID"),
        "cut-cid.car": (head + b"\x06\x01\x55\x12\x20\x00\x00", "ends inside its CID"),
    }
    for name, (body, why) in cases.items():
        (tmp_path / name).write_bytes(body)
        p = run_tvcfs("-C", dst, "import", tmp_path / name, "-b", "x", ok=False)
        one_line_error(p, name, "not a valid CAR v1 file", "nothing was imported", why)
    assert _blocks_of(dst) == 0


# ----------------------------------------------------------------------- gc, pack
@pytest.mark.parametrize("damage", ["truncated", "bit_flipped"])
def test_gc_on_a_damaged_interior_block_deletes_nothing(tmp_path, damage):
    """The root node of a multi-leaf file is damaged in the store (cut in half, or one
    bit of a link flipped): ``gc`` and ``gc -n`` and ``pack`` stop with one line naming
    the block, delete nothing; after the block is restored (a CAR import) the file
    reads byte-identical and ``gc`` deletes nothing reachable (before: ``gc`` deleted
    every leaf below the damaged node: the whole file lost for one bad block)."""
    data = bytes(range(256)) * (5 * 4096 + 7)  # ~5 MiB: several leaves
    repo = make_repo(tmp_path, {"f.bin": data, "small.txt": b"x\n"})
    root = str(tmp_path / "repo")
    node = repo.entry(None, "f.bin").cid
    st = repo.store
    good = bytes(st.get(node))
    assert len(good) > 200
    bad = good[: len(good) // 2] if damage == "truncated" else (
        good[:-40] + bytes([good[-40] ^ 0x01]) + good[-39:])  # inside the last link's hash
    with st.env.begin(write=True) as txn:  # behind tvcfs's back
        txn.put(node, bad, db=st.dbs["blocks"])
    repo.close()
    before = _blocks_of(root)
    for args in (["gc", "-n"], ["gc"], ["gc", "--pack"], ["pack", "--keep-hot", "0"]):
        p = run_tvcfs("-C", root, *args, ok=False)
        one_line_error(p, cid_str(node), *(["nothing was changed"] if args[0] == "gc" else []))
        assert _blocks_of(root) == before, args
    # restored from a CAR holding the good block: everything is there again
    car = tmp_path / "good.car"
    with open(car, "wb") as out:
        write_car(out, [node], [(node, good)])
    with Repo.open(root) as r, r.store.write() as w:
        w.delete_block(node)
    run_tvcfs("-C", root, "import", car)
    assert run_tvcfs("-C", root, "cat", "main:f.bin").stdout == data
    run_tvcfs("-C", root, "gc")
    run_tvcfs("-C", root, "fsck")
    assert run_tvcfs("-C", root, "cat", "main:f.bin").stdout == data


def test_damaged_ref_reflog_and_pin_records_are_named(tmp_path):
    repo = make_repo(tmp_path, {"a.txt": b"a\n"})
    root = str(tmp_path / "repo")
    st = repo.store
    pinned = bytes.fromhex("01551220") + bytes(32)
    with st.env.begin(write=True) as txn:  # behind tvcfs's back
        txn.put(b"refs/heads/bad", b"xyz", db=st.dbs["refs"])
        txn.put(b"refs/heads/main\x00" + (99).to_bytes(8, "big"), b"{not json", db=st.dbs["reflog"])
        txn.put(pinned, b"\xff\xfe", db=st.dbs["pins"])
    repo.close()
    p = run_tvcfs("-C", root, "fsck", ok=False)
    out = p.stdout.decode()
    assert "refs/heads/bad: damaged value 78797a (not a CID)" in out, (out, err_of(p))
    assert "reflog entry 99 of refs/heads/main" in out and cid_str(pinned) in out, out
    one_line_error(p, "3 problem(s)")
    for args, needle in ((["reflog"], "reflog entry 99 of refs/heads/main"),
                         (["gc", "-n"], "reflog entry 99 of refs/heads/main"),
                         (["pin", "ls"], f"tvcfs pin rm {cid_str(pinned)}")):
        one_line_error(run_tvcfs("-C", root, *args, ok=False), needle, "is damaged")


# ----------------------------------------------------------------------- block exchange
HELLO_TIMEOUT = 10.0  # tvcfs.transport.server.HELLO_TIMEOUT (not imported: the test predates it)

def test_serve_drops_clients_that_never_say_hello(two_commits, tmp_path, servers):
    """20 TLS clients that complete the handshake and send nothing, and one that
    trickles a byte a second: the server closes every one within its Hello deadline
    (before: all held for as long as the clients liked — file descriptors and tasks
    an attacker could exhaust); a clone meanwhile is served."""
    src, _, _ = two_commits
    srv = servers(src, tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    t0 = time.monotonic()
    idle = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
            for _ in range(20)]
    trickler = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
    stop = threading.Event()

    def trickle():
        frame = iter(b"\x64\x01" + bytes(200))  # a 100-byte Hello frame, a byte a second
        try:
            while not stop.wait(1.0):
                trickler.send(bytes([next(frame)]))
        except OSError:
            pass  # closed by the server

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        run_tvcfs("clone", srv.peer_url, tmp_path / "cl")  # real clients are not starved
        for s in [*idle, trickler]:
            s.settimeout(HELLO_TIMEOUT + 20 - (time.monotonic() - t0))
            try:
                assert s.recv(100) == b"", "the server sent something before a Hello"
            except (ConnectionResetError, ssl.SSLError):
                pass
        assert time.monotonic() - t0 < HELLO_TIMEOUT + 20
    finally:
        stop.set()
        t.join(5)
        for s in [*idle, trickler]:
            s.close()
    assert "no Hello within" in srv.log()
