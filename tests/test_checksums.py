"""At-rest checksums (docs/repository.md, "Verified reads"): every write path leaves
each stored block with the xxh3-64 checksum of its bytes in the ``sums``
sub-database, recorded in the transaction that stored it; ``tvcfs fsck`` records
those a store made before checksums lacks, and re-records a damaged one.

Real LMDB stores, a real writable FUSE mount, a real QUIC server process, real
``tvcfs`` subprocesses.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from support.cli import run_tvcfs
from support.mount import Mounted
from support.repo import forget_checksums
from support.safetensors import write_safetensors_raw
from support.server import Server
from support.wait import wait_until
from tvcfs.encoding.cid import cid_str
from tvcfs.errors import CorruptBlock
from tvcfs.repo import Repo
from tvcfs.store.lmdb_store import checksum
from tvcfs.store.verify import verify_and_put

pytestmark = pytest.mark.timeout(180)

MIB = 1 << 20


def assert_checksummed(root: str) -> int:
    """Every block stored in the repository at ``root`` hashes to its CID and has the
    checksum of its (decoded) bytes recorded; returns how many blocks there are."""
    n = 0
    with Repo.open(root) as repo, repo.store.view(verify=False) as v:
        for cid, value, packed in v.stored():
            data = v.decode(cid, value, fresh=True) if packed else value
            assert hashlib.sha256(data).digest() == cid[4:], cid_str(cid)
            assert v.recorded_checksum(cid) == checksum(data), f"no checksum for {cid_str(cid)}"
            n += 1
    assert n > 0
    return n


def model_dir(path, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    a = rng.standard_normal(MIB // 2, dtype=np.float32)
    b = (rng.standard_normal(MIB // 4, dtype=np.float32)).astype(np.float16)
    write_safetensors_raw(os.path.join(path, "model.safetensors"),
                          [("a", "F32", [a.size], a.tobytes()), ("b", "F16", [b.size], b.tobytes())])
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write('{"seed": %d}\n' % seed)
    return str(path)


@pytest.fixture
def repo_root(tmp_path):
    root = str(tmp_path / "repo")
    with Repo.init(root) as repo:
        repo.commit_dir(model_dir(tmp_path / "src"), "main", "one", timestamp=1_700_000_000)
    return root


def test_commit_records_a_checksum_per_block(repo_root):
    assert assert_checksummed(repo_root) >= 5


def test_verify_and_put_records_checksums_of_good_blocks_only(repo_root, tmp_path):
    with Repo.open(repo_root) as src, src.store.view() as v:
        blocks = [(cid, bytes(data)) for cid, data in v.items()]
    bad_cid, bad_data = blocks[0][0], b"X" + blocks[0][1]
    other = str(tmp_path / "other")
    with Repo.init(other) as dst:
        res = verify_and_put(dst.store, [(bad_cid, bad_data)] + blocks[1:])
        assert res.bad == [bad_cid]
        assert not dst.store.has(bad_cid)
    assert assert_checksummed(other) >= len(blocks) - 1


def test_mount_commit_records_checksums(repo_root, tmp_path):
    with Repo.open(repo_root) as repo:
        before = repo.head()
    with Mounted(repo_root, str(tmp_path / "mnt")) as m:
        with open(m.path("branches", "main", "written.bin"), "wb") as f:
            f.write(np.random.default_rng(5).bytes(3 * MIB + 123))
        with open(m.path("branches", "main", "config.json"), "w") as f:
            f.write('{"seed": 9}\n')

        def moved():
            with Repo.open(repo_root) as r:
                return r.head() != before
        wait_until(moved, timeout=30, what="the mount's commit")
    with Repo.open(repo_root) as repo:
        assert b"".join(repo.read_file(repo.head(), "config.json")) == b'{"seed": 9}\n'
    assert_checksummed(repo_root)


def test_pack_keeps_checksums_over_the_decoded_bytes(repo_root, tmp_path):
    from tvcfs.pack import pack

    with Repo.open(repo_root) as repo:
        repo.commit_dir(model_dir(tmp_path / "src", seed=0), "main", "two", timestamp=1_700_000_100)
        pack(repo, keep_hot=0)
        assert repo.store.stat()["packed"] > 0
    assert assert_checksummed(repo_root)
    # a packed block reads through its checksum: decoded bytes compared with the record
    with Repo.open(repo_root) as repo, repo.store.view(verify=False) as v:
        packed = [cid for cid, _, p in v.stored() if p]
    with Repo.open(repo_root) as repo:
        for cid in packed:
            assert hashlib.sha256(repo.store.get(cid)).digest() == cid[4:]


def test_clone_over_the_wire_records_checksums(repo_root, tmp_path):
    dest = str(tmp_path / "clone")
    with Server(repo_root) as srv:
        run_tvcfs("clone", srv.url, dest)
    n = assert_checksummed(dest)
    with Repo.open(repo_root) as repo:
        assert n == repo.store.stat()["blocks"]


def test_fsck_records_the_checksums_an_older_store_lacks(repo_root):
    n = forget_checksums(repo_root)
    assert n > 0
    with Repo.open(repo_root) as repo, repo.store.view(verify=False) as v:
        assert all(v.recorded_checksum(cid) is None for cid, _, _ in v.stored())
    # reads of such a store hash against the CID and succeed
    p = run_tvcfs("--repo", repo_root, "cat", "main:model.safetensors")
    assert len(p.stdout) > MIB
    p = run_tvcfs("--repo", repo_root, "fsck")
    assert f"recorded the at-rest checksums of {n} block(s) that had none" in p.stdout.decode()
    assert assert_checksummed(repo_root) == n
    p = run_tvcfs("--repo", repo_root, "fsck")  # nothing left to record
    assert "recorded" not in p.stdout.decode()


def test_a_damaged_checksum_record_is_an_error_and_fsck_records_it_again(repo_root):
    with Repo.open(repo_root) as repo:
        cid = repo.entry(repo.head(), "config.json").cid
        with repo.store.write() as w:
            w.record_checksum(cid, bytes(8))  # the bytes are right, their record is not
    p = run_tvcfs("--repo", repo_root, "cat", "main:config.json", ok=False)
    err = p.stderr.decode()
    assert p.returncode != 0 and err.startswith("tvcfs: error: ") and cid_str(cid) in err, err
    assert "checksum" in err and p.stdout == b""
    p = run_tvcfs("--repo", repo_root, "fsck", ok=False)
    assert p.returncode != 0
    assert f"block {cid_str(cid)} hashes to its CID but its recorded checksum is damaged" in p.stdout.decode()
    run_tvcfs("--repo", repo_root, "fsck")  # sound again
    assert run_tvcfs("--repo", repo_root, "cat", "main:config.json").stdout == b'{"seed": 0}\n'
    assert_checksummed(repo_root)


def test_a_checksum_read_before_the_bytes_is_what_they_are_checked_against(repo_root):
    """The mount's preload threads read a leaf's checksum before paging the leaf in,
    in the same read transaction, and hand it to ``check``: bytes that do not match
    it are refused naming the CID, and ones that match are remembered as checked."""
    with Repo.open(repo_root) as repo:
        store = repo.store
        cid = repo.entry(repo.head(), "config.json").cid
        view = store.snapshot(verify=False)
        try:
            want = view.recorded_checksum(cid)
            data = view.block(cid)
            assert want == checksum(data)
            with pytest.raises(CorruptBlock, match=cid_str(cid)):
                store.check(cid, data, view.txn, bytes(8))  # a checksum the bytes do not match
            assert cid not in store.verified
            flipped = bytearray(data)
            flipped[0] ^= 1
            with pytest.raises(CorruptBlock, match=cid_str(cid)):
                store.check(cid, bytes(flipped), view.txn, want)
            assert cid not in store.verified
            store.check(cid, data, view.txn, want)
            assert cid in store.verified
        finally:
            view.close()


def test_blocks_stored_as_verified_skip_their_first_check_unless_already_on_disk(repo_root):
    """``put_many(..., verified=True)`` (a fetch that just hashed the bytes): a new block
    joins the process's verified set when the transaction commits, so its first read
    makes no at-rest check; a block the store already held is not marked (its bytes
    on disk were not the ones hashed: here its checksum record is damaged, and the
    read still says so); an aborted transaction marks nothing."""
    from tvcfs.encoding.cid import RAW, make_cid

    with Repo.open(repo_root) as repo:
        store = repo.store
        old = repo.entry(repo.head(), "config.json").cid
        with store.view(verify=False) as v:
            old_bytes = bytes(v.get(old))
        with store.write() as w:
            w.record_checksum(old, bytes(8))
        new_bytes = os.urandom(5000)
        new = make_cid(RAW, new_bytes)
        aborted_bytes = os.urandom(5000)
        aborted = make_cid(RAW, aborted_bytes)
        with pytest.raises(RuntimeError), store.write() as w:
            w.put_block(aborted, aborted_bytes, verified=True)
            raise RuntimeError("abort")
        assert aborted not in store.verified and not store.has(aborted)
        assert store.put_many([(old, old_bytes), (new, new_bytes)], verified=True) == 1
        assert new in store.verified and old not in store.verified
        checks = store.read_checks
        assert store.get(new) == new_bytes
        assert store.read_checks == checks
        with pytest.raises(CorruptBlock, match=cid_str(old)):
            store.get(old)
