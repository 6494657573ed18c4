"""The LMDB block store (docs/repository.md): sub-databases, one write transaction per
change, compare-and-swap refs with a reflog, zero-copy reads, a full store."""

from __future__ import annotations

import os

import lmdb
import pytest

from tvcfs.encoding.cid import DAG_CBOR, RAW, cid_str, make_cid
from tvcfs.errors import RefConflict
from tvcfs.store import BlockStore
from tvcfs.store.lmdb_refs import PinStore, Reflog, RefStore
from tvcfs.store.lmdb_store import LMDBStore, StoreFull


@pytest.fixture
def store(tmp_path):
    s = LMDBStore(str(tmp_path / "store"))
    yield s
    s.close()


def blk(data: bytes):
    return make_cid(RAW, data), data


def test_sub_databases_exist(store):
    with store.env.begin() as txn:
        names = {bytes(k) for k, _ in txn.cursor()}
    assert {b"blocks", b"refs", b"reflog", b"pins", b"meta"} <= names


def test_block_store_protocol(store):
    assert isinstance(store, BlockStore)
    a, b, c = blk(b"a"), blk(b"bb"), blk(os.urandom(1 << 20))
    assert store.put(*a) is True
    assert store.put(*a) is False  # already present
    assert store.put_many([b, c, a]) == 2
    assert store.get(a[0]) == b"a" and store.has(b[0]) and not store.has(make_cid(RAW, b"zz"))
    assert store.get(make_cid(RAW, b"zz")) is None
    assert dict(store.get_many([a[0], make_cid(RAW, b"zz")])) == {a[0]: b"a", make_cid(RAW, b"zz"): None}
    assert sorted(store) == sorted([a[0], b[0], c[0]])
    assert store.stat()["blocks"] == 3
    assert store.delete(b[0]) is True and store.delete(b[0]) is False
    assert not store.has(b[0])


def test_zero_copy_reads(store):
    cid, data = blk(os.urandom(4096))
    store.put(cid, data)
    with store.read() as txn:
        v = txn.get(cid, db=store.dbs["blocks"])
        assert isinstance(v, memoryview) and bytes(v) == data


def test_write_transaction_is_atomic(store):
    a, b = blk(b"1"), blk(b"2")
    with pytest.raises(RuntimeError):
        with store.write() as w:
            w.put_block(*a)
            w.set_ref("refs/heads/main", make_cid(DAG_CBOR, b"c"), None)
            raise RuntimeError("boom")
    assert not store.has(a[0]) and RefStore(store).get("refs/heads/main") is None and Reflog(store).entries() == []
    with store.write() as w:
        assert w.put_block(*b) and not w.put_block(*b)
        assert (w.new_blocks, w.new_bytes) == (1, 1)
        assert w.has_block(b[0]) and bytes(w.get_block(b[0])) == b"2"
    assert store.has(b[0])


def test_ref_compare_and_swap_and_reflog(store):
    c1, c2, c3 = (make_cid(DAG_CBOR, x) for x in (b"1", b"2", b"3"))
    ref = "refs/heads/main"
    with store.write() as w:
        w.set_ref(ref, c1, None, message="create")
    with store.write() as w:
        w.set_ref(ref, c2, c1, message="advance")
    with pytest.raises(RefConflict) as ei:
        with store.write() as w:
            w.set_ref(ref, c3, c1, message="stale")  # expected c1, but it is c2
    err = ei.value
    assert (err.ref, err.expected, err.actual) == (ref, c1, c2)
    assert cid_str(c1) in str(err) and cid_str(c2) in str(err) and "\n" not in str(err)
    assert RefStore(store).get(ref) == c2
    with store.write() as w:
        w.set_ref(ref, None, c2, message="delete")
    assert RefStore(store).get(ref) is None
    log = Reflog(store).entries(ref)
    assert [(e["old"], e["new"], e["message"]) for e in log] == [
        (None, cid_str(c1), "create"), (cid_str(c1), cid_str(c2), "advance"), (cid_str(c2), None, "delete")]
    assert [e["seq"] for e in log] == [0, 1, 2] and all(e["ref"] == ref for e in log)
    assert all(isinstance(e["time"], int) for e in log)


def test_reflog_sequences_are_per_ref(store):
    c = make_cid(DAG_CBOR, b"x")
    with store.write() as w:
        for name in ("refs/heads/a", "refs/heads/a/b", "refs/heads/ab", "refs/tags/a"):
            w.set_ref(name, c, None)
        w.append_reflog("refs/heads/a", c, None, "rejected one", rejected=True)
    a = Reflog(store).entries("refs/heads/a")
    assert [e["seq"] for e in a] == [0, 1] and a[1]["rejected"] is True
    assert [e["seq"] for e in Reflog(store).entries("refs/heads/a/b")] == [0]
    assert [e["seq"] for e in Reflog(store).entries("refs/heads/ab")] == [0]
    assert len(Reflog(store).entries()) == 5
    assert set(RefStore(store).all("refs/heads/")) == {"refs/heads/a", "refs/heads/a/b", "refs/heads/ab"}


def test_symref_pins_meta(store):
    c = make_cid(DAG_CBOR, b"p")
    with store.write() as w:
        w.set_symref("HEAD", "refs/heads/main")
        w.pin(c, "release")
        w.set_meta("format", 1)
        w.set_meta("remotes", {"origin": "quic://x"})
    assert RefStore(store).get("HEAD") == b"ref: refs/heads/main"
    assert PinStore(store).all()[c]["name"] == "release"
    assert store.get_meta("format") == 1 and store.get_meta("remotes") == {"origin": "quic://x"}
    assert store.get_meta("missing", 7) == 7
    with store.write() as w:
        assert w.unpin(c)
        w.set_meta("format", None)
    assert PinStore(store).all() == {} and store.get_meta("format") is None


def test_same_path_shares_one_environment(tmp_path):
    p = str(tmp_path / "s")
    a = LMDBStore(p)
    b = LMDBStore(p)
    try:
        assert a.env is b.env  # LMDB must not be opened twice in one process
        a.put(*blk(b"shared"))
        b.close()
        assert a.get(make_cid(RAW, b"shared")) == b"shared"  # still open for a
    finally:
        a.close()
    c = LMDBStore(p)
    try:
        assert c.get(make_cid(RAW, b"shared")) == b"shared"  # durable across reopen
    finally:
        c.close()


def test_full_store_raises_store_full_and_keeps_data(tmp_path):
    s = LMDBStore(str(tmp_path / "small"), map_size=4 << 20)
    try:
        keep = blk(b"committed before")
        s.put(*keep)
        with pytest.raises(StoreFull):
            s.put_many(blk(os.urandom(512 << 10)) for _ in range(16))
        assert s.get(keep[0]) == b"committed before"
        assert s.stat()["blocks"] == 1
        s.put(*blk(b"still writable"))
    finally:
        s.close()
    assert issubclass(StoreFull, Exception) and not issubclass(StoreFull, lmdb.Error)
