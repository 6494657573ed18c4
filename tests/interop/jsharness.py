"""Run the independent JS IPFS stack (tests/interop/car_check.mjs) from Python.

    from jsharness import car_check, reimport, node_available
    report = car_check("export.car", path="model.safetensors", out=tmp / "x")
    assert report["ok"], report["errors"]

The JS packages are pinned in package.json / package-lock.json and installed
into tests/interop/node_modules on first use (`npm ci`), from the npm registry.
No tvcfs code is imported here: this is the outside view of our CAR files.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

INTEROP_DIR = Path(__file__).resolve().parent
SCRIPT = INTEROP_DIR / "car_check.mjs"
NODE_MODULES = INTEROP_DIR / "node_modules"
MIN_NODE_MAJOR = 20

__all__ = [
    "JSHarnessError",
    "NodeUnavailable",
    "node_available",
    "ensure_node_modules",
    "car_check",
    "reimport",
    "murmur",
    "selftest",
]


class JSHarnessError(RuntimeError):
    """The JS harness could not run or printed something unexpected."""


class NodeUnavailable(JSHarnessError):
    """node or npm is missing or too old (tests may skip on this)."""


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise NodeUnavailable(
            f"`{name}` not found on PATH: the interop checks need Node.js >= {MIN_NODE_MAJOR} "
            "with npm (Debian: apt-get install nodejs npm)"
        )
    return exe


def _node() -> str:
    node = _tool("node")
    try:
        v = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        major = int(v.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        raise NodeUnavailable(f"cannot run `{node} --version`: {e}") from e
    if major < MIN_NODE_MAJOR:
        raise NodeUnavailable(f"node {v} is too old: need >= {MIN_NODE_MAJOR}")
    return node


def node_available() -> bool:
    """True when node (>= 20) and npm are on PATH; does not install anything."""
    try:
        _node()
        _tool("npm")
    except NodeUnavailable:
        return False
    return True


def _installed() -> bool:
    deps = json.loads((INTEROP_DIR / "package.json").read_text())["dependencies"]
    for name, version in deps.items():
        pj = NODE_MODULES / name / "package.json"
        try:
            if json.loads(pj.read_text()).get("version") != version:
                return False
        except (OSError, ValueError):
            return False
    return True


def ensure_node_modules() -> Path:
    """Install the pinned JS packages into tests/interop/node_modules once.

    Uses `npm ci` (exactly package-lock.json). Safe to call from parallel test
    processes: a file lock serialises the install. Returns the node_modules path.
    """
    _node()
    if _installed():
        return NODE_MODULES
    npm = _tool("npm")
    with open(INTEROP_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():
            return NODE_MODULES
        has_lock = (INTEROP_DIR / "package-lock.json").exists()
        cmd = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund", "--no-progress"]
        env = dict(os.environ, npm_config_update_notifier="false")
        try:
            proc = subprocess.run(cmd, cwd=INTEROP_DIR, capture_output=True, text=True, timeout=900, env=env)
        except subprocess.TimeoutExpired as e:
            raise JSHarnessError(f"`{' '.join(cmd)}` timed out in {INTEROP_DIR}") from e
        if proc.returncode != 0 or not _installed():
            raise JSHarnessError(
                f"`{' '.join(cmd)}` failed in {INTEROP_DIR} (exit {proc.returncode}):\n"
                + (proc.stderr or proc.stdout)[-4000:]
            )
    return NODE_MODULES


def _run(args: list[str], timeout: float, ok_codes: tuple[int, ...]) -> dict:
    ensure_node_modules()
    cmd = [_node(), str(SCRIPT), *args]
    try:
        proc = subprocess.run(cmd, cwd=INTEROP_DIR, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise JSHarnessError(f"{' '.join(cmd)} timed out after {timeout}s") from e
    if proc.returncode not in ok_codes:
        raise JSHarnessError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        raise JSHarnessError(f"{' '.join(cmd)} printed no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}") from e


def car_check(
    car_path: str | os.PathLike,
    path: str | None = None,
    out: str | os.PathLike | None = None,
    *,
    content: bool = True,
    timeout: float = 600,
) -> dict:
    """Check a CAR v1 file with the JS stack; return the parsed report.

    Report keys: ok, errors, warnings, roots, blocks, unique_blocks, codecs,
    root {cid, codec, commit, tree, type}, files [{path, size, cid, type,
    sha256}], dirs, unreachable_blocks, and with `path`: export {path,
    ipfs_path, cid, type, size, sha256, out}. An invalid CAR is not an
    exception: look at report["ok"] / report["errors"].
    `content=False` skips reading every file (no sha256 then).
    """
    args = [str(Path(car_path).resolve())]
    if path is not None:
        args += ["--path", path]
    if out is not None:
        if path is None:
            raise ValueError("out needs path")
        args += ["--out", str(Path(out).resolve())]
    if not content:
        args.append("--no-content")
    return _run(args, timeout, ok_codes=(0, 1))


def reimport(
    src: str | os.PathLike,
    *,
    chunk_size: int = 1 << 20,
    max_children: int = 1024,
    car_out: str | os.PathLike | None = None,
    shard_threshold: int | None = None,
    cid_version: int = 1,
    raw_leaves: bool = True,
    timeout: float = 600,
) -> dict:
    """Import a file or directory with ipfs-unixfs-importer (CIDv1, raw leaves,
    balanced layout, fixed-size chunks) and return {root, entries, ...}.

    For a file of at most `chunk_size` bytes the root is its raw leaf CID,
    which tvcfs must reproduce whatever its chunker. A directory is wrapped:
    root is the directory CID, entries list every file and subdirectory.
    `shard_threshold` (bytes): HAMT-shard every directory whose node would be
    larger (the `unixfs-v1-2025` 'block-bytes' estimation). `cid_version=0,
    raw_leaves=False`: Kubo's default `ipfs add` layout (CIDv0, dag-pb leaves).
    """
    args = ["--reimport", str(Path(src).resolve()), "--chunk-size", str(chunk_size), "--max-children", str(max_children),
            "--cid-version", str(cid_version)]
    if car_out is not None:
        args += ["--car-out", str(Path(car_out).resolve())]
    if shard_threshold is not None:
        args += ["--shard-threshold", str(shard_threshold)]
    if not raw_leaves:
        args.append("--dag-pb-leaves")
    return _run(args, timeout, ok_codes=(0,))


def murmur(names: list[str], workdir: str | os.PathLike, timeout: float = 120) -> dict:
    """``{name: bytes}``: the 8-byte HAMT hash ipfs-unixfs-importer computes for each
    name (its ``hamtHashFn``: murmur3-x64-128's first 8 bytes, reversed; the trie is
    consumed from the last byte)."""
    p = Path(workdir) / "murmur-names.json"
    p.write_text(json.dumps(names))
    return {k: bytes.fromhex(v) for k, v in _run(["--murmur", str(p.resolve())], timeout, ok_codes=(0,)).items()}


def selftest(workdir: str | os.PathLike) -> dict:
    """Validate the harness with the JS stack alone: import a small tree
    (one file of several leaves) into a CAR with the JS importer, then check,
    list and export it with car_check. Returns the check report; raises
    AssertionError when anything disagrees."""
    work = Path(workdir)
    src = work / "src"
    (src / "sub").mkdir(parents=True, exist_ok=True)
    files = {
        "config.json": b'{"model_type": "toy"}\n',
        "model.bin": os.urandom(3 * (1 << 20) + 12345),
        "sub/tokenizer.txt": os.urandom(70_000),
        "sub/empty.bin": b"",
    }
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    car = work / "js.car"
    made = reimport(src, car_out=car)
    report = car_check(car)
    assert report["ok"], report["errors"]
    assert report["root"]["cid"] == made["root"], (report["root"], made["root"])
    listed = {f["path"]: f for f in report["files"]}
    assert sorted(listed) == sorted(files), sorted(listed)
    for rel, data in files.items():
        assert listed[rel]["size"] == len(data), (rel, listed[rel])
        out = work / "export.bin"
        ex = car_check(car, path=rel, out=out, content=False)
        assert ex["ok"], ex["errors"]
        assert out.read_bytes() == data, rel
    return report


if __name__ == "__main__":
    import sys
    import tempfile

    if sys.argv[1:] == ["--selftest"]:
        with tempfile.TemporaryDirectory() as d:
            r = selftest(d)
            print(json.dumps({"ok": r["ok"], "blocks": r["blocks"], "files": r["files"]}, indent=2))
    else:
        print(json.dumps(car_check(*sys.argv[1:2], *sys.argv[2:4]), indent=2))
