"""The strict DAG-CBOR decoder (``tvcfs.encoding.dagcbor``) against the ``dag-cbor``
library as the reference: every value the library encodes decodes to the same
value, and every non-canonical or malformed encoding that the library rejects is
rejected with ``MalformedObject``."""

from __future__ import annotations

import hashlib

import dag_cbor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID

from tvcfs.encoding import dagcbor
from tvcfs.encoding.cid import DAG_CBOR, DAG_PB, RAW, make_cid
from tvcfs.encoding.commit import Commit, cbor_links, decode_commit
from tvcfs.errors import MalformedObject

_cids = st.builds(lambda codec, data: make_cid(codec, data), st.sampled_from([RAW, DAG_PB, DAG_CBOR]),
                  st.binary(max_size=8))
_leaves = (st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1) | st.text(max_size=20)
           | st.binary(max_size=20) | st.booleans() | st.none()
           | st.floats(allow_nan=False, allow_infinity=False) | _cids.map(dagcbor.Link))
_values = st.recursive(_leaves, lambda inner: st.lists(inner, max_size=5)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30)


def _to_lib(v):
    """Our value model → the library's (Link → multiformats CID)."""
    if isinstance(v, dagcbor.Link):
        return CID.decode(bytes(v))
    if isinstance(v, list):
        return [_to_lib(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_lib(x) for k, x in v.items()}
    return v


def _from_lib(v):
    if isinstance(v, CID):
        return dagcbor.Link(bytes(v))
    if isinstance(v, list):
        return [_from_lib(x) for x in v]
    if isinstance(v, dict):
        return {k: _from_lib(x) for k, x in v.items()}
    return v


def _same(a, b) -> bool:
    """Equal, with types: a Link is not a byte string, True is not 1, 1.0 is not 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=400, deadline=None)
@given(_values)
def test_decodes_what_the_library_encodes(value):
    block = dag_cbor.encode(_to_lib(value))
    ours = dagcbor.decode(block)
    assert _same(ours, _from_lib(dag_cbor.decode(block)))
    assert dag_cbor.encode(_to_lib(ours)) == block  # nothing lost: re-encodes to the same bytes


_CID = make_cid(RAW, b"x")
INVALID = {
    "empty": b"",
    "integer not in shortest form (1 byte)": b"\x18\x05",
    "integer not in shortest form (2 bytes)": b"\x19\x00\x10",
    "integer not in shortest form (8 bytes)": b"\x1b\x00\x00\x00\x00\x00\x00\x00\x01",
    "indefinite-length array": b"\x9f\xff",
    "indefinite-length string": b"\x7f\xff",
    "keys not length-first": b"\xa2\x62bb\x01\x61a\x02",
    "keys not bytewise sorted": b"\xa2\x61b\x01\x61a\x02",
    "repeated key": b"\xa2\x61a\x01\x61a\x02",
    "integer key": b"\xa1\x01\x02",
    "tag other than 42": b"\xd8\x2b\x40",
    "tag 42 without the 0x00 prefix": b"\xd8\x2a\x58\x24" + _CID,
    "tag 42 over text": b"\xd8\x2a\x61a",
    "CID with a truncated multihash": b"\xd8\x2a\x45\x00\x01\x55\x12\x20",
    "CID version 2": b"\xd8\x2a\x58\x25\x00\x02" + _CID[1:],
    "16-bit float": b"\xf9\x3c\x00",
    "32-bit float": b"\xfa\x3f\x80\x00\x00",
    "NaN": b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00",
    "infinity": b"\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00",
    "undefined": b"\xf7",
    "unassigned simple value": b"\xf0",
    "trailing bytes": b"\x01\x02",
    "invalid UTF-8": b"\x62\xff\xfe",
    "byte string past the end": b"\x5a\xff\xff\xff\xff",
    "array count past the end": b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00",
    "map truncated": b"\xa1\x61a",
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_rejects_what_the_library_rejects(name):
    data = INVALID[name]
    with pytest.raises(Exception):
        dag_cbor.decode(data)  # the reference agrees that it is invalid
    with pytest.raises(MalformedObject):
        dagcbor.decode(data)


def test_deep_nesting_is_refused_not_a_recursion_error():
    with pytest.raises(MalformedObject, match="nested deeper"):
        dagcbor.decode(b"\x81" * 10_000 + b"\x00")
    assert dagcbor.decode(b"\x81" * 10 + b"\x00") == [[[[[[[[[[0]]]]]]]]]]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_crash(data):
    """Any input either decodes to what the library decodes, or raises MalformedObject."""
    try:
        ours = dagcbor.decode(data)
    except MalformedObject:
        return
    assert _same(ours, _from_lib(dag_cbor.decode(data)))


def test_commit_decode_with_links_in_metadata_round_trips():
    tree = make_cid(DAG_PB, b"tree")
    parents = (make_cid(DAG_CBOR, b"p1"), make_cid(DAG_CBOR, b"p2"))
    base = CID.decode(make_cid(DAG_PB, b"base"))
    com = Commit(tree=tree, parents=parents, author_name="A", author_email="a@x", message="m\nbody",
                 timestamp=1_700_000_000, metadata={"base": base, "n": -3, "tags": ["x", b"\x00"]})
    block = com.encode()
    back = decode_commit(block)
    assert back == com and back.encode() == block
    assert isinstance(back.metadata["base"], CID)
    # document order = canonical key order: tree (4 bytes), parents (7), metadata (8)
    assert cbor_links(block) == [tree, *parents, bytes(base)]


@pytest.mark.parametrize("obj", [
    [1, 2],
    {"tree": b"not a link"},
    {"tree": dagcbor.Link(make_cid(DAG_PB, b"t")), "parents": [b"x"]},
    {"tree": dagcbor.Link(make_cid(DAG_PB, b"t")), "timestamp": True},
    {"tree": dagcbor.Link(make_cid(DAG_PB, b"t")), "author": ["a"]},
])
def test_decode_commit_rejects_wrong_shapes(obj):
    with pytest.raises(MalformedObject, match="not a tvcfs commit"):
        decode_commit(dag_cbor.encode(_to_lib(obj)))


def test_car_header_is_read_with_the_strict_decoder(tmp_path):
    import io

    from tvcfs.encoding.car import read_car
    from tvcfs.encoding.varint import encode_varint

    root = make_cid(RAW, b"r")
    header = dag_cbor.encode({"roots": [CID.decode(root)], "version": 1})
    data = b"r"
    car = encode_varint(len(header)) + header + encode_varint(36 + len(data)) + root + data
    roots, blocks = read_car(io.BytesIO(car))
    assert roots == [root] and list(blocks) == [(root, data)]
    bad = header[:-1] + b"\x02"  # version 2
    with pytest.raises(MalformedObject, match="version"):
        read_car(io.BytesIO(encode_varint(len(bad)) + bad))
    bad = b"\xa2\x67version\x01\x65roots\x80"  # keys out of canonical order
    with pytest.raises(MalformedObject, match="CAR header"):
        read_car(io.BytesIO(encode_varint(len(bad)) + bad))
    assert hashlib.sha256(data).digest() == root[4:]
