"""The hub (docs/hub.md): a real ``tvcfs hub serve`` on loopback, real Hugging Face
clients (``huggingface_hub``, ``transformers``, ``sentence-transformers``) in
subprocesses with ``HF_ENDPOINT`` pointed at it, tokens, private repositories, the
REST API and abuse (traversal, oversized and malformed bodies, races, disconnects,
slow clients, many concurrent downloads)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import threading
import time

import pytest

from support.cli import run_tvcfs
from support.trees import assert_same_tree
from support.hub import add_user, get_json, hf_env, ndjson, py_env, request, run_py
from support.server import running_hub
from support.wait import wait_until

from tvcfs.encoding.cid import cid_from_str, verify_block

pytestmark = pytest.mark.slow

ORG = "acme"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, real_model_dir):
    """A hub with users alice (member of acme: writes), bob (no rights), carol
    (revoked in a test), repositories acme/model (public: the real model, tag v1)
    and acme/secret (private); served for the whole module."""
    base = tmp_path_factory.mktemp("hub")
    root = str(base / "root")
    run_tvcfs("hub", "init", root)
    tokens = {"alice": add_user(root, "alice", "--org", ORG), "bob": add_user(root, "bob"),
              "carol": add_user(root, "carol", "--org", ORG)}
    run_tvcfs("hub", "repo", "create", f"{ORG}/model", "--root", root)
    run_tvcfs("hub", "repo", "create", f"{ORG}/secret", "--private", "--root", root)
    model_repo = os.path.join(root, "repos", ORG, "model")
    run_tvcfs("-C", model_repo, "commit", real_model_dir, "-m", "the real model")
    run_tvcfs("-C", model_repo, "tag", "v1")
    secret_src = base / "secret"
    secret_src.mkdir()
    (secret_src / "weights.txt").write_text("classified\n")
    run_tvcfs("-C", os.path.join(root, "repos", ORG, "secret"), "commit", str(secret_src), "-m", "s")
    with running_hub(root) as url:
        yield {"root": root, "url": url, "tokens": tokens, "base": base}


def _env(hub, who: str | None = None, **more):
    home = hub["base"] / f"hf-{who or 'anon'}"
    return hf_env(hub["url"], str(home), hub["tokens"].get(who) if who else None, **more)


def _repo_path(hub, name: str) -> str:
    return os.path.join(hub["root"], "repos", ORG, name)


def _assert_same_files(src: str, snap: str) -> None:
    """Every file of ``src`` is in ``snap`` (a Hugging Face snapshot: symlinks into its
    blob store, followed) with the same bytes, and nothing else is."""
    names = set()
    for d, _, files in os.walk(src):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), src)
            names.add(rel)
            assert open(os.path.join(snap, rel), "rb").read() == open(os.path.join(d, f), "rb").read(), rel
    got = {os.path.relpath(os.path.join(d, f), snap) for d, _, files in os.walk(snap) for f in files}
    assert got == names


def _new_leaf_bytes(repo_dir: str, old_rev: str, new_rev: str) -> int:
    """Bytes of raw leaves reachable from ``new_rev`` and not from ``old_rev``."""
    from tvcfs.dag import KIND_FILE
    from tvcfs.repo import Repo

    def leaves(repo, rev):
        out = {}
        for _, e in repo.walk(rev):
            if e.kind == KIND_FILE:
                idx = repo.file_index(e.cid)
                out.update(zip(idx.leaves, idx.sizes))
        return out

    with Repo.open(repo_dir) as repo:
        a, b = leaves(repo, repo.resolve(old_rev)), leaves(repo, repo.resolve(new_rev))
    return sum(n for c, n in b.items() if c not in a)


# --------------------------------------------------------------------------- download
def test_hf_download_snapshot_and_file(hub, real_model_dir, tmp_path):
    out = run_py(f"""
import json
from huggingface_hub import snapshot_download, hf_hub_download, HfApi
p = snapshot_download("{ORG}/model", revision="v1")
f = hf_hub_download("{ORG}/model", "config.json")
info = HfApi().model_info("{ORG}/model", revision="v1")
print(json.dumps({{"snap": p, "file": f, "sha": info.sha, "n": len(info.siblings)}}))
""", _env(hub))
    r = json.loads(out.strip().splitlines()[-1])
    _assert_same_files(real_model_dir, r["snap"])
    assert open(r["file"], "rb").read() == open(os.path.join(real_model_dir, "config.json"), "rb").read()
    assert len(r["sha"]) == 40 and os.path.basename(r["snap"]) == r["sha"]
    # the 40-hex alias, the full CID and the tag name resolve to the same commit and bytes
    cid = run_tvcfs("-C", _repo_path(hub, "model"), "log", "-n", "1", "--oneline").stdout.split()[0].decode()
    st, h, body = request(hub["url"], "GET", f"/{ORG}/model/resolve/{r['sha']}/config.json")
    assert st == 200 and h["x-repo-commit"] == r["sha"]
    full = json.loads(request(hub["url"], "GET", f"/api/models/{ORG}/model")[2])["tvcfsCommit"]
    assert full.startswith(cid)
    st2, h2, body2 = request(hub["url"], "GET", f"/{ORG}/model/resolve/{full}/config.json")
    assert (st2, body2, h2["etag"]) == (200, body, h["etag"])
    # ETag is the file's CID; Range gives 206 with the right slice
    ls = run_tvcfs("-C", _repo_path(hub, "model"), "ls", "v1").stdout.decode()
    file_cid = [line.split()[-2] for line in ls.splitlines() if line.endswith(" config.json")][0]
    assert h["etag"] == f'"{file_cid}"'
    # (model.safetensors is large: resolve redirects to the blob port, followed here)
    st, h, part = request(hub["url"], "GET", f"/{ORG}/model/resolve/v1/model.safetensors",
                          headers={"Range": "bytes=100-1099"}, follow=True)
    whole = open(os.path.join(real_model_dir, "model.safetensors"), "rb").read()
    assert st == 206 and part == whole[100:1100] and h["content-range"] == f"bytes 100-1099/{len(whole)}"
    st, h, _ = request(hub["url"], "HEAD", f"/{ORG}/model/resolve/v1/model.safetensors", follow=True)
    assert st == 200 and int(h["content-length"]) == len(whole) and h["accept-ranges"] == "bytes"
    assert int(h["redirect"]["x-linked-size"]) == len(whole) and h["redirect"]["x-repo-commit"] == r["sha"]
    st, h, _ = request(hub["url"], "GET", f"/{ORG}/model/resolve/v1/model.safetensors",
                       headers={"Range": f"bytes={len(whole)}-"}, follow=True)
    assert st == 416
    st, h, _ = request(hub["url"], "GET", f"/{ORG}/model/resolve/v1/nope.json")
    assert st == 404 and h["x-error-code"] == "EntryNotFound" and h["x-repo-commit"] == r["sha"]
    st, h, _ = request(hub["url"], "GET", f"/{ORG}/model/resolve/nobranch/config.json")
    assert st == 404 and h["x-error-code"] == "RevisionNotFound"


@pytest.mark.ml
def test_transformers_and_sentence_transformers_from_hub(hub, real_model_dir):
    code = f"""
import json, numpy as np, torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer
s = ["the hub serves models", "a second sentence"]
a = SentenceTransformer("{ORG}/model").encode(s)
b = SentenceTransformer({real_model_dir!r}).encode(s)
tok = AutoTokenizer.from_pretrained({real_model_dir!r})
x = tok(s, return_tensors="pt", padding=True)
with torch.no_grad():
    h = AutoModel.from_pretrained("{ORG}/model", revision="v1")(**x).last_hidden_state
    l = AutoModel.from_pretrained({real_model_dir!r})(**x).last_hidden_state
print(json.dumps({{"st": bool(np.array_equal(a, b)), "tf": bool(torch.equal(h, l)), "shape": list(a.shape)}}))
"""
    r = json.loads(run_py(code, _env(hub)).strip().splitlines()[-1])
    assert r == {"st": True, "tf": True, "shape": [2, 384]}


# --------------------------------------------------------------------------- upload
def test_hf_upload_folder_and_create_commit(hub, real_model_dir, finetune, tmp_path):
    ft = finetune(tmp_path / "ft")
    out = run_py(f"""
import json
from huggingface_hub import HfApi, CommitOperationAdd, CommitOperationDelete
api = HfApi()
api.create_repo("{ORG}/up")
a = api.upload_folder(folder_path={real_model_dir!r}, repo_id="{ORG}/up", commit_message="original")
again = api.upload_folder(folder_path={real_model_dir!r}, repo_id="{ORG}/up")
b = api.upload_folder(folder_path={str(tmp_path / 'ft')!r}, repo_id="{ORG}/up", commit_message="fine-tune")
c = api.create_commit("{ORG}/up", [CommitOperationAdd("notes/a.txt", b"hello"),
                                    CommitOperationDelete("README.md")], commit_message="notes")
print(json.dumps([a.oid, again.oid, b.oid, c.oid]))
""", _env(hub, "alice"))
    a, again, b, c = json.loads(out.strip().splitlines()[-1])
    assert a == again  # nothing changed: no commit
    repo = _repo_path(hub, "up")
    log = run_tvcfs("-C", repo, "log", "--oneline").stdout.decode().splitlines()
    assert [line.split(None, 1)[1].split(") ", 1)[-1] for line in log] == ["notes", "fine-tune", "original",
                                                                          "initial commit"]
    # every upload is one commit; the fine-tune stored only its changed tensors and header
    new = _new_leaf_bytes(repo, "main~2", "main~1")
    assert new <= ft.changed_bytes + ft.added_bytes + ft.header_bytes + (1 << 20), (new, ft)
    run_tvcfs("-C", repo, "checkout", "main~1", str(tmp_path / "co"))
    assert_same_tree(str(tmp_path / "ft"), str(tmp_path / "co"))
    assert run_tvcfs("-C", repo, "cat", "main:notes/a.txt").stdout == b"hello"
    assert run_tvcfs("-C", repo, "cat", "main:README.md", ok=False).returncode == 1


def test_hf_upload_through_lfs_batch(hub, real_model_dir, tmp_path):
    """With --lfs-threshold, large files go through the LFS batch API (basic
    transfer to a signed URL, verify), which clients use without hf_xet."""
    with running_hub(hub["root"], "--lfs-threshold", "1M") as url:
        env = hf_env(url, str(tmp_path / "hf"), hub["tokens"]["alice"], HF_HUB_DISABLE_XET="1")
        out = run_py(f"""
import json
from huggingface_hub import HfApi
api = HfApi()
api.create_repo("{ORG}/lfs")
a = api.upload_folder(folder_path={real_model_dir!r}, repo_id="{ORG}/lfs")
t = [f for f in api.list_repo_tree("{ORG}/lfs") if f.path == "model.safetensors"][0]
print(json.dumps([a.oid, t.lfs.sha256 if t.lfs else None]))
""", env)
    oid, sha = json.loads(out.strip().splitlines()[-1])
    whole = open(os.path.join(real_model_dir, "model.safetensors"), "rb").read()
    assert sha == hashlib.sha256(whole).hexdigest()
    assert run_tvcfs("-C", _repo_path(hub, "lfs"), "cat", "main:model.safetensors").stdout == whole
    assert os.listdir(os.path.join(hub["root"], "uploads", ORG, "lfs")) == []  # committed, not left staged


@pytest.mark.ml
def test_push_to_hub_of_a_fine_tune_stores_only_changed_tensors(hub, real_model_dir):
    out = run_py(f"""
import json, torch
from transformers import AutoModel
m = AutoModel.from_pretrained({real_model_dir!r})
m.push_to_hub("{ORG}/ft", commit_message="base")
sd = m.state_dict()
changed = ["encoder.layer.2.attention.self.query.weight", "encoder.layer.4.output.dense.weight"]
with torch.no_grad():
    for k in changed:
        sd[k].add_(torch.randn_like(sd[k]) * 1e-3)
m.push_to_hub("{ORG}/ft", commit_message="tuned")
print(json.dumps(sum(sd[k].numel() * sd[k].element_size() for k in changed)))
""", _env(hub, "alice"))
    changed = json.loads(out.strip().splitlines()[-1])
    repo = _repo_path(hub, "ft")
    msgs = run_tvcfs("-C", repo, "log", "--oneline").stdout.decode()
    assert "tuned" in msgs and "base" in msgs
    new = _new_leaf_bytes(repo, "main~1", "main")
    total = os.path.getsize(os.path.join(real_model_dir, "model.safetensors"))
    assert changed <= new <= changed + (1 << 20), (new, changed, total)


# --------------------------------------------------------------------------- tokens
def test_tokens_and_private_repositories(hub, tmp_path):
    url, tok = hub["url"], hub["tokens"]
    body = ndjson({"key": "header", "value": {"summary": "x"}},
                  {"key": "file", "value": {"path": "x.txt", "content": "eA==", "encoding": "base64"}})
    commit = f"/api/models/{ORG}/model/commit/main"
    head = run_tvcfs("-C", _repo_path(hub, "model"), "log", "-n1", "--oneline").stdout
    # no token: 401 for writes and for private reads
    assert request(url, "POST", commit, body)[0] == 401
    assert request(url, "GET", f"/api/models/{ORG}/secret")[0] == 401
    assert request(url, "GET", f"/{ORG}/secret/resolve/main/weights.txt")[0] == 401
    # bob may read public repositories but not push (403); the private one does not exist for him
    assert request(url, "GET", f"/api/models/{ORG}/model", token=tok["bob"])[0] == 200
    assert request(url, "POST", commit, body, tok["bob"])[0] == 403
    assert request(url, "GET", f"/api/models/{ORG}/secret", token=tok["bob"])[0] == 404
    ids = [r["id"] for r in get_json(url, "/api/repos", tok["bob"])[1]]
    assert f"{ORG}/model" in ids and f"{ORG}/secret" not in ids
    assert f"{ORG}/secret" not in [r["id"] for r in get_json(url, "/api/repos")[1]]
    assert f"{ORG}/secret" in [r["id"] for r in get_json(url, "/api/repos", tok["alice"])[1]]
    st, _, data = request(url, "GET", f"/{ORG}/secret/resolve/main/weights.txt", token=tok["alice"])
    assert (st, data) == (200, b"classified\n")
    # a wrong token is 401 even on a public repository
    assert request(url, "GET", f"/api/models/{ORG}/model", token="tvcfs_wrong")[0] == 401
    # revoked: 401 where it worked before
    assert request(url, "GET", f"/api/models/{ORG}/secret", token=tok["carol"])[0] == 200
    run_tvcfs("hub", "user", "revoke", "carol", "--root", hub["root"])
    assert request(url, "GET", f"/api/models/{ORG}/secret", token=tok["carol"])[0] == 401
    assert request(url, "POST", commit, body, tok["carol"])[0] == 401
    assert run_tvcfs("-C", _repo_path(hub, "model"), "log", "-n1", "--oneline").stdout == head  # nothing landed
    # the client maps them as huggingface_hub users expect
    out = run_py(f"""
from huggingface_hub import HfApi, CommitOperationAdd
from huggingface_hub.errors import HfHubHTTPError
try:
    HfApi().create_commit("{ORG}/model", [CommitOperationAdd("y.txt", b"y")], commit_message="no")
except HfHubHTTPError as e:
    print(e.response.status_code)
""", _env(hub, "bob"))
    assert out.strip().splitlines()[-1] == "403"
    # the token file keeps only hashes
    state = open(os.path.join(hub["root"], "hub.json")).read()
    assert all(t not in state for t in tok.values())


def test_cli_users_repos_login(hub, tmp_path):
    root = hub["root"]
    out = run_tvcfs("hub", "user", "add", "dave", "--email", "d@example.org", "--root", root).stdout.decode()
    token = out.strip().splitlines()[-1]
    assert token.startswith("tvcfs_") and token not in open(os.path.join(root, "hub.json")).read()
    assert "dave" in run_tvcfs("hub", "user", "list", "--root", root).stdout.decode()
    for bad in ("../evil", "/abs/x", "a/b/c", "a/..", "a/b\x01", ".hidden/x"):
        p = run_tvcfs("hub", "repo", "create", bad, "--root", root, ok=False)
        err = p.stderr.decode().strip()
        assert err.startswith("tvcfs: error: invalid") and len(err.splitlines()) == 1, err
    assert not os.path.exists(os.path.join(root, "evil"))
    cfg = tmp_path / "cfg"
    run_tvcfs("login", hub["url"], "--token", token, env={"XDG_CONFIG_HOME": str(cfg)})
    f = cfg / "tvcfs" / "tokens.json"
    assert json.loads(f.read_text()) == {hub["url"]: token} and stat.S_IMODE(f.stat().st_mode) == 0o600
    p = run_tvcfs("login", hub["url"], "--token", "tvcfs_nope", env={"XDG_CONFIG_HOME": str(cfg)}, ok=False)
    assert p.stderr.decode().startswith("tvcfs: error: the hub at") and b"401" in p.stderr
    run_tvcfs("hub", "repo", "create", "dave/tmp", "--root", root)
    assert "dave/tmp" in run_tvcfs("hub", "repo", "list", "--root", root).stdout.decode()
    run_tvcfs("hub", "repo", "delete", "dave/tmp", "--root", root)
    assert not os.path.exists(os.path.join(root, "repos", "dave", "tmp"))


# --------------------------------------------------------------------------- REST API
def test_rest_api(hub):
    url, tok = hub["url"], hub["tokens"]
    st, repos = get_json(url, "/api/repos")
    assert st == 200 and {"id": f"{ORG}/model"}.items() <= repos[[r["id"] for r in repos].index(f"{ORG}/model")].items()
    st, created = get_json(url, "/api/repos", tok["alice"], "POST", {"namespace": ORG, "name": "rest"})
    assert st == 201 and created["id"] == f"{ORG}/rest"
    assert get_json(url, "/api/repos", tok["alice"], "POST", {"namespace": ORG, "name": "rest"})[0] == 409
    assert get_json(url, "/api/repos", tok["bob"], "POST", {"namespace": ORG, "name": "x"})[0] == 403
    st, err = get_json(url, "/api/repos", None, "POST", {"name": "x"})
    assert st == 401 and "error" in err
    st, refs = get_json(url, f"/api/repos/{ORG}/model/refs")
    assert st == 200 and refs["tags"]["v1"] == refs["branches"]["main"]
    st, log = get_json(url, f"/api/repos/{ORG}/model/log?rev=v1")
    assert st == 200 and log[0]["cid"] == refs["tags"]["v1"] and log[0]["message"] == "the real model"
    st, tree = get_json(url, f"/api/repos/{ORG}/model/tree/v1")
    assert st == 200 and "model.safetensors" in [e["name"] for e in tree]
    st, h, data = request(url, "GET", f"/api/repos/{ORG}/model/file/v1/config.json", headers={"Range": "bytes=0-1"})
    assert st == 206 and len(data) == 2 and h["etag"].startswith('"bafk')
    st, table = get_json(url, f"/api/repos/{ORG}/model/tensors/v1/model.safetensors")
    assert st == 200 and len(table) > 50 and {"name", "dtype", "shape", "bytes"} <= set(table[0])
    assert get_json(url, f"/api/repos/{ORG}/model/tensors/v1/config.json")[0] == 422
    st, diff = get_json(url, f"/api/repos/{ORG}/model/diff/v1/main")
    assert st == 200 and isinstance(diff, dict)
    st, spec = get_json(url, "/openapi.json")
    assert st == 200 and spec["openapi"].startswith("3.") and "/api/repos" in spec["paths"]
    assert get_json(url, f"/api/repos/{ORG}/rest", tok["bob"], "DELETE")[0] == 403
    assert get_json(url, f"/api/repos/{ORG}/rest", tok["alice"], "DELETE")[0] == 200
    assert get_json(url, f"/api/repos/{ORG}/rest")[0] == 404
    # every repository's IPFS trustless gateway (`tvcfs hub serve` mounts it): a file's
    # CID as a raw block that hashes to it, and as a CAR
    cid = h["etag"].strip('"')
    st, gh, raw = request(url, "GET", f"/{ORG}/model/ipfs/{cid}?format=raw")
    assert st == 200 and gh["content-type"].startswith("application/vnd.ipld.raw"), (st, gh)
    verify_block(cid_from_str(cid), raw)
    assert raw == run_tvcfs("-C", _repo_path(hub, "model"), "cat", "v1:config.json").stdout
    st, gh, car = request(url, "GET", f"/{ORG}/model/ipfs/{cid}?format=car")
    assert st == 200 and gh["content-type"].startswith("application/vnd.ipld.car") and raw in car
    assert request(url, "GET", f"/{ORG}/nosuch/ipfs/{cid}?format=raw")[0] == 404


# --------------------------------------------------------------------------- abuse
def test_traversal_malformed_and_oversized(hub):
    url, tok = hub["url"], hub["tokens"]["alice"]
    root = hub["root"]
    head = run_tvcfs("-C", _repo_path(hub, "model"), "log", "-n1", "--oneline").stdout
    for path in (f"/{ORG}/model/resolve/main/..%2F..%2F..%2Fhub.json", f"/{ORG}/model/resolve/main/%2Fetc%2Fpasswd",
                 f"/{ORG}/model/resolve/main/a%00b", f"/api/repos/{ORG}/model/file/main/..%2Fsecret",
                 f"/{ORG}/model/resolve/main/.tvcfs%2Fstore%2Fdata.mdb"):
        st, _, body = request(url, "GET", path)
        assert st == 422 and b"invalid path" in body, (path, st, body)
    for path in ("/api/models/..%2F..%2Fetc/passwd", f"/api/models/{ORG}/..", "/%2E%2E/x/resolve/main/a"):
        st, _, body = request(url, "GET", path)
        assert st in (404, 405, 422) and b"hub.json" not in body and "error" in json.loads(body), (path, st)
    assert get_json(url, "/api/repos/create", tok, "POST", {"name": "..", "organization": ORG})[0] == 422
    assert get_json(url, "/api/repos/create", tok, "POST", {"name": "x", "organization": "../../tmp"})[0] == 422
    commit = f"/api/models/{ORG}/model/commit/main"
    bad = [
        ndjson({"key": "header", "value": {"summary": "t"}},
               {"key": "file", "value": {"path": "../../escape.txt", "content": "eA==", "encoding": "base64"}}),
        ndjson({"key": "header", "value": {"summary": "t"}},
               {"key": "file", "value": {"path": "ok.txt", "content": "not base64!", "encoding": "base64"}}),
        ndjson({"key": "header", "value": {"summary": "t"}}) + b"{this is not json\n",
        ndjson({"key": "header", "value": {"summary": "t"}}, {"key": "lfsFile", "value": {"path": "w", "oid": "0" * 64}}),
        ndjson({"key": "file", "value": {"path": "nohdr.txt", "content": "eA=="}}),
        b"\xff\xfe garbage",
    ]
    for b in bad:
        st, _, body = request(url, "POST", commit, b, tok)
        assert st == 422 and "error" in json.loads(body), (b, st, body)
    st, _, body = request(url, "POST", f"/api/models/{ORG}/model/preupload/main", b"{not json", tok,
                          {"Content-Type": "application/json"})
    assert st == 422 and "error" in json.loads(body)
    st, _, body = request(url, "POST", f"/{ORG}/model.git/info/lfs/objects/batch", b'{"objects": 3}', tok)
    assert st == 422
    # a body declared larger than the limit is refused before it is read
    st, _, body = request(url, "POST", commit, b"x", tok, {"Content-Length": str(1 << 50)})
    assert st == 413 and "error" in json.loads(body)
    assert run_tvcfs("-C", _repo_path(hub, "model"), "log", "-n1", "--oneline").stdout == head
    assert not os.path.exists(os.path.join(root, "escape.txt"))
    assert os.listdir(os.path.join(root, "tmp")) == []


def test_json_bodies_of_the_wrong_shape_and_bad_ref_names_are_422(hub):
    """A JSON body that parses but is not the object a route expects (a list, a
    number), a list of paths holding a number, and a branch or tag name git refuses
    are each a 422 with a one-line message, never a 500; nothing changes."""
    url, tok = hub["url"], hub["tokens"]["alice"]
    head = run_tvcfs("-C", _repo_path(hub, "model"), "log", "-n1", "--oneline").stdout
    refs = get_json(url, f"/api/repos/{ORG}/model/refs")[1]
    api = f"/api/models/{ORG}/model"
    nd = ndjson({"key": "header", "value": {"summary": "t"}})
    for method, path, body in [
            ("POST", f"/{ORG}/model.git/info/lfs/objects/batch", b"[1]"),
            ("POST", f"/{ORG}/model.git/info/lfs/objects/batch", b'{"objects": [{"oid": "%s", "size": true}]}' % (b"a" * 64)),
            ("POST", f"{api}/paths-info/main", b'{"paths": [1]}'),
            ("PUT", f"{api}/settings", b"3"),
            ("POST", f"{api}/branch/dev", b"[1]"),
            ("POST", f"{api}/branch/dev", b'{"startingPoint": 5}'),
            ("POST", f"{api}/branch/..", b"{}"),
            ("POST", f"{api}/branch/a%00b", b"{}"),
            ("POST", f"{api}/tag/main", b'{"tag": "../x"}'),
            ("POST", f"{api}/commit/..", nd),
            ("POST", f"{api}/commit/%00", nd)]:
        st, _, out = request(url, method, path, body, tok, {"Content-Type": "application/json"})
        assert st == 422 and "error" in json.loads(out), (method, path, body, st, out)
    assert run_tvcfs("-C", _repo_path(hub, "model"), "log", "-n1", "--oneline").stdout == head
    assert get_json(url, f"/api/repos/{ORG}/model/refs")[1] == refs
    assert get_json(url, f"/api/repos/{ORG}/model")[1]["private"] is False


def test_commits_that_would_drop_entries_or_lie_about_an_lfs_file_are_422(hub):
    """A commit is refused (422, nothing committed, the uploaded LFS object kept for a
    retry) when a path would silently replace another kind of entry (a file under an
    existing file, a file over an existing directory, ``d`` and ``d/f`` in one
    commit) or an ``lfsFile`` line states another size or hash algorithm than the
    object uploaded; deleting first in the same commit makes the replacement fine."""
    import hashlib

    url, tok = hub["url"], hub["tokens"]["alice"]
    assert get_json(url, "/api/repos", tok, "POST", {"namespace": ORG, "name": "clash"})[0] == 201
    commit = f"/api/models/{ORG}/clash/commit/main"
    hdr = {"key": "header", "value": {"summary": "c"}}

    def file(path):
        return {"key": "file", "value": {"path": path, "content": "eA==", "encoding": "base64"}}

    assert request(url, "POST", commit, ndjson(hdr, file("w.bin"), file("dir/a.txt")), tok)[0] == 200
    head = get_json(url, f"/api/repos/{ORG}/clash/refs")[1]["branches"]["main"]
    data = os.urandom(3000)
    oid = hashlib.sha256(data).hexdigest()
    st, batch = get_json(url, f"/{ORG}/clash.git/info/lfs/objects/batch", tok, "POST",
                         {"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]})
    assert request(url, "PUT", batch["objects"][0]["actions"]["upload"]["href"][len(url):], data)[0] == 200
    lfs = {"path": "big.bin", "algo": "sha256", "oid": oid, "size": len(data)}
    for lines, words in [((file("w.bin/sub"),), "w.bin is a file"),
                         ((file("dir"),), "dir is a directory"),
                         ((file("n/f"), file("n")), "n would be both a file and the directory of n/f"),
                         (({"key": "lfsFile", "value": dict(lfs, size=5)},), "is 3000 bytes, not the 5"),
                         (({"key": "lfsFile", "value": dict(lfs, algo="md5")},), "only algo 'sha256'")]:
        st, _, out = request(url, "POST", commit, ndjson(hdr, *lines), tok)
        assert st == 422 and words in json.loads(out)["error"], (lines, st, out)
    assert get_json(url, f"/api/repos/{ORG}/clash/refs")[1]["branches"]["main"] == head
    # replacing on purpose, and the LFS object (kept) with its true size
    st, _, out = request(url, "POST", commit, ndjson(hdr, {"key": "deletedFile", "value": {"path": "w.bin"}},
                                                     file("w.bin/sub"), {"key": "lfsFile", "value": lfs}), tok)
    assert st == 200, out
    ls = run_tvcfs("-C", _repo_path(hub, "clash"), "ls", "-r", "main").stdout.decode()
    assert "w.bin/sub" in ls and "dir/a.txt" in ls and "big.bin" in ls, ls
    assert request(url, "GET", f"/{ORG}/clash/resolve/main/big.bin")[2] == data


def test_streamed_body_over_the_limit_and_slow_clients(hub):
    tok = hub["tokens"]["alice"]
    head = run_tvcfs("-C", _repo_path(hub, "model"), "log", "-n1", "--oneline").stdout
    with running_hub(hub["root"], "--max-body", "1M", "--read-timeout", "2", "--keep-alive", "3") as url:
        # chunked (no Content-Length) and larger than the limit: 413, nothing committed
        import base64
        import http.client

        big = ndjson({"key": "header", "value": {"summary": "big"}},
                     {"key": "file", "value": {"path": "big.bin", "content": base64.b64encode(os.urandom(2 << 20)).decode(),
                                               "encoding": "base64"}})
        c = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
        c.request("POST", f"/api/models/{ORG}/model/commit/main", body=iter([big[i:i + 65536] for i in
                                                                              range(0, len(big), 65536)]),
                  headers={"Authorization": f"Bearer {tok}", "Transfer-Encoding": "chunked"}, encode_chunked=True)
        try:
            assert c.getresponse().status == 413
        except (ConnectionError, http.client.HTTPException):
            pass  # the server may close the connection while the client is still sending
        c.close()
        # slow-loris: a connection that sends half a request head and then nothing, or
        # dribbles a byte now and then, is closed by the timeouts (read, keep-alive)
        _assert_slow_loris_closed(int(url.rsplit(":", 1)[1]), b"GET /api/repos HTTP/1.1\r\nHost: x\r\n")
        assert request(url, "GET", "/api/repos")[0] == 200  # others are still served
    assert run_tvcfs("-C", _repo_path(hub, "model"), "log", "-n1", "--oneline").stdout == head
    assert os.listdir(os.path.join(hub["root"], "tmp")) == []


def _assert_slow_loris_closed(port: int, head: bytes) -> None:
    """A connection to ``port`` that sends ``head`` (half a request head) and then
    nothing, or dribbles a byte now and then, is closed within 10 s."""
    for dribble in (False, True):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(head)
        s.settimeout(0.5)
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 20 and not closed:
            try:
                closed = s.recv(4096) == b""
            except socket.timeout:
                if dribble:
                    try:
                        s.sendall(b"X")
                    except OSError:
                        closed = True
            except OSError:
                closed = True
        assert closed and time.monotonic() - t0 < 10, (dribble, time.monotonic() - t0)
        s.close()


def test_push_race_compare_and_swap(hub):
    url, tok = hub["url"], hub["tokens"]["alice"]
    assert get_json(url, "/api/repos", tok, "POST", {"namespace": ORG, "name": "race"})[0] == 201
    commit = f"/api/models/{ORG}/race/commit/main"

    def body(path, parent=None):
        hdr = {"summary": path, **({"parentCommit": parent} if parent else {})}
        return ndjson({"key": "header", "value": hdr},
                      {"key": "file", "value": {"path": path, "content": "eA==", "encoding": "base64"}})

    st, _, out = request(url, "POST", commit, body("base.txt"), tok)
    assert st == 200
    base = json.loads(out)["commitOid"]
    # two pushes from the same parent: one wins, the other gets 412 and nothing is lost
    st1, _, _ = request(url, "POST", commit, body("one.txt", base), tok)
    st2, _, out2 = request(url, "POST", commit, body("two.txt", base), tok)
    assert (st1, st2) == (200, 412) and "error" in json.loads(out2)
    # concurrent pushes without a parent are serialised: every file lands
    results = []

    def push(i):
        results.append(request(url, "POST", commit, body(f"c{i}.txt"), tok)[0])

    ts = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert results == [200] * 8
    ls = run_tvcfs("-C", _repo_path(hub, "race"), "ls", "main").stdout.decode()
    assert all(f"c{i}.txt" in ls for i in range(8)) and "one.txt" in ls and "two.txt" not in ls


def test_disconnect_mid_upload_leaves_nothing(hub):
    url, tok = hub["url"], hub["tokens"]["alice"]
    port = int(url.rsplit(":", 1)[1])
    head = run_tvcfs("-C", _repo_path(hub, "model"), "log", "-n1", "--oneline").stdout
    import base64

    body = ndjson({"key": "header", "value": {"summary": "half"}},
                  {"key": "file", "value": {"path": "half.bin", "content": base64.b64encode(os.urandom(1 << 20)).decode(),
                                            "encoding": "base64"}})
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((f"POST /api/models/{ORG}/model/commit/main HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
               f"Content-Type: application/x-ndjson\r\nContent-Length: {len(body)}\r\n\r\n").encode()
              + body[: len(body) // 2])
    time.sleep(0.5)  # the hub reads the half body (no signal to wait on), then the client vanishes
    s.close()
    # an LFS object cut off half-way is not kept either
    st, batch = get_json(url, f"/{ORG}/model.git/info/lfs/objects/batch", tok, "POST",
                         {"operation": "upload", "objects": [{"oid": "ab" * 32, "size": 1 << 20}]})
    href = batch["objects"][0]["actions"]["upload"]["href"]
    path = href[len(url):]
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 20}\r\n\r\n").encode() + b"x" * 1000)
    time.sleep(0.5)  # the hub starts the upload (no signal to wait on), then the client vanishes
    s.close()
    wait_until(lambda: os.listdir(os.path.join(hub["root"], "tmp")) == [], 30,
               what="the hub to remove the cut-off upload's temporary file")
    assert not os.path.exists(os.path.join(hub["root"], "uploads", ORG, "model", "ab" * 32))
    assert run_tvcfs("-C", _repo_path(hub, "model"), "log", "-n1", "--oneline").stdout == head
    # a forged or tampered upload URL is refused
    assert request(url, "PUT", path.replace("sig=", "sig=0"), b"x")[0] == 403


def test_many_concurrent_downloads(hub, real_model_dir):
    url = hub["url"]
    want = hashlib.sha256(open(os.path.join(real_model_dir, "model.safetensors"), "rb").read()).hexdigest()
    got = []

    def fetch():
        st, _, data = request(url, "GET", f"/{ORG}/model/resolve/v1/model.safetensors", timeout=300, follow=True)
        got.append((st, hashlib.sha256(data).hexdigest()))

    ts = [threading.Thread(target=fetch) for _ in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    assert got == [(200, want)] * 16


def test_systemd_unit_of_the_hub(tmp_path):
    """packaging/install.sh installs tvcfs-hub.service with the tvcfs path filled in;
    systemd-analyze accepts it (when available)."""
    import shutil
    import subprocess

    from support import REPO_ROOT
    from support.cli import tvcfs_executable

    dest = tmp_path / "root"
    r = subprocess.run(["sh", os.path.join(REPO_ROOT, "packaging", "install.sh"), "--destdir", str(dest),
                        "--tvcfs", tvcfs_executable()[0]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    unit = dest / "etc" / "systemd" / "system" / "tvcfs-hub.service"
    text = unit.read_text()
    start = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")][0]
    assert "@TVCFS@" not in text and " hub serve ${TVCFS_HUB_ROOT} --listen ${TVCFS_HUB_LISTEN}" in start
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
    r = subprocess.run(["sh", os.path.join(REPO_ROOT, "packaging", "install.sh"), "--destdir", str(dest),
                        "--uninstall"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not unit.exists()


@pytest.mark.fuse
def test_block_exchange_clone_push_and_lazy_mount_through_the_hub(hub, real_model_dir, tmp_path):
    """--transport-listen serves every repository's blocks from the hub's process:
    tvcfs clone / push / lazy mount of tvcfs://PEERID@HOST:PORT/ORG/NAME, pushes and
    private reads allowed by the peer IDs users registered."""
    from support.mount import lazy_mount, wait_peers_ready

    root = hub["root"]
    with running_hub(root, "--transport-listen", "127.0.0.1:0", lines=2) as (_, turl):
        url = f"{turl}{ORG}/model"
        clone = tmp_path / "clone"
        run_tvcfs("clone", "-q", url, clone)
        assert run_tvcfs("-C", clone, "cat", "v1:config.json").stdout == \
            open(os.path.join(real_model_dir, "config.json"), "rb").read()
        err = run_tvcfs("clone", "-q", f"{turl}{ORG}/nope", tmp_path / "nope", ok=False).stderr.decode()
        assert "no repository 'acme/nope'" in err
        # a private repository needs a registered peer ID with read access
        run_tvcfs("clone", "-q", f"{turl}{ORG}/secret", tmp_path / "s1", ok=False)
        peer = run_tvcfs("-C", clone, "id").stdout.decode().strip()
        run_tvcfs("hub", "user", "key", "bob", peer, "--root", root)
        (tmp_path / "work").mkdir()
        (tmp_path / "work" / "new.txt").write_text("pushed over QUIC\n")
        run_tvcfs("-C", clone, "commit", str(tmp_path / "work"), "-m", "from bob")
        p = run_tvcfs("-C", clone, "push", ok=False)
        assert b"unauthorised" in p.stderr and b"tvcfs hub user key USER " in p.stderr  # bob may read, not write
        run_tvcfs("hub", "user", "key", "bob", peer, "--remove", "--root", root)
        run_tvcfs("hub", "user", "key", "alice", peer, "--root", root)
        run_tvcfs("-C", clone, "push")
        assert run_tvcfs("-C", _repo_path(hub, "model"), "cat", "main:new.txt").stdout == b"pushed over QUIC\n"
        st, h, _ = request(hub["url"], "HEAD", f"/{ORG}/model/resolve/main/new.txt", follow=True)
        assert st == 200  # the HTTP side sees the push at once
        s2 = tmp_path / "s2"
        run_tvcfs("-C", clone, "remote", "add", "secret", f"{turl}{ORG}/secret")
        run_tvcfs("-C", clone, "fetch", "secret")  # alice's peer may read the private repository
        # lazy mount of a lazy clone: only what is read moves
        run_tvcfs("clone", "--lazy", "-q", url, s2)
        with lazy_mount(str(s2), str(tmp_path / "mnt"), "--fetch-timeout", 20) as m:
            wait_peers_ready(m)
            got = open(os.path.join(m, "tags", "v1", "config.json"), "rb").read()
        assert got == open(os.path.join(real_model_dir, "config.json"), "rb").read()


def _listening_pids(root_pid: int) -> list:
    """``root_pid`` and its descendant processes."""
    out, todo = [], [root_pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def _conn_owner(pids: list, local_port: int) -> int | None:
    """Which of ``pids`` holds the server end of the loopback TCP connection whose
    client port is ``local_port`` (``/proc/net/tcp`` inode → ``/proc/PID/fd``)."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if int(cols[2].split(":")[1], 16) == local_port and cols[3] == "01":  # remote = client, ESTABLISHED
                inodes.add(cols[9])
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return p
    return None


def test_workers_share_the_port_and_the_repositories(hub, real_model_dir):
    """--workers 2: two HTTP processes on one port (SO_REUSEPORT) each serve downloads
    and know the block exchange's URL (it runs in the first process only), a push
    through one is visible through the other at once, and the workers end with the
    first process (SIGTERM, or SIGKILL of the first: the kernel signals them)."""
    import http.client

    from support.cli import tvcfs_executable
    from support.server import ServerProcess

    root, tok = hub["root"], hub["tokens"]["alice"]
    want = open(os.path.join(real_model_dir, "config.json"), "rb").read()
    err = run_tvcfs("hub", "serve", root, "--workers", "0", ok=False).stderr.decode()
    assert err.startswith("tvcfs: error: --workers 0") and "Traceback" not in err
    with ServerProcess(tvcfs_executable() + ["hub", "serve", root, "--listen", "127.0.0.1:0", "--workers", "2",
                                             "--transport-listen", "127.0.0.1:0"], lines=2, name="hub-workers") as srv:
        url, turl = srv.lines
        port = int(url.rsplit(":", 1)[1])
        pids = _listening_pids(srv.pid)
        assert len(pids) == 2, pids
        # keep-alive connections until each worker holds at least one (the kernel
        # spreads new connections over the two sockets by their ports' hash)
        conns: dict = {}
        deadline = time.monotonic() + 60
        while set(conns) != set(pids):
            assert time.monotonic() < deadline, f"connections reached only {set(conns)} of {pids}"
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.connect()
            owner = wait_until(lambda: _conn_owner(pids, c.sock.getsockname()[1]), timeout=10)
            if owner in conns:
                c.close()
            else:
                conns[owner] = c

        def get(c, path, headers=None):
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()

        for c in conns.values():  # both serve downloads, both pages show the tvcfs:// URL
            assert get(c, f"/{ORG}/model/resolve/v1/config.json") == (200, want)
            st, page = get(c, f"/{ORG}/model")
            assert st == 200 and f"{turl.rstrip('/')}/{ORG}/model".encode() in page, page[:2000]
        a, b = conns[pids[0]], conns[pids[1]]
        body = ndjson({"key": "header", "value": {"summary": "through worker A"}},
                      {"key": "file", "value": {"path": "workers.txt", "content": "d29ya2Vycw==",
                                                "encoding": "base64"}})
        a.request("POST", f"/api/models/{ORG}/model/commit/main", body=body,
                  headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/x-ndjson"})
        r = a.getresponse()
        assert r.status == 200, r.read()
        r.read()
        assert get(b, f"/{ORG}/model/resolve/main/workers.txt") == (200, b"workers")
        for c in conns.values():
            c.close()
        srv.kill9()  # a crash of the first process ends the workers too
        wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and
                                   open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
                                   for p in pids[1:]), timeout=30)


# --------------------------------------------------------------------------- large files: the blob port
def _blob_stats(location: str) -> dict:
    import urllib.parse

    u = urllib.parse.urlsplit(location)
    return json.loads(request(f"{u.scheme}://{u.netloc}", "GET", "/stats")[2])


def _split(location: str) -> tuple:
    """``(base URL, path?query)`` of a blob URL."""
    import urllib.parse

    u = urllib.parse.urlsplit(location)
    return f"{u.scheme}://{u.netloc}", f"{u.path}?{u.query}"


def test_large_file_redirects_to_the_blob_port_sent_by_sendfile(hub, real_model_dir):
    """resolve of a large file: 302 with the metadata huggingface_hub reads and a
    signed blob URL; hf_hub_download follows it and gets identical bytes, sent by
    os.sendfile (the responder's counters); Range, 416, ETag on the blob URL; a
    tampered, expired or foreign token is 403."""
    from tvcfs.hub.blobs import BlobSigner

    whole = open(os.path.join(real_model_dir, "model.safetensors"), "rb").read()
    st, h, body = request(hub["url"], "HEAD", f"/{ORG}/model/resolve/v1/model.safetensors")
    assert st == 302 and body == b"", h
    assert int(h["x-linked-size"]) == len(whole) and h["x-linked-etag"] == h["etag"] and len(h["x-repo-commit"]) == 40
    loc = h["location"]
    assert "/blobs/" + h["etag"].strip('"') + "?" in loc and "sig=" in loc and "exp=" in loc
    before = _blob_stats(loc)
    out = run_py(f"""
from huggingface_hub import hf_hub_download
print(hf_hub_download("{ORG}/model", "model.safetensors", revision="v1"))
""", _env(hub, "bob"))
    assert open(out.strip().splitlines()[-1], "rb").read() == whole
    after = _blob_stats(loc)
    assert after["sendfile_bytes"] - before["sendfile_bytes"] >= len(whole), (before, after)
    assert after["aborted"] == before["aborted"]
    base, path = _split(loc)
    st, h2, part = request(base, "GET", path, headers={"Range": "bytes=1000-1999"})
    assert st == 206 and part == whole[1000:2000] and h2["content-range"] == f"bytes 1000-1999/{len(whole)}"
    assert h2["etag"] == h["etag"]
    st, h2, part = request(base, "GET", path, headers={"Range": "bytes=-10"})
    assert st == 206 and part == whole[-10:]
    assert request(base, "GET", path, headers={"Range": f"bytes={len(whole)}-"})[0] == 416
    assert request(base, "GET", path, headers={"If-None-Match": h["etag"]})[0] == 304
    # tampered signature, another repository, expired, missing: 403
    assert request(base, "GET", path[:-1] + ("0" if path[-1] != "0" else "1"))[0] == 403
    assert request(base, "GET", path.replace(f"repo={ORG}/model", f"repo={ORG}/secret"))[0] == 403
    cid = h["etag"].strip('"')
    from tvcfs.hub.core import Hub

    signer = BlobSigner(Hub.open(hub["root"]).sign)  # the hub's secret, read by this process
    old = signer.query(f"{ORG}/model", cid, ttl=-10)
    st, _, err = request(base, "GET", f"/blobs/{cid}?{old}")
    assert st == 403 and b"expired" in err
    ok = signer.query(f"{ORG}/model", cid, ttl=60)
    assert request(base, "GET", f"/blobs/{cid}?{ok}", headers={"Range": "bytes=0-9"})[2] == whole[:10]
    assert request(base, "GET", f"/blobs/{cid}")[0] == 403
    # keep-alive: two requests on one connection
    import http.client

    c = http.client.HTTPConnection(*base.split("//")[1].split(":"), timeout=60)
    try:
        for rng in ("bytes=0-99", "bytes=100-199"):
            c.request("GET", path, headers={"Range": rng})
            r = c.getresponse()
            lo = int(rng[6:].split("-")[0])
            assert (r.status, r.read()) == (206, whole[lo:lo + 100])
            # the body's snapshot stays open until the client's next request or the
            # connection's end: pages sent by sendfile may still sit unread in the
            # client's socket on loopback, and must not be reused meanwhile
            wait_until(lambda: _blob_stats(loc)["snapshots_held"] == 1, 10,
                       "one snapshot held by the idle keep-alive connection")
    finally:
        c.close()
    wait_until(lambda: _blob_stats(loc)["snapshots_held"] == 0, 10, "the snapshot released at the connection's end")


def test_blob_urls_of_a_private_repository(hub):
    """With --blob-threshold 1 every file redirects: a private repository's file is
    resolved only for users who may read it, and its blob URL needs the signature
    made for that file of that repository."""
    from support.server import ServerProcess
    from support.cli import tvcfs_executable

    tok = hub["tokens"]
    with ServerProcess(tvcfs_executable() + ["hub", "serve", hub["root"], "--listen", "127.0.0.1:0",
                                             "--blob-threshold", "1"], lines=1, name="hub-blob1") as srv:
        url = srv.lines[0]
        assert request(url, "HEAD", f"/{ORG}/secret/resolve/main/weights.txt")[0] == 401
        assert request(url, "HEAD", f"/{ORG}/secret/resolve/main/weights.txt", token=tok["bob"])[0] == 404
        st, h, _ = request(url, "HEAD", f"/{ORG}/secret/resolve/main/weights.txt", token=tok["alice"])
        assert st == 302
        base, path = _split(h["location"])
        st, _, got = request(base, "GET", path)
        assert (st, got) == (200, b"classified\n")
        blob = path.split("?")[0]
        assert request(base, "GET", blob)[0] == 403  # no token
        assert request(base, "GET", blob + "?repo=acme/secret&exp=9999999999&sig=" + "0" * 64)[0] == 403
        # a valid token of a public file does not open the private one
        st, h2, _ = request(url, "HEAD", f"/{ORG}/model/resolve/v1/config.json")
        assert st == 302
        _, public = _split(h2["location"])
        assert request(base, "GET", blob + "?" + public.split("?")[1])[0] == 403
        # through huggingface_hub with alice's token
        out = run_py(f"""
from huggingface_hub import hf_hub_download
print(open(hf_hub_download("{ORG}/secret", "weights.txt"), "rb").read().decode(), end="")
""", _env(hub, "alice"))
        assert out.endswith("classified\n")


def test_corrupted_leaf_ends_the_blob_connection(tmp_path):
    """A raw leaf whose bytes changed in data.mdb: the blob body stops before it (the
    client gets a short body and an error), never the wrong bytes."""
    import http.client

    from support.server import ServerProcess
    from support.cli import tvcfs_executable
    from tvcfs.dag import KIND_FILE
    from tvcfs.repo import Repo

    root = str(tmp_path / "root")
    run_tvcfs("hub", "init", root)
    run_tvcfs("hub", "repo", "create", "acme/bad", "--root", root)
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(12 << 20)
    (src / "big.bin").write_bytes(data)
    repo_dir = os.path.join(root, "repos", "acme", "bad")
    run_tvcfs("-C", repo_dir, "commit", str(src), "-m", "big")
    with Repo.open(repo_dir) as repo:
        e = repo.entry(repo.resolve("main"), "big.bin")
        assert e.kind == KIND_FILE
        idx = repo.file_index(e.cid)
        k = len(idx.leaves) // 2
        bad_start = idx.starts[k]
        mdb = os.path.join(repo.store.path, "data.mdb")
        with repo.store.view() as v:  # where the leaf's bytes sit in data.mdb
            _, at = repo.store.file_span(v.get(idx.leaves[k]))
    with open(mdb, "r+b") as f:
        f.seek(at + 1000)
        assert f.read(4096) == data[bad_start + 1000:bad_start + 5096]
        f.seek(at + 1000)
        f.write(bytes([data[bad_start + 1000] ^ 0xFF]))
    with ServerProcess(tvcfs_executable() + ["hub", "serve", root, "--listen", "127.0.0.1:0"],
                       lines=1, name="hub-corrupt") as srv:
        st, h, _ = request(srv.lines[0], "HEAD", "/acme/bad/resolve/main/big.bin")
        assert st == 302
        base, path = _split(h["location"])
        c = http.client.HTTPConnection(*base.split("//")[1].split(":"), timeout=60)
        got = bytearray()
        try:
            c.request("GET", path)
            r = c.getresponse()
            assert r.status == 200 and int(r.getheader("content-length")) == len(data)
            try:
                while True:
                    b = r.read(1 << 20)
                    if not b:
                        break
                    got += b
            except ConnectionError:
                pass
        finally:
            c.close()
        assert len(got) <= bad_start and bytes(got) == data[:len(got)]
        assert _blob_stats(h["location"])["aborted"] == 1


def test_inline_download_is_pinned_to_the_commit_it_started_from(tmp_path):
    """A file below the blob threshold whose download ends mid-stream (a leaf of it
    gone, as gc leaves it when its branch is deleted meanwhile): the body is short of
    its Content-Length (an error for the client, never a complete-looking file), and
    ``hf_hub_download``'s resume (a ``Range`` request to the URL its HEAD ended at)
    reads the same commit: the HEAD of ``resolve/BRANCH/PATH`` redirects (307, as the
    Hugging Face Hub does) to ``resolve/ALIAS/PATH``. Before, the resume asked
    ``resolve/main`` again, and a branch moved meanwhile to a file of the same size
    gave the tail of the new file after the head of the old one: a mixed file kept
    in the cache as the old one."""
    import http.client
    import subprocess
    import sys

    from support.cli import tvcfs_executable
    from support.server import ServerProcess, stop_process
    from tvcfs.hub.core import commit_alias
    from tvcfs.repo import Repo

    root = str(tmp_path / "root")
    run_tvcfs("hub", "init", root)
    run_tvcfs("hub", "repo", "create", "acme/mix", "--root", root)
    repo_dir = os.path.join(root, "repos", "acme", "mix")
    old, new = os.urandom(9 << 20), os.urandom(9 << 20)  # the same size: the size check passes
    for branch, data in (("main", old), ("next", new)):
        src = tmp_path / f"src-{branch}"
        src.mkdir()
        (src / "w.bin").write_bytes(data)
        (src / "sub dir").mkdir()
        (src / "sub dir" / "\u00e9 x.txt").write_bytes(b"hi\n")
        run_tvcfs("-C", repo_dir, "commit", str(src), "-b", branch, "-m", branch)
    with Repo.open(repo_dir) as repo:
        c1, c2 = repo.resolve("main"), repo.resolve("next")
        idx = repo.file_index(repo.entry(c1, "w.bin").cid)
        k = len(idx.leaves) - 2
        gone_at = idx.starts[k]
        with repo.store.write() as w:
            w.txn.delete(idx.leaves[k], db=w.db["blocks"])
    log = str(tmp_path / "hub.log")
    with ServerProcess(tvcfs_executable() + ["hub", "serve", root, "--listen", "127.0.0.1:0"],
                       lines=1, log_path=log, name="hub-pinned") as srv:
        url = srv.lines[0]
        # a plain GET: Content-Length announced, a prefix of the right bytes, then the
        # connection ends (http.client raises IncompleteRead)
        c = http.client.HTTPConnection(*url.split("//")[1].split(":"), timeout=60)
        try:
            c.request("GET", "/acme/mix/resolve/main/w.bin")
            r = c.getresponse()
            assert r.status == 200 and int(r.getheader("content-length")) == len(old)
            with pytest.raises(http.client.IncompleteRead) as ei:
                r.read()
            got = ei.value.partial
        finally:
            c.close()
        assert len(got) <= gone_at and got == old[:len(got)]
        # HEAD of a branch: a relative redirect to the commit (the hf client follows it)
        st, h, _ = request(url, "HEAD", "/acme/mix/resolve/main/w.bin")
        assert st == 307 and h["location"] == f"/acme/mix/resolve/{commit_alias(c1)}/w.bin", (st, h)
        assert h["x-repo-commit"] == commit_alias(c1) and int(h["x-linked-size"]) == len(old)
        st, h, body = request(url, "GET", "/acme/mix/resolve/main/w.bin", headers={"Range": "bytes=0-99"})
        assert (st, body) == (206, old[:100])  # a GET is served where it is asked
        st, h, _ = request(url, "HEAD", f"/acme/mix/resolve/{commit_alias(c1)}/w.bin")
        assert st == 200 and int(h["content-length"]) == len(old)  # a commit's URL: served
        st, h, body = request(url, "HEAD", "/acme/mix/resolve/next/sub%20dir/%C3%A9%20x.txt", follow=True)
        assert st == 200 and h["redirect"]["location"] == \
            f"/acme/mix/resolve/{commit_alias(c2)}/sub%20dir/%C3%A9%20x.txt" and h["content-length"] == "3"
        # hf_hub_download of main; main moves to a file of the same size after the
        # first attempt failed: the resumes read c1 (and fail), never c2
        cache = tmp_path / "hf-cache"
        code = ("from huggingface_hub import hf_hub_download\n"
                "try:\n"
                f"    p = hf_hub_download('acme/mix', 'w.bin', cache_dir={str(cache)!r})\n"
                "    print('DOWNLOADED', p)\n"
                "except Exception as e:\n"
                "    print('FAILED', type(e).__name__)\n")
        env = py_env(hf_env(url, str(tmp_path / "hf-home")))
        failures = open(log, "rb").read().count(b"not found")
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            wait_until(lambda: open(log, "rb").read().count(b"not found") > failures or proc.poll() is not None,
                       60, what="the download's first attempt to fail")
            with Repo.open(repo_dir) as repo:
                repo.update_ref("refs/heads/main", c2)
            out, err = proc.communicate(timeout=120)
        finally:
            stop_process(proc)
    out = out.decode()
    assert "FAILED" in out, (out, err.decode()[-2000:])
    kept = [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs if not f.endswith(".incomplete")]
    for p in kept:
        assert os.path.getsize(p) < 1 << 20, p  # no w.bin, whole or mixed, in the cache


def test_blob_port_timeouts(hub, real_model_dir):
    """The blob port closes slow-loris connections (--read-timeout for a request
    head, dribbled or not) and a client that stops reading a body."""
    size = os.path.getsize(os.path.join(real_model_dir, "model.safetensors"))
    with running_hub(hub["root"], "--read-timeout", "2", "--keep-alive", "3") as url:
        st, h, _ = request(url, "HEAD", f"/{ORG}/model/resolve/v1/model.safetensors")
        assert st == 302
        base, path = _split(h["location"])
        port = int(base.rsplit(":", 1)[1])
        _assert_slow_loris_closed(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(6)  # reads nothing: the server gives up after 2 s without progress
        s.settimeout(30)
        got = 0
        try:
            while True:
                b = s.recv(1 << 20)
                if not b:
                    break
                got += len(b)
        except ConnectionError:
            pass
        s.close()
        assert got < size
        assert request(base, "GET", path, headers={"Range": "bytes=0-9"})[0] == 206  # others are served


def test_blob_listen_in_use_is_a_one_line_error(hub):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        err = run_tvcfs("hub", "serve", hub["root"], "--listen", "127.0.0.1:0", "--blob-listen",
                        f"127.0.0.1:{port}", ok=False).stderr.decode()
    assert err.startswith(f"tvcfs: error: cannot listen on --blob-listen 127.0.0.1:{port}") and \
        "Traceback" not in err and err.count("\n") == 1, err
