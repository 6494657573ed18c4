"""``tvcfs serve`` / ``clone`` / ``fetch`` / ``pull`` / ``push`` / ``remote`` / ``id``
with real processes on loopback: the server is a ``tvcfs serve`` subprocess, the
clients are ``tvcfs`` subprocesses, the repositories real LMDB stores, the model the
real all-MiniLM-L6-v2 directory. Only processes started here are ended (by PID)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from support.cli import AUTHOR_ENV, err_of, received, run_tvcfs, tvcfs_executable
from support.model import make_finetune
from support.repo import all_blocks, refs_of, stored_bytes
from support.trees import assert_same_tree
from support.wait import wait_until

pytestmark = pytest.mark.timeout(120)



# ------------------------------------------------------------------ helpers
def tv(*args, ok=True, **kw):
    return run_tvcfs(*args, ok=ok, env=AUTHOR_ENV, timeout=100, **kw)


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory, real_model_dir):
    """A repository with the real model (commit 1) and a fine-tune of it (commit 2)
    on ``main``, tag ``v1`` on commit 1. Returns ``(path, [dir1, dir2])``; tests
    copy it before changing it."""
    from tvcfs.repo import Repo

    base = tmp_path_factory.mktemp("model")
    ft = base / "ft"
    make_finetune(real_model_dir, str(ft))
    path = base / "repo"
    with Repo.init(str(path)) as r:
        c1 = r.commit_dir(real_model_dir, message="all-MiniLM-L6-v2", timestamp=1_700_000_000).cid
        r.create_tag("v1", c1)
        r.commit_dir(str(ft), message="fine-tune", timestamp=1_700_000_100)
    return str(path), [real_model_dir, str(ft)]


def copy_repo(src, dst):
    """Copy a repository with LMDB's compacting copy (the store file is a sparse
    1 TiB map: a plain file copy would fill the disk)."""
    from tvcfs.repo import Repo

    os.makedirs(os.path.join(dst, ".tvcfs", "store"))
    os.makedirs(os.path.join(dst, ".tvcfs", "staging"))
    with Repo.open(str(src)) as r:
        r.store.env.copy(os.path.join(dst, ".tvcfs", "store"), compact=True)
    return str(dst)


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("engine", ["qh3", "aioquic", "tcp"])
def test_clone_real_model_is_identical(model_repo, tmp_path, servers, engine):
    src, dirs = model_repo
    if engine == "tcp":
        srv = servers(src, tmp_path, "--no-quic")
        url, eng = srv.url.replace("tvcfs://", "tvcfs+tcp://"), []
    else:
        srv = servers(src, tmp_path, "--engine", engine)
        url, eng = srv.url.replace("tvcfs://", "tvcfs+quic://"), ["--engine", engine]
    dst = tmp_path / "clone"
    p = tv("clone", url, dst, *eng)
    assert "Cloned" in err_of(p) and (engine if engine != "tcp" else "tcp") in err_of(p)
    # same commits (CIDs), refs, tags; remote-tracking refs; remote origin
    src_refs, dst_refs = refs_of(src), refs_of(dst)
    assert dst_refs["refs/heads/main"] == src_refs["refs/heads/main"]
    assert dst_refs["refs/tags/v1"] == src_refs["refs/tags/v1"]
    assert dst_refs["refs/remotes/origin/main"] == src_refs["refs/heads/main"]
    undecorated = lambda out: re.sub(rb"(?m)^(\S+) \([^)]*\)", rb"\1", out)  # the clone adds origin/main
    assert (undecorated(tv("-C", src, "log", "--oneline").stdout)
            == undecorated(tv("-C", dst, "log", "--oneline").stdout))
    assert tv("-C", dst, "remote", "list", "-v").stdout.decode().split() == ["origin", url]
    assert all_blocks(dst) == all_blocks(src)
    # byte-identical files of both commits
    tv("-C", dst, "checkout", "v1", tmp_path / "out1")
    tv("-C", dst, "checkout", "main", tmp_path / "out2")
    assert_same_tree(dirs[0], str(tmp_path / "out1"))
    assert_same_tree(dirs[1], str(tmp_path / "out2"))


def test_fetch_moves_only_new_blocks_and_pull_fast_forwards(model_repo, tmp_path, servers,
                                                            real_model_dir):
    src = copy_repo(model_repo[0], tmp_path / "src")
    srv = servers(src, tmp_path)
    dst = tmp_path / "clone"
    tv("clone", srv.url, dst, "--quiet")
    before = all_blocks(src)
    # a new commit on the served repository, made by another process while it serves
    ft2 = tmp_path / "ft2"
    make_finetune(real_model_dir, str(ft2), seed=7)
    tv("-C", src, "commit", ft2, "-m", "second fine-tune")
    new = {c: n for c, n in all_blocks(src).items() if c not in before}
    assert 0 < len(new) < len(before)
    p = tv("-C", dst, "fetch")
    nb, nbytes, wire = received(p)
    assert nb == len(new) and nbytes == sum(new.values())
    assert wire < nbytes * 1.01 + 64 * 1024
    assert refs_of(dst)["refs/remotes/origin/main"] == refs_of(src)["refs/heads/main"]
    assert refs_of(dst)["refs/heads/main"] != refs_of(src)["refs/heads/main"]  # fetch only
    p = tv("-C", dst, "pull")
    assert "Fast-forward main" in p.stdout.decode()
    assert refs_of(dst)["refs/heads/main"] == refs_of(src)["refs/heads/main"]
    assert all_blocks(dst) == all_blocks(src)
    p = tv("-C", dst, "fetch")  # nothing new: nothing moves
    assert received(p)[0] == 0
    assert tv("-C", dst, "pull").stdout.decode().strip() == "Already up to date."


def test_push_cas_stale_base_and_diverged_pull(model_repo, tmp_path, servers):
    src = copy_repo(model_repo[0], tmp_path / "src")
    srv = servers(src, tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    tv("clone", srv.url, a, "-q")
    tv("clone", srv.url, b, "-q")
    ids = [tv("-C", d, "id").stdout.decode().strip() for d in (a, b)]
    assert all(i.startswith("12D3KooW") for i in ids)
    assert tv("-C", a, "id").stdout.decode().strip() == ids[0]  # stable
    # the owner restarts the server with both clones allowed to push (same peer ID, port)
    srv.stop()
    srv = servers(src, tmp_path, "--allow-push", *ids, listen=f"127.0.0.1:{srv.port}")
    # b pushes a new commit: only its new blocks move
    wt = tmp_path / "wt_b"
    tv("-C", b, "checkout", "main", wt)
    (wt / "notes.txt").write_text("from b\n")
    tv("-C", b, "commit", wt, "-m", "b's change")
    p = tv("-C", b, "push")
    out = p.stdout.decode()
    assert "refs/heads/main:" in out and re.search(r"\((\d) blocks", out)
    assert int(re.search(r"\((\d+) blocks", out).group(1)) <= 3  # file, tree, commit
    assert refs_of(src)["refs/heads/main"] == refs_of(b)["refs/heads/main"]
    assert refs_of(b)["refs/remotes/origin/main"] == refs_of(b)["refs/heads/main"]
    assert "push from" in srv.log()
    # a's base is stale: its push is rejected, and nothing on the remote changes
    wt = tmp_path / "wt_a"
    tv("-C", a, "checkout", "main", wt)
    (wt / "notes.txt").write_text("from a\n")
    tv("-C", a, "commit", wt, "-m", "a's change")
    refs_before, blocks_before = refs_of(src), all_blocks(src)
    p = tv("-C", a, "push", ok=False)
    msg = err_of(p).strip()
    assert msg.startswith("tvcfs: error: push rejected") and "tvcfs pull" in msg, msg
    assert len(msg.splitlines()) == 1 and "Traceback" not in msg
    assert refs_of(src) == refs_before and all_blocks(src) == blocks_before
    # pull cannot fast-forward: a clear error pointing at tvcfs merge
    p = tv("-C", a, "pull", ok=False)
    msg = err_of(p).strip().splitlines()[-1]
    assert "diverged" in msg and "tvcfs merge origin/main" in msg, msg
    # the server-side compare-and-swap: --force with a stale lease is still refused
    # when the remote moves between listing and the update; here it is current,
    # so a forced push replaces the remote branch
    p = tv("-C", a, "push", "--force")
    assert refs_of(src)["refs/heads/main"] == refs_of(a)["refs/heads/main"]


def test_unauthorised_push_and_peer_id_mismatch(model_repo, tmp_path, servers):
    src = copy_repo(model_repo[0], tmp_path / "src")
    srv = servers(src, tmp_path)
    dst = tmp_path / "clone"
    tv("clone", srv.url, dst, "-q")
    me = tv("-C", dst, "id").stdout.decode().strip()
    wt = tmp_path / "wt"
    tv("-C", dst, "checkout", "main", wt)
    (wt / "x.txt").write_text("x\n")
    tv("-C", dst, "commit", wt, "-m", "x")
    refs_before, blocks_before = refs_of(src), all_blocks(src)
    p = tv("-C", dst, "push", ok=False)
    msg = err_of(p).strip()
    assert len(msg.splitlines()) == 1, msg
    assert "unauthorised" in msg and me in msg and "--allow-push" in msg, msg
    assert refs_of(src) == refs_before and all_blocks(src) == blocks_before
    wait_until(lambda: re.search(rf"refused push to refs/heads/main from {me}", srv.log()), 10,
               what="the server to log the refused push")
    # peer-ID mismatch: the URL pins another node's key
    other = tv("-C", dst, "id").stdout.decode().strip()
    bad = srv.url.replace(srv.peer_id, other)
    p = tv("clone", bad, tmp_path / "c2", ok=False)
    msg = err_of(p).strip()
    assert msg == (f"tvcfs: error: peer ID mismatch: expected {other}, "
                   f"server presented {srv.peer_id}"), msg
    assert not (tmp_path / "c2" / ".tvcfs" / "store").exists() or not refs_of(tmp_path / "c2").get(
        "refs/heads/main")
    wait_until(lambda: "closed by the client: peer ID mismatch" in srv.log(), 10,
               what="the server to log the client's peer-ID close")
    # a private server: only allowed peers may read
    priv = servers(src, tmp_path, "--private", "--allow-push", me, name="private")
    p = tv("clone", priv.url, tmp_path / "c3", ok=False)  # a new clone has a new key
    msg = err_of(p).strip()
    assert "private" in msg and "--allow-push" in msg and len(msg.splitlines()) == 1, msg
    p = tv("-C", dst, "fetch", priv.url)  # dst's peer ID is allowed
    assert p.returncode == 0


def test_tcp_fallback_when_udp_is_dropped(model_repo, tmp_path, servers):
    """QUIC disabled on the server and its UDP port swallowed by a socket that never
    answers (no ICMP either: like a firewall dropping UDP): a plain tvcfs:// URL
    gets no QUIC answer, falls back to TLS over TCP by itself and clones."""
    src = model_repo[0]
    srv = servers(src, tmp_path, "--no-quic")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", srv.port))  # datagrams to the port vanish
    try:
        assert srv.url.startswith("tvcfs://")
        t0 = time.monotonic()
        p = tv("clone", srv.url, tmp_path / "c")
        assert "over tcp" in err_of(p), err_of(p)
        assert all_blocks(tmp_path / "c") == all_blocks(src)
        assert time.monotonic() - t0 < 30
        assert sink.recv(65536, socket.MSG_DONTWAIT)  # QUIC really tried (and was dropped)
    finally:
        sink.close()
    # UDP refused outright (no listener): the fallback is immediate
    p = tv("-C", tmp_path / "c", "fetch")
    assert p.returncode == 0


def test_bad_block_retried_on_next_remote_and_peer_penalised(model_repo, tmp_path, servers):
    """A server that flips a byte in one block: the client drops it, counts it against
    that peer, gets it from the next configured remote, and the fetch is complete."""
    src = model_repo[0]
    good = servers(src, tmp_path)
    script = tmp_path / "evil.py"
    script.write_text(EVIL_SERVER)
    evil = subprocess.Popen([sys.executable, str(script), src], stdout=subprocess.PIPE)
    try:
        evil_url = evil.stdout.readline().decode().strip()
        dst = tmp_path / "d"
        tv("init", dst)
        tv("-C", dst, "remote", "add", "evil", evil_url)
        tv("-C", dst, "remote", "add", "good", good.url)
        p = tv("-C", dst, "fetch", "evil")
        e = err_of(p)
        assert "sent 1 bad block(s)" in e and "asking remote good" in e, e
        assert all_blocks(dst) == all_blocks(src)
        assert refs_of(dst)["refs/remotes/evil/main"] == refs_of(src)["refs/heads/main"]
        lst = tv("-C", dst, "remote", "list", "-v").stdout.decode()
        assert re.search(r"evil\s+\S+\s+\(1 bad blocks\)", lst), lst
    finally:
        os.kill(evil.pid, signal.SIGKILL)
        evil.wait(10)
        evil.stdout.close()


EVIL_SERVER = r'''
import sys, trio
from tvcfs.repo import Repo
from tvcfs.transport.backend import RepoBackend
from tvcfs.transport.identity import NodeIdentity
from tvcfs.transport.quic import serve_quic
from tvcfs.transport.server import ServerConfig, handle_session
flipped = []
def corrupt(cid, data):
    if cid[1] == 0x55 and len(data) > 100 and not flipped:
        flipped.append(cid)
        data = bytearray(data); data[50] ^= 1; return bytes(data)
    return data
ident = NodeIdentity.generate()
cfg = ServerConfig(RepoBackend(Repo.open(sys.argv[1])), ident, corrupt_hook=corrupt)
async def main():
    async with trio.open_nursery() as n:
        srv = await n.start(lambda task_status: serve_quic(
            lambda s: handle_session(s, cfg), "127.0.0.1", 0, identity=ident,
            task_status=task_status))
        print(f"tvcfs+quic://{ident}@127.0.0.1:{srv.address[1]}/", flush=True)
trio.run(main)
'''


def test_server_killed_mid_clone_resumes_with_missing_bytes_only(tmp_path, servers):
    """kill -9 of the server while a ~200 MB clone runs; after a restart on the same
    port, running the clone again moves less than what was missing plus 5 %."""
    from support.model import synth_model

    from tvcfs.repo import Repo

    synth = synth_model()
    wt = tmp_path / "wt"
    wt.mkdir()
    synth.write_model(str(wt / "model.safetensors"), synth.plan_config(1e8), "f16", seed=3)
    src = tmp_path / "src"
    with Repo.init(str(src)) as r:
        r.commit_dir(str(wt), message="synthetic ~200 MB")
    total_blocks = all_blocks(src)
    total = sum(total_blocks.values())
    assert total > 150e6
    # paced so that the kill lands mid-clone whatever the machine's speed
    srv = servers(src, tmp_path, "--rate-limit", "60M")
    dst = tmp_path / "clone"
    env = dict(os.environ, **AUTHOR_ENV)
    client = subprocess.Popen(tvcfs_executable() + ["clone", srv.url, str(dst)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until ~a quarter has been stored
            if stored_bytes(dst) > total * 0.25:
                break
            time.sleep(0.005)
        srv.kill9()
        t_kill = time.monotonic()
        out, err = client.communicate(timeout=60)
        assert time.monotonic() - t_kill < 10  # noticed at once (ping → ICMP unreachable)
    finally:
        if client.poll() is None:
            os.kill(client.pid, signal.SIGKILL)
            client.wait()
    msg = err.decode().strip().splitlines()[-1]
    assert client.returncode != 0, err
    assert msg.startswith("tvcfs: error:") and "resume" in msg, msg
    have = sum(all_blocks(dst).values())
    assert 0 < have < total, (have, total)
    missing = total - have
    srv2 = servers(src, tmp_path, listen=f"127.0.0.1:{srv.port}")
    assert srv2.url == srv.url  # same node key, same port
    p = tv("clone", srv.url, dst)
    assert "Resuming" in err_of(p)
    nb, nbytes, wire = received(p)
    assert nbytes == missing
    assert wire < missing * 1.05, (wire, missing)
    assert all_blocks(dst) == total_blocks
    assert refs_of(dst)["refs/heads/main"] == refs_of(src)["refs/heads/main"]


def test_id_remote_verbs_and_one_line_errors(tmp_path):
    r = tmp_path / "r"
    tv("init", r)
    pid = tv("-C", r, "id").stdout.decode().strip()
    assert pid.startswith("12D3KooW") and tv("-C", r, "id").stdout.decode().strip() == pid
    assert oct(os.stat(r / ".tvcfs" / "node.key").st_mode & 0o777) == "0o600"
    url = f"tvcfs://{pid}@127.0.0.1:9/"
    tv("-C", r, "remote", "add", "origin", url)
    tv("-C", r, "remote", "add", "backup", "tvcfs+tcp://127.0.0.1:9/")
    assert tv("-C", r, "remote").stdout.decode().split() == ["backup", "origin"]
    p = tv("-C", r, "remote", "add", "origin", url, ok=False)
    assert "already exists" in err_of(p)
    p = tv("-C", r, "remote", "add", "x", "http://example.org/", ok=False)
    assert err_of(p).count("\n") == 1 and "not a tvcfs URL" in err_of(p)
    tv("-C", r, "remote", "remove", "backup")
    assert tv("-C", r, "remote", "list", "-v").stdout.decode().split() == ["origin", url]
    # nobody listens on port 9: one-line errors, no traceback
    for args in (("fetch",), ("push",), ("fetch", "nope")):
        p = tv("-C", r, *args, ok=False)
        e = err_of(p)
        assert e.startswith("tvcfs: error:") and e.count("\n") == 1 and "Traceback" not in e, e
    p = tv("clone", "tvcfs+tcp://127.0.0.1:9/", tmp_path / "c", ok=False)
    assert "connection" in err_of(p) and err_of(p).count("\n") == 1, err_of(p)
