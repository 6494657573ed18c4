#!/usr/bin/env python3
"""The hub's downloads against nginx serving the same bytes, loopback, one run.

    python scripts/bench/hub.py [--size-gib 1] [--workdir DIR] [--repeat 2] [--clients 16] [--hub-workers N]

1. Builds a ~1 GiB synthetic safetensors model (scripts/synth_model.py, f16), makes a
   hub in ``--workdir`` and commits it to ``bench/model`` (kept for re-runs).
2. Starts ``tvcfs hub serve`` (``--workers N`` with ``--hub-workers N``) and nginx (Debian package ``nginx``; a private config
   in the workdir: one worker per core, ``sendfile``, the same file under
   ``/bench/model/resolve/REV/…`` with the ``X-Repo-Commit`` header
   ``huggingface_hub`` requires, so the same client code runs against both).
3. Measures, each server in turn (alternating, ``--repeat`` times, medians):
   * ``hf_hub_download`` of the big file in a fresh process with ``HF_ENDPOINT`` at
     the server (fresh cache each run; the time of the call alone), MB/s;
   * ``--clients`` concurrent plain GETs of the big file (threads, 1 MiB reads,
     bytes discarded; the hub's 302 to its blob port followed), aggregate MB/s, and the CPU seconds per GB the server's
     processes spent meanwhile (user + system, from ``/proc``: less sensitive to
     the machine's load than MB/s);
   * time to first byte: a warm keep-alive connection, ``GET`` of ``config.json``
     and of the first 64 KiB of the big file, median of 30, milliseconds.
4. Prints every run, then the ratios hub / nginx (targets: >= 0.8 for both
   throughputs, TTFB <= 20 ms) and a JSON line.

The machine is shared: run it once, on a quiet machine if possible.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
MB = 1e6
REPO = "bench/model"
FILE = "model.safetensors"


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def prepare(work: str, size_gib: float) -> tuple:
    """``(hub root, model dir, commit alias)``; built once per workdir."""
    from tvcfs.hub.core import Hub, commit_alias

    root, model = os.path.join(work, "hub"), os.path.join(work, "model")
    if not os.path.exists(os.path.join(model, FILE)):
        synth = _load(os.path.join(ROOT, "scripts", "synth_model.py"), "synth_model")
        os.makedirs(model, exist_ok=True)
        synth.write_model(os.path.join(model, FILE), synth.plan_config(size_gib * (1 << 30) / 2), "f16", seed=0)
        with open(os.path.join(model, "config.json"), "w") as f:
            json.dump({"model_type": "llama", "synthetic": True}, f)
    hub = Hub.init(root)
    try:
        if hub.state.repo(REPO) is None:
            hub.create_repo(REPO)
            hub.repo(REPO).commit_dir(model, "main", message="synthetic model")
        alias = commit_alias(hub.repo(REPO).resolve("main"))
    finally:
        hub.close()
    return root, model, alias


def start_nginx(work: str, model: str, alias: str):
    """nginx on a free loopback port serving ``model`` as the hub would; returns
    ``(process, url)``."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        raise SystemExit("nginx is missing: apt-get install nginx (scripts/install.sh does)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prefix = os.path.join(work, "nginx")
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; keepalive_timeout 30;
  client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
  uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
  types {{ }} default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    location ~ ^/{REPO}/resolve/[^/]+/(.+)$ {{
      alias {model}/$1;
      add_header X-Repo-Commit {alias} always;
    }}
  }}
}}
""")
    proc = subprocess.Popen([exe, "-p", prefix, "-c", conf], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"nginx failed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    raise SystemExit("nginx did not start")


def child_download(url: str, home: str) -> dict:
    """In a fresh process: one ``hf_hub_download`` of the big file."""
    os.environ.update({"HF_ENDPOINT": url, "HF_HOME": home, "HF_HUB_DISABLE_TELEMETRY": "1",
                       "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    os.environ.pop("HF_HUB_OFFLINE", None)
    from huggingface_hub import hf_hub_download

    t0 = time.perf_counter()
    p = hf_hub_download(REPO, FILE)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "bytes": os.path.getsize(p)}


def hf_download(url: str, work: str) -> float:
    home = tempfile.mkdtemp(dir=work, prefix="hf-")
    try:
        out = subprocess.run([sys.executable, __file__, "--child", url, home], capture_output=True, text=True,
                             timeout=1800)
        if out.returncode:
            raise RuntimeError(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        return r["bytes"] / r["seconds"] / MB
    finally:
        shutil.rmtree(home, ignore_errors=True)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its descendants."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return total


def concurrent(url: str, clients: int, pid: int | None = None) -> tuple:
    """``(aggregate MB/s, server CPU seconds per GB)`` of ``clients`` simultaneous
    GETs of the big file; the CPU figure is of process ``pid`` and its children
    (``None`` without a ``pid``)."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    total = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def one():
        c = http.client.HTTPConnection(host, int(port), timeout=600)
        start.wait()
        c.request("GET", f"/{REPO}/resolve/main/{FILE}")
        r = c.getresponse()
        if r.status == 302:  # the hub's large files: the blob port (docs/hub.md)
            r.read()
            c.close()
            c, path = _follow(r.getheader("Location"))
            c.request("GET", path)
            r = c.getresponse()
        n = 0
        while True:
            b = r.read(1 << 20)
            if not b:
                break
            n += len(b)
        c.close()
        with lock:
            total[0] += n

    ts = [threading.Thread(target=one) for _ in range(clients)]
    for t in ts:
        t.start()
    c0 = tree_cpu(pid) if pid else None
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    cpu = (tree_cpu(pid) - c0) / (total[0] / 1e9) if pid else None
    return total[0] / dt / MB, cpu


def _follow(location: str) -> tuple:
    """``(connection, path?query)`` for an absolute redirect ``location``."""
    from urllib.parse import urlsplit

    u = urlsplit(location)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=600), f"{u.path}?{u.query}"


def ttfb(url: str, n: int = 30) -> dict:
    """Median milliseconds to the first body byte on a warm connection (a 302 to the
    hub's blob port is followed on a second warm connection: both counted)."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    blob = None
    out = {}
    for name, path, headers in (("small", f"/{REPO}/resolve/main/config.json", {}),
                                ("big-range", f"/{REPO}/resolve/main/{FILE}", {"Range": "bytes=0-65535"})):
        times = []
        for i in range(n + 2):
            t0 = time.perf_counter()
            c.request("GET", path, headers=headers)
            r = c.getresponse()
            if r.status == 302:
                r.read()
                if blob is None:
                    blob = _follow(r.getheader("Location"))[0]
                blob.request("GET", _follow(r.getheader("Location"))[1], headers=headers)
                r = blob.getresponse()
            r.read(1)
            dt = time.perf_counter() - t0
            r.read()
            if i >= 2:
                times.append(dt * 1000)
        out[name] = statistics.median(times)
    c.close()
    if blob is not None:
        blob.close()
    return out


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child_download(sys.argv[2], sys.argv[3])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "tvcfs-bench-hub"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--hub-workers", type=int, default=1, metavar="N",
                    help="tvcfs hub serve --workers N (HTTP processes; default 1)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    root, model, alias = prepare(args.workdir, args.size_gib)
    from support.cli import tvcfs_executable
    from support.server import ServerProcess, stop_process

    nginx, nurl = start_nginx(args.workdir, model, alias)
    res = {"hub": {"dl": [], "conc": [], "cpu": [], "ttfb": []},
           "nginx": {"dl": [], "conc": [], "cpu": [], "ttfb": []}}
    try:
        with ServerProcess(tvcfs_executable() + ["hub", "serve", root, "--listen", "127.0.0.1:0",
                                                 "--workers", str(args.hub_workers)],
                           log_path=os.path.join(args.workdir, "hub.log"), name="hub") as hub:
            hurl = hub.lines[0]
            for i in range(args.repeat):
                for name, url, pid in (("hub", hurl, hub.pid), ("nginx", nurl, nginx.pid)) if i % 2 == 0 else \
                        (("nginx", nurl, nginx.pid), ("hub", hurl, hub.pid)):
                    r = res[name]
                    r["dl"].append(hf_download(url, args.workdir))
                    rate, cpu = concurrent(url, args.clients, pid)
                    r["conc"].append(rate)
                    r["cpu"].append(cpu)
                    r["ttfb"].append(ttfb(url))
                    print(f"run {i + 1} {name:<5}: hf_hub_download {r['dl'][-1]:8.1f} MB/s   "
                          f"{args.clients} concurrent {rate:8.1f} MB/s ({cpu:.2f} server CPU-s/GB)   "
                          f"TTFB small {r['ttfb'][-1]['small']:.2f} ms, range {r['ttfb'][-1]['big-range']:.2f} ms   "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        stop_process(nginx)
    med = {k: {"dl": statistics.median(v["dl"]), "conc": statistics.median(v["conc"]),
               "cpu_per_gb": statistics.median(v["cpu"]),
               "ttfb_small": statistics.median(t["small"] for t in v["ttfb"]),
               "ttfb_range": statistics.median(t["big-range"] for t in v["ttfb"])} for k, v in res.items()}
    h, n = med["hub"], med["nginx"]
    print(f"hf_hub_download: hub {h['dl']:.1f} MB/s, nginx {n['dl']:.1f} MB/s, ratio {h['dl'] / n['dl']:.2f} "
          "(target >= 0.8)")
    print(f"{args.clients} concurrent: hub {h['conc']:.1f} MB/s, nginx {n['conc']:.1f} MB/s, "
          f"ratio {h['conc'] / n['conc']:.2f} (target >= 0.8); server CPU-s/GB hub {h['cpu_per_gb']:.2f}, "
          f"nginx {n['cpu_per_gb']:.2f} (hub workers: {args.hub_workers}; load {os.getloadavg()[0]:.1f})")
    print(f"TTFB: hub {h['ttfb_small']:.2f} ms (small), {h['ttfb_range']:.2f} ms (range); nginx "
          f"{n['ttfb_small']:.2f} / {n['ttfb_range']:.2f} ms (target <= 20 ms)")
    print(json.dumps({"median": med, "ratio_dl": h["dl"] / n["dl"], "ratio_conc": h["conc"] / n["conc"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
