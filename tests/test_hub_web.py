"""The hub's web pages (docs/hub.md, "Web pages") in a real headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, driven by Selenium) against a real
``tvcfs hub serve`` on loopback holding the real model and a fine-tune of it: a
person's path list → repository → commits → commit → diff → file by clicking links,
the storage chart, the diff naming exactly the changed tensors, login to a private
repository, escaping of hostile names, long logs, and the API routes next to the
pages. Each page's screenshot is saved under the test's ``tmp_path/screenshots``
(and ``$TVCFS_SCREENSHOTS`` when set)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time

import pytest

from support.cli import run_tvcfs
from support.model import make_finetune
from support.safetensors import write_safetensors_raw
from support.hub import add_user, get_json, request
from support.server import running_hub

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000")
HOSTILE = "<img src=x onerror=alert(1)>"
LONG = 130  # commits of acme/long: three log pages


@pytest.fixture(scope="module")
def site(tmp_path_factory, real_model_dir):
    """A hub with alice and carol (members of acme) and bob (no rights); acme/model (public: an
    initial commit, the real model tagged v1, a fine-tune with commit metadata),
    acme/secret (private), acme/xss (hostile names and texts), acme/long (LONG
    commits); served for the module."""
    from tvcfs.repo import Author, Repo

    base = tmp_path_factory.mktemp("web")
    root = str(base / "root")
    run_tvcfs("hub", "init", root)
    tokens = {"alice": add_user(root, "alice", "--org", "acme"), "bob": add_user(root, "bob"),
              "carol": add_user(root, "carol", "--org", "acme")}
    for rid, extra in (("acme/model", ()), ("acme/secret", ("--private",)), ("acme/xss", ()), ("acme/long", ())):
        run_tvcfs("hub", "repo", "create", rid, "--root", root, *extra)
    repo_dir = lambda rid: os.path.join(root, "repos", rid)  # noqa: E731
    run_tvcfs("-C", repo_dir("acme/model"), "commit", real_model_dir, "-m", "the real model")
    run_tvcfs("-C", repo_dir("acme/model"), "tag", "v1")
    ft = make_finetune(real_model_dir, str(base / "ft"))
    run_tvcfs("-C", repo_dir("acme/model"), "commit", str(base / "ft"), "-m", "fine-tune: two tensors and an adapter",
              "--meta", "lr=0.001", "--meta", "dataset=nli")

    secret = base / "secret"
    secret.mkdir()
    (secret / "weights.txt").write_text("classified\n")
    run_tvcfs("-C", repo_dir("acme/secret"), "commit", str(secret), "-m", "secret weights")

    xss = base / "xss"
    (xss / HOSTILE).mkdir(parents=True)
    (xss / HOSTILE / f"{HOSTILE}.txt").write_text(f"<script>alert('file')</script> {HOSTILE}\n")
    (xss / "README.md").write_text(
        f"---\nlicense: \"<script>alert('front')</script>\"\ntags: [\"{HOSTILE}\"]\n---\n"
        f"# Card\n\n<script>alert('card')</script>\n\n{HOSTILE}\n\n[click](javascript:alert('link'))\n")
    import numpy as np

    write_safetensors_raw(str(xss / "w.safetensors"),
                          [(f"layers.0.{HOSTILE}", "F32", [2], np.zeros(2, np.float32).tobytes())],
                          metadata={"note": "<script>alert('meta')</script>"})
    run_tvcfs("-C", repo_dir("acme/xss"), "commit", str(xss), "-m", f"<script>alert('msg')</script> {HOSTILE}",
              "--author", f"{HOSTILE} <x@example.org>", "--meta", "k=<script>alert('m')</script>")

    start = int(time.time()) + 10  # after the initial commit
    with Repo.open(repo_dir("acme/long")) as r:  # LONG small commits, quickly
        for i in range(LONG):
            tree = r.add_path(_tiny_tree(base, i))
            r.commit_tree(tree, "main", f"step {i}", Author("trainer", "t@example.org"), timestamp=start + i,
                          metadata={"step": i})
    with running_hub(root) as url:
        yield {"root": root, "url": url, "tokens": tokens, "ft": ft, "base": base, "repo_dir": repo_dir}


def _tiny_tree(base, i: int) -> str:
    d = base / "tiny" / str(i)
    d.mkdir(parents=True)
    (d / "step.txt").write_text(f"{i}\n")
    (d / "same.txt").write_text("unchanged\n")
    return str(d)


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium (fresh profile, loopback only) driven through the system
    chromedriver; quit after the test whatever happens."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/install.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in CHROME_FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument("--proxy-server=direct://")
    opts.add_argument("--proxy-bypass-list=*")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Shots:
    """Saves full-page screenshots as ``NN-name.png`` under ``tmp_path/screenshots``
    and, when ``$TVCFS_SCREENSHOTS`` is set, there too."""

    def __init__(self, driver, tmp_path, test: str):
        self.driver, self.n = driver, 0
        self.dirs = [tmp_path / "screenshots"]
        if os.environ.get("TVCFS_SCREENSHOTS"):
            self.dirs.append(os.path.join(os.environ["TVCFS_SCREENSHOTS"], test))
        for d in self.dirs:
            os.makedirs(d, exist_ok=True)

    def __call__(self, name: str) -> None:
        self.n += 1
        d = self.driver
        h = d.execute_script("return document.querySelector('main').getBoundingClientRect().bottom + window.scrollY")
        d.set_window_size(1280, max(600, min(int(h) + 40, 6000)))
        png = d.get_screenshot_as_png()
        for dd in self.dirs:
            with open(os.path.join(dd, f"{self.n:02d}-{name}.png"), "wb") as f:
                f.write(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def _by(kind):
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def _all(d, css):
    return d.find_elements(_by("CSS_SELECTOR"), css)


def _one(d, css):
    return d.find_element(_by("CSS_SELECTOR"), css)


def _click(d, css: str, text: str | None = None) -> None:
    """Click the first element matching ``css`` (with link text ``text``) and wait for
    the next page to load."""
    els = [e for e in _all(d, css) if text is None or e.text.strip() == text]
    assert els, f"no {css} {text or ''} on {d.current_url}"
    old = _one(d, "html")
    els[0].click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            old.tag_name  # raises once the old document is gone
        except Exception:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"clicking {css} did not load a page")
    while d.execute_script("return document.readyState") != "complete":
        time.sleep(0.05)


def _no_alert(d) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        a = d.switch_to.alert
    except NoAlertPresentException:
        return
    text = a.text
    a.dismiss()
    raise AssertionError(f"a script ran: alert({text!r})")


def test_browse_list_repository_commits_diff_file(site, browser, tmp_path):
    """Clicking through list → repository → commits (chart: one bar per commit) →
    commit → diff (exactly the fine-tune's tensors) → file (tensor table: changed
    tensors new, the others shared; download link gives the file's bytes)."""
    d, url, ft = browser, site["url"], site["ft"]
    shot = Shots(d, tmp_path, "browse")
    d.get(url + "/")
    names = [e.text for e in _all(d, "a.repo-link")]
    assert names == ["acme/long", "acme/model", "acme/xss"]  # acme/secret is private
    shot("list")

    _click(d, "a.repo-link", "acme/model")
    assert d.current_url == f"{url}/acme/model"
    card = _one(d, "#model-card").text
    assert "all-MiniLM-L6-v2" in card
    front = dict((r.find_element(_by("TAG_NAME"), "th").text, r.find_element(_by("TAG_NAME"), "td").text)
                 for r in _all(d, "#front-matter tr"))
    assert front["license"] == "apache-2.0" and "sentence-transformers" in front["tags"]
    snippet = _one(d, "#snippet-hf").text
    assert f"HF_ENDPOINT={url}" in snippet and 'from_pretrained("acme/model")' in snippet
    files = {e.text for e in _all(d, "a.file-link")}
    assert {"model.safetensors", "config.json", "README.md"} <= files
    assert [e.text for e in _all(d, "a.dir-link")] == ["1_Pooling/"]
    assert [e.text for e in _all(d, "#tags a")][0] == "v1"
    shot("repository")

    _click(d, "#tab-commits")
    rows = _all(d, "tr.commit")
    assert [r.find_element(_by("CSS_SELECTOR"), "td:nth-child(2)").text.splitlines()[0] for r in rows] == [
        "fine-tune: two tensors and an adapter", "the real model", "initial commit"]
    bars = _all(d, "#storage-chart rect.bar")
    assert len(bars) == len(rows) == 3  # one bar per commit
    new = [int(e.get_attribute("data-bytes")) for e in _all(d, "td.new-bytes")]
    # the fine-tune stored its two changed tensors, the adapter, the header and a few nodes
    assert ft.changed_bytes + ft.added_bytes <= new[0] < ft.changed_bytes + ft.added_bytes + ft.header_bytes + 64 * 1024
    assert new[1] > 80 * 2 ** 20
    assert [int(b.get_attribute("data-new")) for b in bars] == new[::-1]  # oldest on the left
    assert "lr = 0.001" in rows[0].text and "dataset = nli" in rows[0].text
    assert new[0] == _independent_new_bytes(site, "acme/model", "main")
    shot("commits")

    _click(d, "a.commit-link")  # the newest: the fine-tune
    assert "fine-tune" in _one(d, "#commit-info").text
    assert _one(d, "#bytes-new").text.startswith("2.9 MiB")
    shot("commit")

    _click(d, "#compare-link")
    assert "/compare/" in d.current_url and "..." in d.current_url
    changed = {e.text for e in _all(d, "td.tensor-name")}
    assert changed == set(ft.changed) | {ft.added}  # exactly the changed tensors
    status = {r.find_element(_by("CSS_SELECTOR"), "td.tensor-name").text: r.get_attribute("data-status")
              for r in _all(d, "tr.tensor-change")}
    assert status == {**{n: "modified" for n in ft.changed}, ft.added: "added"}
    cells = _all(d, ".heatmap rect.cell")
    assert len(cells) == ft.n_tensors
    moved = {c.get_attribute("data-tensor") for c in cells if "unchanged" not in c.get_attribute("class")}
    assert moved == changed
    # the heat map puts encoder.layer.2.attention.self.query.weight in the row of layer 2
    rows_text = [t.text for t in _all(d, ".heatmap text.row")]
    assert rows_text[:6] == [f"layer {i}" for i in range(6)]
    shot("compare")

    _click(d, "a.diff-file-link", "model.safetensors")
    assert "/blob/" in d.current_url
    table = {r.find_elements(_by("TAG_NAME"), "td")[0].text: r.find_element(_by("CSS_SELECTOR"), "td.state").text
             for r in _all(d, "tr.tensor")}
    assert len(table) == ft.n_tensors
    assert {n for n, s in table.items() if s != "shared"} == changed
    meta = {r.find_element(_by("TAG_NAME"), "th").text for r in _all(d, "#header-metadata tr")}
    assert "format" in meta
    href = _one(d, "#download").get_attribute("href")
    shot("file")
    st, _, body = request(url, path=href[len(url):], follow=True)  # large: 302 to the blob port
    assert st == 200 and hashlib.sha256(body).digest() == hashlib.sha256(open(ft.path, "rb").read()).digest()

    d.get(url + "/acme/model/blob/v1/config.json")
    assert '"hidden_size": 384' in _one(d, "#file-text").text
    shot("text-file")
    d.get(url + "/?q=LON")
    assert [e.text for e in _all(d, "a.repo-link")] == ["acme/long"]


def _independent_new_bytes(site, repo_id: str, rev: str) -> int:
    """Bytes of blocks under ``rev``'s tree not under its first parent's tree, by a
    full walk of both (tvcfs.dag.walk_dag, reading every block)."""
    from tvcfs.dag import walk_dag
    from tvcfs.repo import Repo

    with Repo.open(site["repo_dir"](repo_id)) as r:
        c = r.resolve(rev)
        com = r.read_commit(c)
        parent_tree = r.read_commit(com.parents[0]).tree
        theirs = {cid for cid, _ in walk_dag(r.get, parent_tree)}
        return sum(len(b) for cid, b in walk_dag(r.get, com.tree) if cid not in theirs)


def test_private_repository_needs_login(site, browser, tmp_path):
    """A private repository is not listed and answers "log in" without a session;
    logging in through the form (a wrong token refused) shows it, its files download
    with the session, the cookie is HttpOnly and SameSite=Lax; logout ends it; a user
    without rights gets 404."""
    d, url = browser, site["url"]
    shot = Shots(d, tmp_path, "login")
    d.get(url + "/acme/secret")
    assert "private" in _one(d, "#error").text
    shot("private-anonymous")
    _click(d, "#login-to-see")
    _one(d, "#token").send_keys("tvcfs_not-a-token")
    _click(d, "#login-submit")
    assert "not valid" in _one(d, "#error").text
    shot("login-refused")
    _one(d, "#token").send_keys(site["tokens"]["alice"])
    _click(d, "#login-submit")
    assert d.current_url == f"{url}/acme/secret"
    assert [e.text for e in _all(d, "a.file-link")] == ["weights.txt"]
    shot("private-logged-in")
    cookie = next(c for c in d.get_cookies() if c["name"] == "tvcfs_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert site["tokens"]["alice"] not in cookie["value"]
    d.get(url + "/")
    assert "acme/secret" in [e.text for e in _all(d, "a.repo-link")]
    d.get(url + "/acme/secret/blob/main/weights.txt")
    assert _one(d, "#file-text").text == "classified"
    d.get(_one(d, "#download").get_attribute("href"))  # the session downloads too
    assert "classified" in d.page_source
    d.get(url + "/")
    _click(d, "#logout")
    d.get(url + "/acme/secret")
    assert _all(d, "#login-to-see")
    d.get(url + "/")
    assert "acme/secret" not in [e.text for e in _all(d, "a.repo-link")]
    # a session cookie is not a token for the API's writes, and a stale id counts for nothing
    st, _, _ = request(url, path="/acme/secret", headers={"Cookie": f"tvcfs_session={cookie['value']}"})
    assert st == 401
    # bob may not read it: 404, as the API
    st, _, body = request(url, path="/acme/secret", token=site["tokens"]["bob"])
    assert st == 404 and b"not found" in body


def test_hostile_names_are_escaped(site, browser, tmp_path):
    """File names, commit message, author, metadata, model card, front matter and
    safetensors names from a repository are shown as text: no script runs."""
    from urllib.parse import quote

    d, url = browser, site["url"]
    shot = Shots(d, tmp_path, "xss")
    pages = ["/", "/acme/xss", f"/acme/xss/tree/main/{quote(HOSTILE, safe='')}",
             f"/acme/xss/blob/main/{quote(HOSTILE, safe='')}/{quote(HOSTILE + '.txt', safe='')}",
             "/acme/xss/commits/main", "/acme/xss/blob/main/w.safetensors"]
    for i, p in enumerate(pages):
        d.get(url + p)
        _no_alert(d)
        assert not _all(d, "script") and not _all(d, "main img")
        st, headers, body = request(url, path=p)
        assert st == 200, p
        assert b"<script" not in body and b"<img src=x" not in body
        assert "default-src 'none'" in headers["content-security-policy"]
        shot(f"page{i}")
    d.get(url + "/acme/xss")
    assert "<script>alert('card')</script>" in _one(d, "#model-card").text
    assert not _all(d, "#model-card a[href^='javascript']")
    assert "<script>alert('front')</script>" in _one(d, "#front-matter").text
    d.get(url + "/acme/xss/commits/main")
    assert HOSTILE in _one(d, "tr.commit").text
    _click(d, "a.commit-link")
    _no_alert(d)
    assert HOSTILE in _one(d, "#commit-info").text
    d.get(url + "/acme/xss/blob/main/w.safetensors")
    assert f"layers.0.{HOSTILE}" in _one(d, "#tensors").text
    assert "<script>alert('meta')</script>" in _one(d, "#header-metadata").text


def test_long_log_pages_and_api_routes_beside_the_pages(site):
    """A long log comes in pages of 50 (and a chart of one bar per commit of the
    page); page numbers past the end are 404; the Hugging Face and REST routes keep
    answering JSON and files beside the pages; unknown revisions and paths are HTML 404s."""
    url = site["url"]
    seen = []
    for p in (1, 2, 3):
        st, headers, body = request(url, path=f"/acme/long/commits/main?p={p}")
        assert st == 200 and headers["content-type"].startswith("text/html")
        assert float(headers["server-timing"].split("dur=")[1]) < 2000
        html = body.decode()
        n = html.count('<tr class="commit">')
        assert n == html.count('<rect class="bar"') == (50 if p < 3 else LONG + 1 - 100)
        seen += [line.split("step ")[1].split("<")[0] for line in html.splitlines() if "<td>step " in line]
    assert seen == [str(i) for i in reversed(range(LONG))]
    assert request(url, path="/acme/long/commits/main?p=4")[0] == 404
    assert request(url, path="/acme/long/commits/main?p=x")[0] == 422
    # the API and the Hugging Face routes are unchanged by the pages
    st, info = get_json(url, "/api/models/acme/model")
    assert st == 200 and info["id"] == "acme/model"
    st, headers, body = request(url, path="/acme/model/resolve/main/config.json")
    assert st == 200 and headers["content-type"] == "application/octet-stream" and b"hidden_size" in body
    st, _ = get_json(url, "/api/repos/acme/model/diff/v1/main")
    assert st == 200
    for bad in ("/acme/model/tree/nope", "/acme/model/blob/main/missing.bin", "/acme/nothing",
                "/acme/model/compare/v1", "/acme/model/commit/bafyreinotacid"):
        st, headers, body = request(url, path=bad)
        assert st in (404, 422) and headers["content-type"].startswith("text/html"), bad
    st, _, _ = request(url, path="/api/nothing")
    assert st == 404
    # login and logout refuse forms posted from another site
    st, _, _ = request(url, "POST", "/login", body=f"token={site['tokens']['alice']}".encode(),
                       headers={"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"})
    assert st == 403


def test_session_ends_when_its_token_is_revoked(site):
    """A session keeps the token's hash, not the token: revoking the user's tokens
    (tvcfs hub user revoke) ends the session at the next request."""
    url = site["url"]
    form = lambda tok: {"body": f"token={tok}&next=/acme/secret".encode(),  # noqa: E731
                        "headers": {"Content-Type": "application/x-www-form-urlencoded"}}
    st, headers, _ = request(url, "POST", "/login", **form(site["tokens"]["carol"]))
    assert st == 303 and headers["location"] == "/acme/secret"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax") and site["tokens"]["carol"] not in cookie
    sid = cookie.split(";")[0]
    assert request(url, path="/acme/secret", headers={"Cookie": sid})[0] == 200
    assert request(url, path="/acme/secret/resolve/main/weights.txt", headers={"Cookie": sid})[2] == b"classified\n"
    # the cookie is no credential for writes
    st, _, _ = request(url, "POST", "/api/repos", body=b'{"name": "x"}', headers={"Cookie": sid})
    assert st == 401
    run_tvcfs("hub", "user", "revoke", "carol", "--root", site["root"])
    assert request(url, path="/acme/secret", headers={"Cookie": sid})[0] == 401
    # a next= that leaves the hub is ignored
    st, headers, _ = request(url, "POST", "/login", body=f"token={site['tokens']['alice']}&next=//evil.example/".encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 303 and headers["location"] == "/"


def test_clone_and_mount_snippets_name_the_block_exchange(site):
    """With --transport-listen, the repository page's snippets carry the hub's
    tvcfs://PEERID@HOST:PORT/ORG/NAME."""
    with running_hub(site["root"], "--transport-listen", "127.0.0.1:0", lines=2,
                     log=str(site["base"] / "hub-transport.log")) as (url, turl):
        st, _, body = request(url, path="/acme/model")
        assert st == 200
        assert f"tvcfs clone {turl.rstrip('/')}/acme/model model" in body.decode()
        assert f"tvcfs clone --lazy {turl.rstrip('/')}/acme/model" in body.decode()


@pytest.mark.parametrize("name,parsed", [
    ("encoder.layer.3.attention.self.query.weight", ("encoder", 3, "attention.self.query.weight")),
    ("model.layers.7.mlp.down_proj.weight", ("model", 7, "mlp.down_proj.weight")),
    ("transformer.h.11.attn.c_attn.bias", ("transformer", 11, "attn.c_attn.bias")),
    ("layers.0.w", ("", 0, "w")),
    ("embeddings.word_embeddings.weight", (None, None, "embeddings.word_embeddings.weight")),
    ("lm_head.weight", (None, None, "lm_head.weight")),
])
def test_heat_map_rows_and_columns_from_tensor_names(name, parsed):
    from tvcfs.hub.web.charts import parse_tensor_name

    assert parse_tensor_name(name) == parsed


def test_commit_and_file_pages_report_stored_bytes_raw_and_encoded(site, tmp_path):
    """A packed fine-tune's commit page gives the bytes it stored, raw and encoded, and
    its file page the same per tensor — the figures `tvcfs show` prints (the same
    function, tvcfs.pack.commit_storage / tensor_storage)."""
    import json
    import re

    from support.model import model_pair

    root, url = site["root"], site["url"]
    rid = "acme/packed"
    run_tvcfs("hub", "repo", "create", rid, "--root", root)
    d = site["repo_dir"](rid)
    base_dir, ft_dir = model_pair(str(tmp_path / "m"), ("F32", "BF16"), n_elems=300_001)
    run_tvcfs("-C", d, "commit", base_dir, "-m", "base")
    run_tvcfs("-C", d, "commit", ft_dir, "-m", "fine-tune")
    run_tvcfs("-C", d, "pack", "--keep-hot", "0")
    show = json.loads(run_tvcfs("-C", d, "show", "--json", "main").stdout)
    st = show["storage"]
    assert st["new_stored"] < 0.6 * st["new_raw"]  # packed: deltas on the base

    status, _, body = request(url, path=f"/{rid}/commit/{show['commit']}")
    assert status == 200, body[:300]
    html = body.decode()
    cell = re.search(r'id="bytes-stored" ([^>]*)>', html).group(1)
    attrs = {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(\d+)"', cell)}
    assert attrs == {"new-raw": st["new_raw"], "new-stored": st["new_stored"], "raw": st["raw"],
                     "stored": st["stored"]}
    files = {p: (int(a), int(b)) for p, a, b in
             re.findall(r'class="storage-file" data-path="([^"]+)" data-new-raw="(\d+)" data-new-stored="(\d+)"', html)}
    assert files == {f["path"]: (f["new_raw"], f["new_stored"]) for f in st["files"]}

    tensors = json.loads(run_tvcfs("-C", d, "show", "--json", "main:model.safetensors").stdout)["tensors"]
    status, _, body = request(url, path=f"/{rid}/blob/main/model.safetensors")
    assert status == 200
    rows = re.findall(r'class="tensor" data-raw="(\d+)" data-stored="(\d+)"><td class="mono">([^<]+)<',
                      body.decode())
    assert {n: int(s) for _, s, n in rows} == {t["name"]: t["stored"] for t in tensors}
    assert all(int(s) < int(r) for r, s, _ in rows)
