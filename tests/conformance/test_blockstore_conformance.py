"""One conformance suite every BlockStore passes (as dulwich tests every object store
with one suite): the LMDB store, the in-memory store, routers over them, the S3
store against moto's server on loopback, and the gateway store against tvcfs's own
trustless gateway on loopback. A new backend adds one factory to ``STORES``:
``make(tmp_path, request)`` (``request`` gives fixtures, e.g. ``s3_endpoint``)."""

from __future__ import annotations

import contextlib
import os
import threading

import pytest

from tvcfs.encoding.cid import DAG_CBOR, RAW, make_cid
from tvcfs.store import BlockStore, StoreBase, view
from tvcfs.store.lmdb_store import LMDBStore
from tvcfs.store.memory import MemoryStore
from tvcfs.store.router import Router, Tier


def _lmdb(tmp_path, request=None):
    return LMDBStore(str(tmp_path / "store"))


class _PackingLMDB(LMDBStore):
    """The LMDB store with every block packed right after it is put (``tvcfs pack``'s
    encodings: a delta on the block put before it when the lengths match and that
    pays, else grouped or plain zstd; raw when nothing pays), so the whole suite runs
    against packed blocks read through the ``packed`` sub-database."""

    def put_many(self, blocks, sync=True):
        from tvcfs.store import encodings

        blocks = list(blocks)
        n = super().put_many(blocks, sync)
        with self.write() as w:
            prev = None
            for cid, data in blocks:
                if w.info(cid).encoding == "raw":
                    base = prev if prev and len(prev[1]) == len(data) and prev[0] != cid else (None, None)
                    depth = w.base_depth(base[0]) if base[0] else 0
                    if base[0] and (depth is None or depth >= encodings.MAX_DEPTH):
                        base, depth = (None, None), 0
                    value = encodings.encode(data, 4 if len(data) % 4 == 0 else 1, base[0], base[1], depth or 0)
                    if value is not None and not (encodings.header(value).base and w.dependents(cid)):
                        w.pack_block(cid, value)
                prev = (cid, data)
        return n

    def put(self, cid, block):
        return self.put_many([(cid, block)]) == 1


def _lmdb_packed(tmp_path, request=None):
    return _PackingLMDB(str(tmp_path / "store"))


def _memory(tmp_path, request=None):
    return MemoryStore()


def _router_memory(tmp_path, request=None):
    return Router([Tier("local", MemoryStore()), Tier("far", MemoryStore(), writable=False, trusted=False)])


def _router_lmdb(tmp_path, request=None):
    return Router([Tier("local", LMDBStore(str(tmp_path / "a"))),
                   Tier("far", LMDBStore(str(tmp_path / "b")), writable=False, trusted=False, timeout=5)])


def _s3(tmp_path, request):
    from support.s3 import new_bucket

    from tvcfs.store.s3 import S3Store

    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(f"s3://{new_bucket(endpoint)}/conformance", endpoint_url=endpoint, refresh_interval=0)


class _ServedGateway(StoreBase):
    """The gateway store (read-only: the spec has no upload) over a tvcfs gateway
    serving a fresh repository on loopback. Writes (``put``, ``put_many``,
    ``delete``) go into that repository's store, behind the gateway; every read
    (``get``, ``get_many``, ``has``, views) is an HTTP request the gateway answers and
    the gateway store verifies. Listing and ``stat`` are the served store's (a
    gateway cannot be listed)."""

    def __init__(self, tmp_path):
        from support.server import gateway_thread

        from tvcfs.repo import Repo
        from tvcfs.store.gateway import GatewayStore

        self._stack = contextlib.ExitStack()
        try:
            self.repo = Repo.init(str(tmp_path / "served"))
            self._stack.callback(self.repo.close)
            url = self._stack.enter_context(gateway_thread(self.repo))
            self.gateway = self._stack.enter_context(GatewayStore([url], timeout=30))
        except BaseException:
            self._stack.close()
            raise
        self.capabilities = self.gateway.capabilities
        self.served = self.repo.store

    def get(self, cid):
        return self.gateway.get(cid)

    def get_many(self, cids):
        return self.gateway.get_many(cids)

    def has(self, cid):
        return self.gateway.has(cid)

    def put(self, cid, block):
        return self.served.put(cid, block)

    def put_many(self, blocks):
        return self.served.put_many(blocks)

    def delete(self, cid):
        return self.served.delete(cid)

    def __iter__(self):
        return iter(self.served)

    def stat(self):
        return self.served.stat()

    def close(self):
        self._stack.close()


def _gateway(tmp_path, request=None):
    return _ServedGateway(tmp_path)


STORES = {"lmdb": _lmdb, "lmdb-packed": _lmdb_packed, "memory": _memory, "router-memory": _router_memory, "router-lmdb": _router_lmdb,
          "s3": _s3, "gateway": _gateway}


@pytest.fixture(params=sorted(STORES))
def store(request, tmp_path):
    s = STORES[request.param](tmp_path, request)
    try:
        yield s
    finally:
        s.close()


def blk(i: int, size: int = 100) -> tuple[bytes, bytes]:
    data = (i.to_bytes(4, "big") * (size // 4 + 1))[:size]
    return make_cid(RAW, data), data


def test_is_blockstore(store):
    assert isinstance(store, BlockStore)
    assert isinstance(store.capabilities, frozenset)


def test_put_get_has(store):
    cid, data = blk(1)
    assert not store.has(cid)
    assert store.get(cid) is None
    assert store.put(cid, data) is True
    assert store.has(cid)
    assert bytes(store.get(cid)) == data
    assert store.put(cid, data) is False  # idempotent: not new


def test_empty_and_large_blocks(store):
    empty = (make_cid(RAW, b""), b"")
    big = blk(7, 1 << 20)
    for cid, data in (empty, big):
        assert store.put(cid, data)
        got = store.get(cid)
        assert got is not None and bytes(got) == data


def test_other_codecs(store):
    data = b"\xa1\x61a\x01"
    cid = make_cid(DAG_CBOR, data)
    store.put(cid, data)
    assert bytes(store.get(cid)) == data


def test_get_many_in_order_with_missing(store):
    items = [blk(i) for i in range(10)]
    assert store.put_many(items[:5]) == 5
    assert store.put_many(items[:5]) == 0
    order = [c for c, _ in reversed(items)]
    got = list(store.get_many(order))
    assert [c for c, _ in got] == order
    for c, d in got:
        expect = dict(items)[c] if c in dict(items[:5]) else None
        assert (bytes(d) if d is not None else None) == expect


def test_delete(store):
    cid, data = blk(3)
    store.put(cid, data)
    assert store.delete(cid) is True
    assert not store.has(cid)
    assert store.get(cid) is None
    assert store.delete(cid) is False


def test_iterate_and_stat(store):
    items = [blk(i) for i in range(20)]
    store.put_many(items)
    assert set(store) == {c for c, _ in items}
    st = store.stat()
    assert st["blocks"] == 20
    assert st["bytes"] >= 0


def test_view_reads_same_bytes(store):
    items = [blk(i, 5000) for i in range(5)]
    store.put_many(items)
    with view(store) as v:
        for c, d in items:
            assert bytes(v.get(c)) == d
        assert v.get(blk(99)[0]) is None


def test_concurrent_put_get(store):
    items = [blk(i, 4096) for i in range(200)]
    errors = []

    def worker(part):
        try:
            for c, d in part:
                store.put(c, d)
                assert bytes(store.get(c)) == d
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(items[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(store) >= {c for c, _ in items}


def test_persistent_capability_survives_reopen(tmp_path):
    cid, data = blk(5)
    s = LMDBStore(str(tmp_path / "p"))
    s.put(cid, data)
    s.close()
    s = LMDBStore(str(tmp_path / "p"))
    try:
        assert bytes(s.get(cid)) == data
    finally:
        s.close()


def test_stores_are_independent(tmp_path, request):
    # a factory gives a fresh, empty store each time (no shared global state)
    for name, make in STORES.items():
        sub = tmp_path / name
        os.makedirs(sub)
        s = make(sub, request)
        try:
            assert list(s) == [], name
        finally:
            s.close()
