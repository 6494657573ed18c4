"""The IPFS HTTP trustless gateway, both sides, with real servers on loopback.

- ``tvcfs.gateway.app`` (Starlette, served by Hypercorn's trio worker in a thread of
  this process, or by a ``tvcfs serve --http`` subprocess) answers raw-block and CAR
  requests per https://specs.ipfs.tech/http-gateways/trustless-gateway/ : headers,
  ``dag-scope``, ``entity-bytes``, DFS order, 400/404/406/412, an incomplete CAR when
  a block below the root is missing.
- ``tvcfs.store.gateway.GatewayStore`` (httpx2) reads the real model from
  ``tvcfs serve --http`` through a router and checks it out byte-identical; falls
  over to the next gateway; rejects corrupt answers; times out on a silent one.
- Helia's ``@helia/verified-fetch`` fetches a tvcfs file by CID from ``tvcfs serve
  --http`` and gets the same bytes; ``GatewayStore`` reads files that
  ``ipfs-unixfs-importer`` made, from a small Node gateway over a Helia blockstore.

Only processes started here are ended (by PID).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.repo import fetch_levels
from support.trees import assert_same_tree
from support.server import ServerProcess, TvcfsServe, gateway_thread, silent_http

from tvcfs.dag import FileIndex, iter_file, resolve_path, walk_dag
from tvcfs.encoding.car import read_car
from tvcfs.encoding.cid import CID, RAW, cid_str, make_cid
from tvcfs.errors import BlockUnavailable, MalformedObject
from tvcfs.repo import Repo
from tvcfs.store.gateway import GatewayStore, ReadOnlyStore
from tvcfs.store.memory import MemoryStore
from tvcfs.store.router import Router, Tier

httpx2 = pytest.importorskip("httpx2")
pytestmark = pytest.mark.timeout(300)

MIB = 1 << 20
INTEROP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interop")


def _car(resp) -> tuple[list, list]:
    roots, blocks = read_car(io.BytesIO(resp.content), verify=True)
    return roots, list(blocks)


@pytest.fixture
def tree(tmp_repo, tmp_path):
    """A committed tree: ``dir/sub/big.bin`` (several leaves), ``dir/small.txt``;
    returns ``(repo, tree CID, {path: bytes})``."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"sub/big.bin": os.urandom(3 * MIB + 12345), "small.txt": b"hello gateway\n"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    res = tmp_repo.commit_dir(str(src), message="gateway test")
    return tmp_repo, res.tree, files


def test_raw_block_answers_per_spec(tree):
    repo, root, _ = tree
    big = repo.entry(None, "sub/big.bin").cid
    text = cid_str(big)
    with gateway_thread(repo) as url, httpx2.Client(base_url=url, timeout=30) as c:
        r = c.get(f"/ipfs/{text}?format=raw")
        assert r.status_code == 200
        assert hashlib.sha256(r.content).digest() == big[4:]  # the body is the block
        h = r.headers
        assert h["content-type"] == "application/vnd.ipld.raw"
        assert h["content-disposition"] == f'attachment; filename="{text}.bin"'
        assert h["cache-control"] == "public, max-age=29030400, immutable"
        assert h["etag"] == f'"{text}.raw"' and h["x-content-type-options"] == "nosniff"
        assert h["x-ipfs-path"] == f"/ipfs/{text}" and int(h["content-length"]) == len(r.content)
        assert "content-location" not in h  # format= given
        # Accept instead of format: the same block, and where the format= URL is
        r2 = c.get(f"/ipfs/{text}", headers={"Accept": "application/vnd.ipld.raw"})
        assert r2.content == r.content and r2.headers["content-location"] == f"/ipfs/{text}?format=raw"
        # format wins over Accept; HEAD: headers, no body; If-None-Match: 304
        assert c.get(f"/ipfs/{text}?format=raw", headers={"Accept": "application/vnd.ipld.car"}).content == r.content
        hd = c.head(f"/ipfs/{text}?format=raw")
        assert hd.status_code == 200 and hd.content == b"" and hd.headers["content-length"] == h["content-length"]
        assert c.get(f"/ipfs/{text}?format=raw", headers={"If-None-Match": h["etag"]}).status_code == 304
        # a CIDv0 of a dag-pb node names the same block
        from multiformats import CID as MFCID

        v0 = str(MFCID.decode(big).set(version=0, base="base58btc"))
        assert c.get(f"/ipfs/{v0}?format=raw").content == r.content
        # errors
        missing = cid_str(make_cid(RAW, b"not in this repository"))
        r404 = c.get(f"/ipfs/{missing}?format=raw")
        assert r404.status_code == 404 and missing in r404.text
        assert c.head(f"/ipfs/{missing}?format=raw").status_code == 404
        r400 = c.get("/ipfs/bafy-not-a-cid?format=raw")
        assert r400.status_code == 400 and "invalid CID" in r400.text
        assert c.get(f"/ipfs/{text}").status_code == 400  # strict trustless: no format, no Accept
        assert c.get(f"/ipfs/{text}", headers={"Accept": "text/html"}).status_code == 400
        assert c.get(f"/ipfs/{text}?format=dag-json").status_code == 400
        assert c.get(f"/ipfs/{cid_str(root)}/small.txt?format=raw").status_code == 400  # no path on raw
        r412 = c.get(f"/ipfs/{missing}?format=raw", headers={"Cache-Control": "only-if-cached"})
        assert r412.status_code == 412
        # the spec's probe: the empty identity CID
        p = c.get("/ipfs/bafkqaaa?format=raw")
        assert p.status_code == 200 and p.content == b""
        pc = c.get("/ipfs/bafkqaaa", headers={"Accept": "application/vnd.ipld.car"})
        assert pc.status_code == 200 and _car(pc) == ([b"\x01\x55\x00\x00"], [])


def test_car_scopes_paths_and_order(tree):
    repo, root, _ = tree
    big = repo.entry(None, "sub/big.bin")
    sub = repo.entry(None, "sub").cid
    text = cid_str(root)
    with gateway_thread(repo) as url, httpx2.Client(base_url=url, timeout=60) as c:
        r = c.get(f"/ipfs/{text}?format=car")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/vnd.ipld.car; version=1; order=dfs; dups=n"
        assert r.headers["content-disposition"] == f'attachment; filename="{text}.car"'
        assert r.headers["etag"].startswith(f'W/"{text}.car')
        roots, blocks = _car(r)  # every block verified against its CID by read_car
        assert roots == [root]
        # dag-scope=all (the default): the whole DAG, depth-first pre-order, once each
        assert [c_ for c_, _ in blocks] == [c_ for c_, _ in walk_dag(repo.get, root)]
        # Accept with CAR parameters; Content-Location names the format= URL
        r = c.get(f"/ipfs/{text}", headers={"Accept": "application/vnd.ipld.car; version=1; order=dfs; dups=n"})
        assert r.status_code == 200 and r.headers["content-location"] == f"/ipfs/{text}?format=car"
        assert c.get(f"/ipfs/{text}", headers={"Accept": "application/vnd.ipld.car; version=2"}).status_code == 406
        # dag-scope=block, with a path: the blocks that verify the path, then the terminal block
        r = c.get(f"/ipfs/{text}/sub/big.bin?format=car&dag-scope=block")
        assert r.status_code == 200
        _, blocks = _car(r)
        assert [c_ for c_, _ in blocks] == [root, sub, big.cid]
        assert r.headers["x-ipfs-roots"] == ",".join(cid_str(x) for x in (root, sub, big.cid))
        assert r.headers["x-ipfs-path"] == f"/ipfs/{text}/sub/big.bin"
        # dag-scope=entity of a file: its whole DAG (and of a directory: its node)
        r = c.get(f"/ipfs/{cid_str(big.cid)}?format=car&dag-scope=entity")
        got = [c_ for c_, _ in _car(r)[1]]
        assert got == [c_ for c_, _ in walk_dag(repo.get, big.cid)]
        r = c.get(f"/ipfs/{text}/sub?format=car&dag-scope=entity")
        assert [c_ for c_, _ in _car(r)[1]] == [root, sub]
        # scope changes the ETag
        etags = {c.head(f"/ipfs/{text}?format=car&dag-scope={s}").headers["etag"] for s in ("block", "entity", "all")}
        assert len(etags) == 3
        # errors: a path that does not exist, a root not held, bad scope
        assert c.get(f"/ipfs/{text}/nope?format=car").status_code == 404
        assert c.get(f"/ipfs/{cid_str(make_cid(RAW, b'nope'))}?format=car").status_code == 404
        assert c.get(f"/ipfs/{text}?format=car&dag-scope=most").status_code == 400


def test_entity_bytes_sends_only_the_blocks_of_the_range(tree):
    repo, _, files = tree
    data = files["sub/big.bin"]
    big = repo.entry(None, "sub/big.bin").cid
    idx = FileIndex.build(repo.get, big)
    assert len(idx.leaves) >= 3
    internal = [c for c, _ in walk_dag(repo.get, big) if c not in set(idx.leaves)]

    def leaves_for(first, last):
        return [idx.leaves[i] for i in idx.leaf_range(first, last - first + 1)]

    size = len(data)
    mid = idx.starts[1] + 10  # inside the second leaf
    cases = {
        f"{mid}:{mid + 100}": (mid, mid + 100),
        f"0:{idx.starts[1]}": (0, idx.starts[1]),  # ends on the second leaf's first byte
        "-1000:*": (size - 1000, size - 1),
        f"{mid}:-1": (mid, size - 2),
        "0:*": (0, size - 1),
        f"{size - 5}:{size + 999}": (size - 5, size - 1),  # partly outside: the part inside
    }
    with gateway_thread(repo) as url, httpx2.Client(base_url=url, timeout=60) as c:
        for spec, (first, last) in cases.items():
            r = c.get(f"/ipfs/{cid_str(big)}?format=car&entity-bytes={spec}")
            assert r.status_code == 200, (spec, r.text)
            got = dict(_car(r)[1])
            want = leaves_for(first, last)
            assert [x for x in got if x not in internal] == want, spec  # only the leaves of the range
            assert got and next(iter(got)) == big  # the root first
            assert all(x in got for x in internal)  # a one-level tree: the root is the only inner node
            # the range's bytes can be read from the blocks sent
            rebuilt = b"".join(bytes(got[leaf]) for leaf in want)
            start = idx.starts[idx.leaves.index(want[0])]
            assert rebuilt[first - start:last - start + 1] == data[first:last + 1], spec
        # wholly outside the file: the answer of dag-scope=block (the root alone)
        r = c.get(f"/ipfs/{cid_str(big)}?format=car&entity-bytes={size + 10}:*")
        assert [x for x, _ in _car(r)[1]] == [big]
        # ranges change the ETag; malformed ranges are 400
        e1 = c.head(f"/ipfs/{cid_str(big)}?format=car&entity-bytes=0:10").headers["etag"]
        e2 = c.head(f"/ipfs/{cid_str(big)}?format=car&entity-bytes=0:11").headers["etag"]
        assert e1 != e2
        for bad in ("abc", "10", "5:2", "1:x", "1_0:2_0", "+1:5", "%201:5", "1:%205", "9" * 40 + ":*"):
            assert c.get(f"/ipfs/{cid_str(big)}?format=car&entity-bytes={bad}").status_code == 400, bad


def test_car_stream_ends_early_when_a_block_below_the_root_is_missing(tree):
    repo, root, _ = tree
    big = repo.entry(None, "sub/big.bin").cid
    leaf = FileIndex.build(repo.get, big).leaves[1]
    assert repo.store.delete(leaf)
    with gateway_thread(repo) as url, httpx2.Client(base_url=url, timeout=60) as c:
        with c.stream("GET", f"/ipfs/{cid_str(root)}?format=car") as r:
            assert r.status_code == 200  # committed before the walk met the hole
            body = b""
            with pytest.raises(httpx2.HTTPError):
                for chunk in r.iter_bytes():
                    body += chunk
        # what did arrive is a valid prefix without the missing block
        _, blocks = read_car(io.BytesIO(body), verify=True)
        got = []
        try:
            for c_, _ in blocks:
                got.append(c_)
        except MalformedObject as e:  # cut inside a section
            assert "truncated" in str(e)
        assert leaf not in got and got[0] == root


def test_gateway_store_reads_the_real_model_from_tvcfs_serve_http(real_model_dir, tmp_path, monkeypatch):
    src = Repo.init(str(tmp_path / "src"))
    try:
        commit = src.commit_dir(real_model_dir, message="model").cid
        n_blocks = len(list(walk_dag(src.get, commit)))
    finally:
        src.close()
    srv = TvcfsServe(str(tmp_path / "src"), tmp_path, "--http", "127.0.0.1:0")  # peers and HTTP from one process
    try:
        assert srv.peer_url and srv.peer_url.startswith("tvcfs://")
        monkeypatch.setenv("TVCFS_BACKENDS", "gateway")
        monkeypatch.setenv("TVCFS_GATEWAYS", srv.url)
        dst = Repo.init(str(tmp_path / "dst"))
        try:
            assert isinstance(dst.blocks, Router) and [t.name for t in dst.blocks.tiers] == ["lmdb", "gateway"]
            # level by level through the router: each level one get_many (concurrent raw
            # requests), every block verified, written back into the local store
            assert fetch_levels(dst.blocks, commit) == n_blocks
            st = dst.blocks.stats()["gateway"]
            assert st["hits"] == n_blocks and st["corrupt"] == 0 and st["unavailable"] == 0
            dst.update_refs({"refs/heads/main": commit}, message="from the gateway")
            dst.checkout("main", str(tmp_path / "out"))
            assert_same_tree(real_model_dir, str(tmp_path / "out"))
        finally:
            dst.close()
    finally:
        srv.stop()


def test_serve_http_only_and_bad_address(tmp_path, tvcfs_cli):
    Repo.init(str(tmp_path / "r")).close()
    srv = TvcfsServe(str(tmp_path / "r"), tmp_path, "--http", "127.0.0.1:0", "--http-only")
    try:
        assert srv.peer_url is None
        r = httpx2.get(f"{srv.url}/ipfs/bafkqaaa?format=raw", timeout=30)
        assert r.status_code == 200
    finally:
        srv.stop()
    assert srv.proc.returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = tvcfs_cli("serve", str(tmp_path / "r"), "--http-only", "--http", f"127.0.0.1:{port}", ok=False)
    assert p.stderr.decode().strip() == f"tvcfs: error: cannot listen on --http 127.0.0.1:{port}: Address already in use"
    p = tvcfs_cli("serve", str(tmp_path / "r"), "--http-only", ok=False)
    assert p.stderr.decode().startswith("tvcfs: error: --http-only needs --http")


def test_gateway_store_falls_over_rejects_corrupt_and_times_out(tmp_path):
    good = Repo.init(str(tmp_path / "good"))
    bad = Repo.init(str(tmp_path / "bad"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    try:
        data = os.urandom(5000)
        cid = make_cid(RAW, data)
        good.store.put(cid, data)
        bad.store.put(cid, b"X" + data[1:])  # a damaged copy, sent as it is (--no-verify)
        bad.store.verify_reads = False
        with gateway_thread(good) as g_url, gateway_thread(bad) as b_url:
            with GatewayStore([dead, b_url, g_url], timeout=5) as gw:
                assert gw.get(cid) == data  # the first gateway that answers with the right bytes
                assert gw.has(cid)
                absent = make_cid(RAW, b"absent")
                with pytest.raises(BlockUnavailable) as e:  # not found, and one could not answer
                    gw.get(absent)
                assert dead in str(e.value) and "\n" not in str(e.value)
                with pytest.raises(ReadOnlyStore):
                    gw.put(cid, data)
            with GatewayStore([b_url]) as gw:
                with pytest.raises(BlockUnavailable, match="does not hash to its CID"):
                    gw.get(cid)
                # a router never stores the corrupt copy
                local = Router([Tier("local", MemoryStore()), Tier("gw", gw)])
                with pytest.raises(BlockUnavailable):
                    local.get(cid)
                assert not local.tiers[0].store.has(cid)
            with GatewayStore([g_url]) as gw:
                assert gw.get(make_cid(RAW, b"absent")) is None  # 404 from every gateway: not held
        with silent_http() as silent, GatewayStore([silent], timeout=1) as gw:  # never answers
            t0 = time.monotonic()
            with pytest.raises(BlockUnavailable, match="no answer in time"):
                gw.get(cid)
            assert time.monotonic() - t0 < 10
    finally:
        good.close()
        bad.close()


class _HostileGateway:
    """A misbehaving gateway on loopback (test-only): ``/loop`` redirects to itself,
    ``/busy`` answers 429 with ``Retry-After``, ``/drip`` answers 200 and sends one
    byte every 0.2 s forever, ``/good`` serves ``data`` right. Stopped in ``close``."""

    def __init__(self, data: bytes):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        stop = self.stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                kind = self.path.split("/")[1]
                if kind == "loop":
                    self.send_response(302)
                    self.send_header("Location", self.path)
                elif kind == "busy":
                    self.send_response(429)
                    self.send_header("Retry-After", "7")
                elif kind == "good":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                else:  # drip: a body that never ends, slower than max_block would catch
                    self.send_response(200)
                    self.end_headers()
                    while not stop.wait(0.2):
                        try:
                            self.wfile.write(b"x")
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_gateway_store_bounds_a_dripping_body_and_names_loops_and_429(tmp_path):
    """A gateway whose body never ends but trickles (each read within ``timeout``) is
    given up after ``deadline`` seconds instead of holding ``get`` until ``max_block``
    bytes arrive (days); a redirect loop and a 429 are named in words (with the
    Retry-After) and the next gateway gives the block."""
    data = os.urandom(3000)
    cid = make_cid(RAW, data)
    hostile = _HostileGateway(data)
    try:
        u = hostile.url
        with GatewayStore([f"{u}/drip"], timeout=0.5) as gw:  # default deadline: 4 × timeout
            with ThreadPoolExecutor(1) as pool:  # a hang fails the test in 15 s, not at the timeout
                answer = pool.submit(lambda: pytest.raises(BlockUnavailable, gw.get, cid))
                try:
                    e = answer.result(timeout=15)
                finally:
                    hostile.stop.set()  # lets a hung read end
            assert "still arriving after 2 s" in str(e.value) and "\n" not in str(e.value)
        with GatewayStore([f"{u}/loop", f"{u}/busy", f"{u}/good"], timeout=2) as gw:
            assert gw.get(cid) == data  # falls over both to the good one
        with GatewayStore([f"{u}/loop", f"{u}/busy"], timeout=2) as gw:
            with pytest.raises(BlockUnavailable) as e:
                gw.get(cid)
            msg = str(e.value)
            assert f"{u}/loop: too many redirects" in msg
            assert f"{u}/busy: HTTP 429 Too Many Requests (retry after 7)" in msg
    finally:
        hostile.close()


def test_gateway_store_passes_over_a_silent_gateway_after_its_first_timeout(tmp_path):
    """A gateway that accepts and never answers, listed first: the first block waits
    for its timeout, then the next gateway answers; the following blocks go to the
    good gateway at once while the silent one cools down (it cost one timeout per
    block: 12 blocks, 12 s), and a block no live gateway holds is an error naming
    the one passed over, not "not held"."""
    good = Repo.init(str(tmp_path / "good"))
    try:
        blocks = [os.urandom(1000 + i) for i in range(12)]
        cids = [make_cid(RAW, b) for b in blocks]
        for c, b in zip(cids, blocks):
            good.store.put(c, b)
        with silent_http() as silent, gateway_thread(good) as g_url, \
                GatewayStore([silent, g_url], timeout=1) as gw:
            t0 = time.monotonic()
            assert [gw.get(c) for c in cids] == blocks
            assert time.monotonic() - t0 < 6
            t0 = time.monotonic()
            with pytest.raises(BlockUnavailable, match="no answer in time \\(passed over for"):
                gw.get(make_cid(RAW, b"held by no gateway that answers"))
            assert time.monotonic() - t0 < 1
    finally:
        good.close()


# ------------------------------------------------------------------ JS (Helia)
def _js():
    sys.path.insert(0, INTEROP)
    import jsharness

    if not jsharness.node_available():
        pytest.skip("node/npm not available")
    jsharness.ensure_node_modules()
    return jsharness


def test_helia_verified_fetch_reads_a_tvcfs_file_by_cid(real_model_dir, tmp_path):
    js = _js()
    repo = Repo.init(str(tmp_path / "r"))
    try:
        repo.commit_dir(real_model_dir, message="model")
        files = {p: repo.entry(None, p) for p in ("config.json", "tokenizer.json", "model.safetensors")}
    finally:
        repo.close()
    srv = TvcfsServe(str(tmp_path / "r"), tmp_path, "--http", "127.0.0.1:0", "--http-only")
    try:
        for rel, e in files.items():
            out = tmp_path / f"js-{rel}"
            proc = subprocess.run(["node", os.path.join(INTEROP, "gateway.mjs"), "fetch", srv.url, cid_str(e.cid),
                                   "--out", str(out)], cwd=INTEROP, capture_output=True, text=True, timeout=240)
            report = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
            assert report.get("ok"), (rel, report, proc.stderr[-3000:], srv.log()[-2000:])
            with open(os.path.join(real_model_dir, rel), "rb") as f:
                want = f.read()
            assert report["size"] == len(want) and out.read_bytes() == want, rel
            assert report["sha256"] == hashlib.sha256(want).hexdigest()
    finally:
        srv.stop()
    assert js is not None


def test_gateway_store_reads_blocks_the_js_importer_made(tmp_path):
    _js()
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    files = {"d/a.bin": os.urandom(700_000), "d/b.txt": b"made by ipfs-unixfs-importer\n", "big.bin": os.urandom(2 * MIB + 7)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    with ServerProcess(["node", os.path.join(INTEROP, "gateway.mjs"), "serve", str(src)], cwd=INTEROP,
                       name="js-gateway") as srv:
        info = json.loads(srv.lines[0])
        root = info["roots"][str(src)]
        with GatewayStore([info["url"]]) as gw:
            router = Router([Tier("local", MemoryStore()), Tier("helia", gw)])
            for rel, data in files.items():
                e = resolve_path(router.get, CID(root), rel)
                assert b"".join(bytes(x) for x in iter_file(router.get, e.cid)) == data, rel
            st = router.stats()["helia"]
            # every block came from the JS gateway once, verified, then was read locally
            assert st["hits"] > 3 and st["corrupt"] == 0 and st["unavailable"] == 0
            assert router.tiers[0].store.stat()["blocks"] == st["hits"]
