"""The S3 backend (tvcfs/store/s3.py, docs/backends.md) against moto's real S3 server
on loopback (the session fixture ``s3_endpoint``) with the real boto3 client: packs and
their indexes, dedup across pushes, verified reads, clear and quick errors, refs moved
by conditional writes, and the real model read back through a router."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from support.repo import fetch_levels
from support.s3 import bucket_objects, new_bucket, s3_client
from support.server import silent_http
from support.trees import assert_same_tree

from tvcfs.encoding.cid import CID, RAW, make_cid
from tvcfs.errors import BlockUnavailable, RefConflict, TvcfsError
from tvcfs.store.memory import MemoryStore
from tvcfs.store.router import Router, Tier
from tvcfs.store.s3 import S3Refs, S3Store, decode_index, encode_index

MiB = 1 << 20


def blocks_1mib(seeds) -> list:
    """``(cid, 1 MiB of bytes)`` per seed, distinct and incompressible."""
    import numpy as np

    out = []
    for s in seeds:
        data = np.random.default_rng(s).integers(0, 256, MiB, dtype=np.uint8).tobytes()
        out.append((make_cid(RAW, data), data))
    return out


def packs_of(objects: dict) -> dict:
    return {k: v for k, v in objects.items() if k.endswith(".pack")}


def test_index_roundtrip_and_pack_id_is_content():
    entries = [(make_cid(RAW, bytes([i])), 16 + i, 1) for i in range(5)]
    pack, idx = encode_index(list(reversed(entries)))
    assert [e[:3] for e in decode_index(idx)] == sorted(entries)
    assert all(e.encoding == 0 and e.raw == e.length and e.base is None for e in decode_index(idx))
    assert encode_index(entries)[0] == pack  # same blocks, same pack name
    assert len(idx) == 16 + 90 * 5 + 32
    # version 1 (raw blocks only, 48-byte entries) still decodes
    _, old = encode_index(entries, version=1)
    assert len(old) == 16 + 48 * 5 + 32
    assert [e[:3] for e in decode_index(old)] == sorted(entries)


def test_old_raw_packs_still_read_and_new_packs_are_compressed(s3_endpoint):
    import struct

    bucket = new_bucket(s3_endpoint)
    url = f"s3://{bucket}/m"
    old = [(make_cid(RAW, b"old %d " % i * 1000), b"old %d " % i * 1000) for i in range(3)]
    # a version 1 pack, as tvcfs wrote them before encodings: raw blocks, 48-byte entries
    entries, off = [], 16
    for c, d in old:
        entries.append((c, off, len(d)))
        off += len(d)
    pack, idx = encode_index(entries, version=1)
    cl = s3_client(s3_endpoint)
    cl.put_object(Bucket=bucket, Key=f"m/packs/{pack}.pack",
                  Body=struct.pack(">8sII", b"TVCFSPAK", 1, 3) + b"".join(d for _, d in old))
    cl.put_object(Bucket=bucket, Key=f"m/packs/{pack}.idx", Body=idx)
    text = [(make_cid(RAW, b"config %d\n" % i * 5000), b"config %d\n" % i * 5000) for i in range(3)]
    with S3Store(url, endpoint_url=s3_endpoint) as st:
        assert dict(st.get_many([c for c, _ in old])) == dict(old)
        assert st.put_many(old + text) == 3  # the old ones are held already
    with S3Store(url, endpoint_url=s3_endpoint) as st:
        assert dict(st.get_many([c for c, _ in old + text])) == dict(old + text)
        s = st.stat()
        assert s["raw_bytes"] == sum(len(d) for _, d in old + text)
        assert s["bytes"] < sum(len(d) for _, d in old) + sum(len(d) for _, d in text) / 10  # zstd
    new = [k for k in packs_of(bucket_objects(s3_endpoint, bucket)) if pack not in k]
    got = decode_index(cl.get_object(Bucket=bucket, Key=new[0][:-5] + ".idx")["Body"].read())
    assert {e.encoding for e in got} == {1} and all(e.raw > e.length for e in got)


def test_encoded_value_of_other_bytes_is_refused_by_its_cid(s3_endpoint):
    """A pack whose encoded value decodes to bytes other than its CID's (a damaged or
    forged object) is never returned as that block."""
    import struct

    from tvcfs.store import encodings
    from tvcfs.store.s3 import Entry

    bucket = new_bucket(s3_endpoint)
    data = b"weights " * 20000
    cid = make_cid(RAW, data)
    value = encodings.encode(b"forged! " * 20000, 1)
    pack, idx = encode_index([Entry(cid, 16, len(value), encodings.ZSTD, 0, len(data), None)])
    cl = s3_client(s3_endpoint)
    cl.put_object(Bucket=bucket, Key=f"m/packs/{pack}.pack", Body=struct.pack(">8sII", b"TVCFSPAK", 2, 1) + value)
    cl.put_object(Bucket=bucket, Key=f"m/packs/{pack}.idx", Body=idx)
    with S3Store(f"s3://{bucket}/m", endpoint_url=s3_endpoint) as st:
        with pytest.raises(BlockUnavailable, match="does not hash to its CID"):
            st.get(cid)


def test_packs_few_objects_dedup_and_only_new_blocks_written(s3_endpoint):
    bucket = new_bucket(s3_endpoint)
    url = f"s3://{bucket}/m"
    first = blocks_1mib(range(200))
    with S3Store(url, endpoint_url=s3_endpoint) as st:
        assert st.put_many(first) == 200
    objs = bucket_objects(s3_endpoint, bucket)
    packs = packs_of(objs)
    # 200 MiB with a 64 MiB pack target: 4 packs (64+64+64+8 blocks), each with its index
    assert 1 <= len(packs) <= 5
    assert len(objs) == 2 * len(packs)
    assert all(k.startswith("m/packs/") for k in objs)
    assert sum(packs.values()) == 200 * MiB + 16 * len(packs)

    # the same blocks again (a second push, a fresh process's store): nothing written
    with S3Store(url, endpoint_url=s3_endpoint) as st:
        assert st.put_many(first) == 0
        assert st.flush() is None
        assert st.written == {"packs": 0, "bytes": 0, "raw": 0}
    assert bucket_objects(s3_endpoint, bucket) == objs

    # a second set sharing 190 of its 200 blocks: one pack with the 10 new ones
    second = first[10:] + blocks_1mib(range(1000, 1010))
    with S3Store(url, endpoint_url=s3_endpoint) as st:
        assert st.put_many(second) == 10
    after = bucket_objects(s3_endpoint, bucket)
    new = {k: v for k, v in after.items() if k not in objs}
    assert len(new) == 2
    assert list(packs_of(new).values()) == [10 * MiB + 16]

    # a fresh reader sees every block, byte-identical, with ranged GETs over the packs
    want = dict(first + second)
    with S3Store(url, endpoint_url=s3_endpoint) as st:
        got = dict(st.get_many(list(want)))
        assert got.keys() == want.keys() and all(got[c] == want[c] for c in want)
        assert st.stat()["blocks"] == 210 and st.stat()["packs"] == len(packs) + 1
        assert st.get(make_cid(RAW, b"absent")) is None


def test_new_packs_from_another_writer_are_seen(s3_endpoint):
    url = f"s3://{new_bucket(s3_endpoint)}/x"
    (c1, d1), (c2, d2) = blocks_1mib([1, 2])
    with S3Store(url, endpoint_url=s3_endpoint, refresh_interval=0) as reader, \
            S3Store(url, endpoint_url=s3_endpoint) as writer:
        assert reader.get(c1) is None
        writer.put(c1, d1)
        writer.flush()
        assert reader.get(c1) == d1  # the miss lists the indexes again
        assert reader.has(c1) and not reader.has(c2)


def _corrupt_pack(endpoint: str, bucket: str) -> None:
    c = s3_client(endpoint)
    key = next(k for k in bucket_objects(endpoint, bucket) if k.endswith(".pack"))
    body = bytearray(c.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    c.put_object(Bucket=bucket, Key=key, Body=bytes(body))


def test_corrupt_object_is_rejected_and_not_stored_locally(s3_endpoint):
    bucket = new_bucket(s3_endpoint)
    url = f"s3://{bucket}/c"
    items = blocks_1mib(range(3))
    with S3Store(url, endpoint_url=s3_endpoint) as st:
        st.put_many(items)
    _corrupt_pack(s3_endpoint, bucket)

    local = MemoryStore()
    s3 = S3Store(url, endpoint_url=s3_endpoint)
    router = Router([Tier("local", local), Tier("s3", s3)])
    try:
        bad_cid = items[1][0]  # the middle of the pack is inside block 1
        with pytest.raises(BlockUnavailable, match="does not hash to its CID"):
            router.get(bad_cid)
        with pytest.raises(BlockUnavailable, match="corrupt"):
            list(router.get_many([c for c, _ in items]))
        with pytest.raises(BlockUnavailable, match=f"s3://{bucket}/c.*does not hash"):
            s3.get(bad_cid)
        stats = router.stats()["s3"]
        assert stats["unavailable"] + stats["corrupt"] >= 2 and stats["hits"] == 0
        assert list(local) == []  # nothing corrupt (nor anything of that batch) stored
        # a block outside the damaged range still reads, verified
        assert router.get(items[0][0]) == items[0][1]
        assert list(local) == [items[0][0]]
    finally:
        router.close()


def test_truncated_pack_and_an_index_that_lies_are_clear_errors(s3_endpoint):
    """A pack cut short (a block inside it, a block wholly past its new end), and an
    index whose entries lie (an offset past the object's end, a length one byte
    short, two entries overlapping) each read as :class:`BlockUnavailable` naming the
    pack and what is wrong, never S3's bare ``InvalidRange`` nor wrong bytes; a block
    the damage does not reach still reads."""
    bucket = new_bucket(s3_endpoint)
    url = f"s3://{bucket}/t"
    items = blocks_1mib(range(3))
    with S3Store(url, endpoint_url=s3_endpoint) as st:
        st.put_many(items)
    c = s3_client(s3_endpoint)
    objs = bucket_objects(s3_endpoint, bucket)
    pack = next(k for k in objs if k.endswith(".pack"))
    body = c.get_object(Bucket=bucket, Key=pack)["Body"].read()
    c.put_object(Bucket=bucket, Key=pack, Body=body[: len(body) // 2])  # cut in block 1; block 2 wholly gone
    with S3Store(url, endpoint_url=s3_endpoint) as st:
        entries = {e.cid: e for e in decode_index(c.get_object(Bucket=bucket, Key=pack[:-5] + ".idx")["Body"].read())}
        last = max(items, key=lambda kv: entries[kv[0]].offset)[0]
        with pytest.raises(BlockUnavailable, match=r"shorter than its index says") as e:
            st.get(last)
        assert "InvalidRange" not in str(e.value) and pack.split("/")[-1][:-5] in str(e.value)
        first = min(items, key=lambda kv: entries[kv[0]].offset)
        assert st.get(first[0]) == first[1]
    # the whole pack back, and an index that lies about it (the pack id stays)
    c.put_object(Bucket=bucket, Key=pack, Body=body)
    a, b, z = sorted(items, key=lambda kv: entries[kv[0]].offset)
    for lie, err in [({a[0]: entries[a[0]]._replace(offset=len(body) + 10)}, "shorter than its index says"),
                     ({a[0]: entries[a[0]]._replace(length=entries[a[0]].length - 1)}, "does not hash to its CID"),
                     ({b[0]: entries[b[0]]._replace(offset=entries[a[0]].offset)}, "does not hash to its CID")]:
        _, idx = encode_index(list({**entries, **lie}.values()))
        c.put_object(Bucket=bucket, Key=pack[:-5] + ".idx", Body=idx)
        with S3Store(url, endpoint_url=s3_endpoint) as st:
            cid = next(iter(lie))
            with pytest.raises(BlockUnavailable, match=err):
                st.get(cid)
            assert st.get(z[0]) == z[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_bucket_is_a_quick_clear_error(s3_endpoint):
    st = S3Store("s3://tvcfs-no-such-bucket/p", endpoint_url=s3_endpoint, refresh_interval=0)
    t0 = time.monotonic()
    with pytest.raises(BlockUnavailable) as e:
        st.get(make_cid(RAW, b"x"))
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "tvcfs-no-such-bucket" in msg and "does not exist" in msg and s3_endpoint in msg and "\n" not in msg


def test_unreachable_endpoint_is_a_quick_clear_error(s3_endpoint):
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    st = S3Store("s3://bkt/p", endpoint_url=endpoint)
    t0 = time.monotonic()
    with pytest.raises(BlockUnavailable, match=f"s3://bkt/p at {endpoint}: cannot connect"):
        st.put_many(blocks_1mib([5]))
    assert time.monotonic() - t0 < 15


def test_silent_endpoint_times_out_instead_of_hanging(s3_endpoint):
    # a socket that accepts connections and never answers: the read timeout ends it
    with silent_http() as endpoint:
        st = S3Store("s3://bkt/p", endpoint_url=endpoint, read_timeout=1, retries=2)
        t0 = time.monotonic()
        with pytest.raises(BlockUnavailable, match="no answer in time"):
            st.get(make_cid(RAW, b"x"))
        assert time.monotonic() - t0 < 15


def test_refs_compare_and_swap(s3_endpoint):
    url = f"s3://{new_bucket(s3_endpoint)}/r"
    refs = S3Refs(url, endpoint_url=s3_endpoint)
    c1, c2, c3 = (make_cid(RAW, bytes([i])) for i in range(3))
    assert refs.get("refs/heads/main") is None
    refs.compare_and_swap("refs/heads/main", None, c1)
    with pytest.raises(RefConflict, match="refs/heads/main moved"):
        refs.compare_and_swap("refs/heads/main", None, c2)  # exists already
    with pytest.raises(RefConflict):
        refs.compare_and_swap("refs/heads/main", c2, c3)  # stale expectation
    assert refs.get("refs/heads/main") == c1
    refs.compare_and_swap("refs/tags/v1", None, c2)
    assert refs.list() == {"refs/heads/main": c1, "refs/tags/v1": c2}
    assert refs.list("refs/tags/") == {"refs/tags/v1": c2}
    body = s3_client(s3_endpoint).get_object(Bucket=url[5:].split("/")[0], Key="r/refs/heads/main")["Body"]
    assert body.read() == str(CID(c1)).encode()  # the object holds the CID string
    with pytest.raises(TvcfsError, match="invalid ref name"):
        refs.get("../x")


def test_refs_concurrent_updates_exactly_one_wins(s3_endpoint):
    url = f"s3://{new_bucket(s3_endpoint)}/r"
    base = make_cid(RAW, b"base")
    S3Refs(url, endpoint_url=s3_endpoint).compare_and_swap("refs/heads/main", None, base)
    head = base
    for round_ in range(10):
        new = [make_cid(RAW, f"{round_}-{k}".encode()) for k in range(2)]
        barrier = threading.Barrier(2)
        results = [None, None]

        def move(k, head=head, new=new, barrier=barrier, results=results):
            refs = S3Refs(url, endpoint_url=s3_endpoint)
            barrier.wait()
            try:
                refs.compare_and_swap("refs/heads/main", head, new[k])
                results[k] = "won"
            except RefConflict as e:
                results[k] = e

        threads = [threading.Thread(target=move, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(map(type, results), key=str) == sorted([str, RefConflict], key=str), results
        winner = results.index("won")
        assert S3Refs(url, endpoint_url=s3_endpoint).get("refs/heads/main") == new[winner]
        head = new[winner]


def test_backend_registry_and_aws_chain(s3_endpoint, tmp_path, monkeypatch):
    """``get_backend("s3")`` with the URL from TVCFS_S3_URL, the endpoint from
    AWS_ENDPOINT_URL and the credentials from a profile in an AWS credentials file."""
    from tvcfs.store import get_backend

    bucket = new_bucket(s3_endpoint)
    (tmp_path / "credentials").write_text("[tvcfs-test]\naws_access_key_id = AKIDPROFILE\n"
                                          "aws_secret_access_key = secretprofile\n")
    (tmp_path / "config").write_text("[profile tvcfs-test]\nregion = us-east-1\n")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "tvcfs-test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("TVCFS_S3_URL", f"s3://{bucket}/reg")
    st = get_backend("s3")
    try:
        assert isinstance(st, S3Store) and st._b.endpoint == s3_endpoint
        assert st._b.client._request_signer._credentials.access_key == "AKIDPROFILE"
        (cid, data), = blocks_1mib([9])
        st.put(cid, data)
    finally:
        st.close()
    keys = sorted(bucket_objects(s3_endpoint, bucket))
    assert len(keys) == 2 and all(k.startswith("reg/packs/") for k in keys)
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(TvcfsError, match="no-such-profile"):
        get_backend("s3")
    monkeypatch.delenv("TVCFS_S3_URL")
    with pytest.raises(TvcfsError, match="TVCFS_S3_URL"):
        get_backend("s3")


def test_real_model_pushed_and_read_back_through_router(s3_endpoint, real_model_dir, tmp_path, monkeypatch):
    from tvcfs.repo import Repo

    bucket = new_bucket(s3_endpoint)
    url = f"s3://{bucket}/models/minilm"
    src = Repo.init(str(tmp_path / "src"))
    try:
        root = src.add_path(real_model_dir)
        cids = list(src.store)
        with S3Store(url, endpoint_url=s3_endpoint) as st:
            assert st.put_many((c, src.store.get(c)) for c in cids) == len(cids)
    finally:
        src.close()
    objs = bucket_objects(s3_endpoint, bucket)
    assert 1 <= len(packs_of(objs)) <= 3  # ~87 MiB in 64 MiB packs, not one object per leaf
    assert len(cids) > 50

    monkeypatch.setenv("TVCFS_BACKENDS", "s3")
    monkeypatch.setenv("TVCFS_S3_URL", url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    dst = Repo.init(str(tmp_path / "dst"))
    try:
        assert isinstance(dst.blocks, Router) and [t.name for t in dst.blocks.tiers] == ["lmdb", "s3"]
        assert not dst.store.has(root)
        # fetch the DAG level by level through the router: each level is one get_many,
        # which the S3 tier serves with grouped, concurrent ranged GETs, verified, and
        # the router writes back into the local store (Repo.write_file reads the local
        # LMDB store directly, so the blocks must be local before get_to_path)
        assert fetch_levels(dst.blocks, root) == len(cids)
        s3_stats = dst.blocks.stats()["s3"]
        assert s3_stats["hits"] == len(cids) and s3_stats["corrupt"] == 0 and s3_stats["unavailable"] == 0
        assert dst.store.stat()["blocks"] == len(cids)  # written back into the local store
        dst.get_to_path(root, str(tmp_path / "out"))
        assert_same_tree(real_model_dir, str(tmp_path / "out"))
    finally:
        dst.close()
