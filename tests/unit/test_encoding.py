"""Encoding: CIDs, dag-pb, UnixFS, dag-cbor commits and CAR v1 (docs/format.md).

Checked against the ``multiformats``/``dag_cbor`` libraries (independent of the
hand-written fast paths) and against known IPFS vectors. The cross-check with a
separate IPFS implementation (JS) is in ``test_car_interop.py``.
"""

from __future__ import annotations

import hashlib
import io
import os

import dag_cbor
import pytest
from multiformats import CID, multihash

from tvcfs.dag import FileIndex
from tvcfs.encoding.car import read_car, write_car
from tvcfs.encoding.cid import (
    DAG_CBOR, DAG_PB, RAW, cid_codec, cid_digest, cid_from_str, cid_str, is_cid_str, make_cid,
    to_mf_cid, verify_block,
)
from tvcfs.encoding.commit import Commit, cbor_links, decode_commit
from tvcfs.encoding.dagpb import PBLink, decode_node, encode_node
from tvcfs.encoding.varint import decode_varint, encode_varint
from tvcfs.encoding.unixfs import (
    DIRECTORY, FILE, MAX_LINKS, build_directory, build_file, build_symlink, decode_pb_unixfs,
    decode_unixfs, encode_unixfs,
)
from tvcfs.errors import CorruptBlock, InvalidCID, MalformedObject

EMPTY_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
# `ipfs object new unixfs-dir` / the empty directory every IPFS node knows
EMPTY_DIR_V1 = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
EMPTY_DIR_V0 = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"


# --------------------------------------------------------------------------- CIDs
@pytest.mark.parametrize("codec,name,prefix", [(RAW, "raw", "bafk"), (DAG_PB, "dag-pb", "bafy"),
                                               (DAG_CBOR, "dag-cbor", "bafyrei")])
def test_cid_string_equals_multiformats(codec, name, prefix):
    for data in (b"", b"x", os.urandom(1000), bytes(1 << 20)):
        cid = make_cid(codec, data)
        assert len(cid) == 36
        mf = CID("base32", 1, name, multihash.digest(data, "sha2-256"))
        assert cid == bytes(mf)
        s = cid_str(cid)
        assert s == CID.decode(cid).encode("base32") == str(mf)
        assert s.startswith(prefix)
        assert cid_codec(cid) == codec
        assert cid_digest(cid) == hashlib.sha256(data).digest()
        assert str(to_mf_cid(cid)) == s


def test_empty_raw_leaf_cid():
    assert cid_str(make_cid(RAW, b"")) == EMPTY_RAW


def test_cid_from_str_round_trips():
    for codec in (RAW, DAG_PB, DAG_CBOR):
        cid = make_cid(codec, os.urandom(64))
        s = cid_str(cid)
        assert cid_from_str(s) == cid
        assert cid_from_str("  " + s + "\n") == cid  # user input is stripped
        assert cid_from_str(CID.decode(cid).encode("base58btc")) == cid  # any multibase
        assert cid_from_str(CID.decode(cid).encode("base32upper")) == cid
        assert is_cid_str(s)
    # CIDv0 is read as the equivalent CIDv1 dag-pb
    assert cid_str(cid_from_str(EMPTY_DIR_V0)) == EMPTY_DIR_V1


@pytest.mark.parametrize("text", [
    "", "hello", "bafy", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyk",  # truncated
    "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku!", "Qm", "main", "12345678",
    # valid CIDs that tvcfs does not read: sha2-512, dag-json codec
    str(CID("base32", 1, "raw", multihash.digest(b"x", "sha2-512"))),
    str(CID("base32", 1, "dag-json", multihash.digest(b"x", "sha2-256"))),
])
def test_cid_from_str_rejects_garbage(text):
    with pytest.raises(InvalidCID) as ei:
        cid_from_str(text)
    assert "\n" not in str(ei.value)
    assert not is_cid_str(text)


def test_cid_codec_rejects_bad_binary():
    for bad in (b"", b"\x01\x55", bytes(36), b"\x01\x29\x12\x20" + bytes(32), make_cid(RAW, b"") + b"x"):
        with pytest.raises(InvalidCID):
            cid_codec(bad)


def test_verify_block():
    data = os.urandom(100)
    cid = make_cid(RAW, data)
    verify_block(cid, data)
    verify_block(cid, memoryview(data))
    with pytest.raises(CorruptBlock, match=cid_str(cid)):
        verify_block(cid, data[:-1] + bytes([data[-1] ^ 1]))


# --------------------------------------------------------------------------- dag-pb
def test_varint():
    for n in (0, 1, 127, 128, 300, 1 << 20, (1 << 63) - 1, (1 << 64) - 1):
        b = encode_varint(n)
        assert decode_varint(b, 0) == (n, len(b))
    assert encode_varint(300) == b"\xac\x02"
    with pytest.raises(MalformedObject):
        decode_varint(b"\x80\x80", 0)
    with pytest.raises(MalformedObject):
        decode_varint(b"\xff" * 11, 0)


def test_dagpb_round_trip_links_before_data():
    a, b = make_cid(RAW, b"a"), make_cid(DAG_PB, b"b")
    links = [PBLink(a, "", 1), PBLink(b, "name é", 123456)]
    data = b"\x08\x02\x18\x05"
    block = encode_node(links, data)
    assert block[0] == 0x12  # field 2 (Links) comes first on the wire
    assert block.rindex(b"\x0a" + bytes([len(data)]) + data) == len(block) - len(data) - 2  # Data last
    assert decode_node(block) == (links, data)
    # link fields in order Hash(1), Name(2), Tsize(3); an empty Name is present: 12 00
    first_body = encode_node([PBLink(a, "", 1)], None)
    assert first_body == b"\x12" + bytes([2 + 36 + 2 + 2]) + b"\x0a\x24" + a + b"\x12\x00" + b"\x18\x01"
    assert decode_node(encode_node([], None)) == ([], None)
    assert decode_node(encode_node([], b"")) == ([], b"")


def test_dagpb_rejects_garbage():
    for bad in (b"\x12\x05ab", b"\x1a\x00", b"\x0a\x10abc", b"\x12\x02\x12\x00"):  # last: link without Hash
        with pytest.raises(MalformedObject):
            decode_node(bad)


def test_empty_directory_is_the_known_ipfs_cid():
    cid, tsize, block = build_directory([])
    assert block == b"\x0a\x02\x08\x01"
    assert cid_str(cid) == EMPTY_DIR_V1
    assert tsize == 4


# --------------------------------------------------------------------------- UnixFS
def test_unixfs_blocksizes_unpacked():
    data = encode_unixfs(FILE, filesize=300, blocksizes=[100, 200])
    # Type=2, filesize=300, then one tag (0x20) per blocksize: never packed (0x22)
    assert data == b"\x08\x02" + b"\x18\xac\x02" + b"\x20\x64" + b"\x20\xc8\x01"
    assert b"\x22" not in data
    u = decode_unixfs(data)
    assert (u.type, u.filesize, u.blocksizes) == (FILE, 300, [100, 200])
    # packed blocksizes (written by some old tools) are still accepted on read
    assert decode_unixfs(b"\x08\x02\x18\xac\x02\x22\x03\x64\xc8\x01").blocksizes == [100, 200]


def _leaves(sizes):
    blocks = {}
    leaves = []
    for i, n in enumerate(sizes):
        data = (i.to_bytes(4, "big") * (n // 4 + 1))[:n]
        cid = make_cid(RAW, data)
        blocks[cid] = data
        leaves.append((cid, n))
    return leaves, blocks


def test_single_leaf_file_is_the_raw_leaf():
    leaves, _ = _leaves([1000])
    root, tsize, blocks = build_file(leaves)
    assert root == leaves[0][0] and tsize == 1000 and blocks == []


def test_file_of_two_leaves():
    leaves, store = _leaves([1 << 20, 5])
    root, tsize, blocks = build_file(leaves)
    assert cid_codec(root) == DAG_PB and blocks[-1][0] == root
    links, u = decode_pb_unixfs(blocks[-1][1])
    assert u.type == FILE and u.filesize == (1 << 20) + 5 and u.blocksizes == [1 << 20, 5]
    assert [link.name for link in links] == ["", ""]
    assert [link.tsize for link in links] == [1 << 20, 5]
    assert tsize == len(blocks[-1][1]) + (1 << 20) + 5
    assert u.mode is None  # default mode is not written (same CID as `ipfs add`)


@pytest.mark.parametrize("n", [MAX_LINKS + 1, 400, MAX_LINKS * MAX_LINKS + 3])
def test_balanced_tree_over_174_leaves(n):
    sizes = [7 + (i % 5) for i in range(n)]
    leaves, store = _leaves(sizes)
    root, tsize, blocks = build_file(leaves)
    for c, b in blocks:
        store[c] = b
        assert make_cid(DAG_PB, b) == c
    get = store.__getitem__

    # Walk: every internal node is a UnixFS File with its own filesize/blocksizes,
    # at most 174 links, all leaves at the same depth, leaves in file order.
    depths = set()
    order = []

    def walk(c, depth):
        if cid_codec(c) == RAW:
            depths.add(depth)
            order.append(c)
            return len(store[c]), len(store[c])
        links, u = decode_pb_unixfs(store[c])
        assert u.type == FILE and len(links) <= MAX_LINKS and len(links) == len(u.blocksizes)
        total, ts = 0, len(store[c])
        for link, bs in zip(links, u.blocksizes):
            assert link.name == ""
            size, child_ts = walk(link.hash, depth + 1)
            assert size == bs and link.tsize == child_ts
            total += size
            ts += child_ts
        assert u.filesize == total
        return total, ts

    total, ts = walk(root, 0)
    assert total == sum(sizes) and ts == tsize
    assert len(depths) == 1
    expected_depth = 2 if n <= MAX_LINKS * MAX_LINKS else 3
    assert depths == {expected_depth}
    assert order == [c for c, _ in leaves]
    # the leaf index finds every byte
    idx = FileIndex.build(get, root)
    content = b"".join(store[c] for c, _ in leaves)
    assert idx.size == len(content) and len(idx.leaves) == n
    assert idx.read(get, 0, len(content)) == content
    assert idx.read(get, 1234, 777) == content[1234:2011]


def test_file_mode_recorded_on_root_only():
    leaves, store = _leaves([10] * (MAX_LINKS + 1))
    root, _, blocks = build_file(leaves, mode=0o755)
    modes = [decode_pb_unixfs(b)[1].mode for _, b in blocks]
    assert modes[-1] == 0o755 and set(modes[:-1]) == {None}
    # with a mode, even a single leaf gets a dag-pb root
    root1, _, blocks1 = build_file(leaves[:1], mode=0o755)
    assert cid_codec(root1) == DAG_PB and decode_pb_unixfs(blocks1[0][1])[1].mode == 0o755


def test_directory_links_sorted_by_utf8_bytes():
    names = ["b", "a", "B", "é", "z", "ä", "a b", "\uff01", "\U0001f600", "a.txt", "A", "_"]
    child = make_cid(RAW, b"")
    cid, tsize, block = build_directory([(n, child, 0) for n in names])
    links, u = decode_pb_unixfs(block)
    assert u.type == DIRECTORY
    got = [link.name for link in links]
    assert got == sorted(names, key=lambda s: s.encode("utf-8"))
    assert got[:3] == ["A", "B", "_"]  # bytes, not case-folded or locale order
    assert got[-2:] == ["\uff01", "\U0001f600"]  # UTF-8 order (UTF-16 would swap these)
    # insertion order does not matter
    assert build_directory([(n, child, 0) for n in reversed(names)])[0] == cid


def test_directory_rejects_bad_names():
    c = make_cid(RAW, b"")
    for bad in ([("", c, 0)], [("a/b", c, 0)], [(".", c, 0)], [("..", c, 0)], [("x", c, 0), ("x", c, 0)]):
        with pytest.raises(ValueError):
            build_directory(bad)


def test_symlink_node():
    cid, tsize, block = build_symlink("../target file")
    links, u = decode_pb_unixfs(block)
    assert links == [] and u.type == 4 and u.data == b"../target file"


# --------------------------------------------------------------------------- commits
def _commit(**kw):
    tree = make_cid(DAG_PB, b"tree")
    base = dict(tree=tree, parents=(make_cid(DAG_CBOR, b"p1"), make_cid(DAG_CBOR, b"p2")),
                author_name="Ada Lovelace", author_email="ada@example.org", message="fine-tune\n\nbody é",
                timestamp=1_700_000_000, metadata={"lr": "3e-4", "step": 1200, "tags": ["a", "b"],
                                                    "base": CID.decode(make_cid(DAG_CBOR, b"base")), "blob": b"\x00\x01"})
    base.update(kw)
    return Commit(**base)


def test_commit_round_trip():
    com = _commit()
    cid, block = com.cid_and_block()
    assert cid_str(cid).startswith("bafyrei") and cid == make_cid(DAG_CBOR, block)
    back = decode_commit(block)
    assert back == com
    # independent decode: tree/parents are CID links (tag 42), timestamp an int
    obj = dag_cbor.decode(block)
    assert isinstance(obj["tree"], CID) and bytes(obj["tree"]) == com.tree
    assert [bytes(p) for p in obj["parents"]] == list(com.parents)
    assert obj["author"] == {"name": "Ada Lovelace", "email": "ada@example.org"}
    assert type(obj["timestamp"]) is int
    # canonical: re-encoding the decoded object gives the same bytes
    assert dag_cbor.encode(obj) == block
    # keys in dag-cbor canonical (length-first) order
    assert block[0] == 0xA6
    assert block.index(b"dtree") < block.index(b"fauthor") < block.index(b"gmessage") < \
        block.index(b"gparents") < block.index(b"hmetadata") < block.index(b"itimestamp")
    assert set(cbor_links(block)) == {com.tree, *com.parents, bytes(com.metadata["base"])}
    # a CID link in metadata survives decoding: the decoded commit re-encodes to itself
    assert isinstance(obj["metadata"]["base"], CID)
    assert back.encode() == block
    # deterministic
    assert _commit().cid_and_block() == (cid, block)
    assert _commit(message="other").cid_and_block()[0] != cid


@pytest.mark.parametrize("meta", [{"f": float("nan")}, {"x": {"y": [1, float("inf")]}},
                                  {"g": -float("inf")}])
def test_commit_rejects_non_finite_floats(meta):
    with pytest.raises(ValueError, match="finite"):
        _commit(metadata=meta).encode()


@pytest.mark.parametrize("meta", [{"lr": 3e-4}, {"x": {"y": [1, 2.0]}}, {"z": -0.0}])
def test_commit_finite_floats_are_binary64(meta):
    """A finite float is always the 9-byte binary64 form (0xfb + 8 bytes), so the same
    value gives the same CID; it decodes (strict decoder) to the same commit."""
    import struct

    from tvcfs.encoding.commit import decode_commit

    cid, block = _commit(metadata=meta).cid_and_block()
    first = [v for v in meta.values()][0]
    f = first if isinstance(first, float) else 2.0
    assert b"\xfb" + struct.pack(">d", f) in block
    back = decode_commit(block)
    assert back.metadata == meta and back.encode() == block
    assert _commit(metadata=meta).cid_and_block()[0] == cid


def test_commit_rejects_non_string_keys():
    with pytest.raises(ValueError):
        _commit(metadata={1: "x"}).encode()


def test_decode_commit_rejects_garbage():
    for bad in (b"", b"\xff\xff", dag_cbor.encode({"no": "tree"}), dag_cbor.encode({"tree": "notacid"})):
        with pytest.raises(MalformedObject):
            decode_commit(bad)


# --------------------------------------------------------------------------- CAR
def _car_blocks():
    leaves, store = _leaves([100, 200, 300])
    root, _, blocks = build_file(leaves)
    dcid, _, dblock = build_directory([("f", root, 0)])
    com = Commit(tree=dcid, message="m", timestamp=1)
    ccid, cblock = com.cid_and_block()
    items = [(ccid, cblock), (dcid, dblock)] + blocks + [(c, store[c]) for c, _ in leaves]
    return ccid, items


def test_car_round_trip():
    root, items = _car_blocks()
    buf = io.BytesIO()
    assert write_car(buf, [root], items) == len(items)
    raw = buf.getvalue()
    # header: varint(len) ‖ dag-cbor {"roots": [CID], "version": 1}; CID = tag 42 over 00 ‖ cid
    hlen, pos = decode_varint(raw, 0)
    header = raw[pos:pos + hlen]
    assert header == dag_cbor.encode({"roots": [CID.decode(root)], "version": 1})
    assert b"\xd8\x2a\x58\x25\x00" + root in header
    assert header.index(b"eroots") < header.index(b"gversion")
    roots, it = read_car(io.BytesIO(raw))
    assert roots == [root]
    assert [(c, bytes(b)) for c, b in it] == items


def test_car_rejects_corrupted_block():
    root, items = _car_blocks()
    buf = io.BytesIO()
    write_car(buf, [root], items)
    raw = bytearray(buf.getvalue())
    raw[-1] ^= 0xFF  # last byte of the last leaf
    roots, it = read_car(io.BytesIO(bytes(raw)))
    with pytest.raises(CorruptBlock):
        list(it)
    # without verification the bytes come through (for diagnosis only)
    roots, it = read_car(io.BytesIO(bytes(raw)), verify=False)
    assert len(list(it)) == len(items)


def test_car_rejects_malformed():
    root, items = _car_blocks()
    buf = io.BytesIO()
    write_car(buf, [root], items)
    raw = buf.getvalue()
    for bad in (b"", b"\x05abc", b"\x02\xa0\x00",
                encode_varint(len(dag_cbor.encode({"roots": [], "version": 2}))) + dag_cbor.encode({"roots": [], "version": 2})):
        with pytest.raises(MalformedObject):
            roots, it = read_car(io.BytesIO(bad))
            list(it)
    roots, it = read_car(io.BytesIO(raw[:-10]))  # truncated last section
    with pytest.raises(MalformedObject):
        list(it)


def test_varint_bounds_and_streams():
    import io

    from tvcfs.encoding.varint import TruncatedVarint, VarintError, read_varint

    with pytest.raises(TruncatedVarint):
        decode_varint(b"\x80\x80", 0)
    with pytest.raises(VarintError):
        decode_varint(b"\x80\x80\x80\x80\x80\x01", 0, max_bytes=5)
    assert decode_varint(b"\x80\x80\x80\x80\x01", 0, max_bytes=5) == (1 << 28, 5)
    assert decode_varint(b"\x00\xac\x02\x07", 1, end=3) == (300, 3)
    with pytest.raises(TruncatedVarint):
        decode_varint(b"\xac\x02", 0, end=1)
    f = io.BytesIO(encode_varint(300) + encode_varint(5))
    assert read_varint(f) == 300 and read_varint(f) == 5 and read_varint(f) is None
    with pytest.raises(TruncatedVarint):
        read_varint(io.BytesIO(b"\x80"))
    with pytest.raises(VarintError):
        read_varint(io.BytesIO(b"\xff" * 11))
