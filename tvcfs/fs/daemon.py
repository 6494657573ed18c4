"""Running a mount: the trio main loop, signals, ref watching, background start.

``tvcfs mount REPO MNT`` starts ``tvcfs mount -f`` as a detached process (new
session, log in ``REPO/.tvcfs/mount.log`` and, where ``/dev/log`` exists, the
system log) and returns once the mount is live; ``-f`` runs the loop in the
foreground, logging to stderr. SIGINT/SIGTERM unmount cleanly; so does
``tvcfs unmount MNT`` / ``fusermount3 -u MNT``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time

log = logging.getLogger("tvcfs.fs")

REFS_POLL = 0.25  # seconds between checks for ref changes (CLI commits, other mounts)
STOP_GRACE = 2.0  # seconds a signalled mount waits for requests being answered (run_foreground)


def _pidfile(control: str, mountpoint: str) -> str:
    h = hashlib.sha256(mount_path(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(control, "mounts", f"{h}.pid")


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_table() -> list:
    """``[(source, mountpoint)]`` from ``/proc/mounts`` (escapes decoded); reading it
    never touches a mount, so it cannot block on a hung one."""
    try:
        with open("/proc/mounts") as f:
            return [(_unescape(p[0]), _unescape(p[1])) for p in (ln.split() for ln in f) if len(p) > 1]
    except OSError:
        return []


def _mounted_paths() -> set:
    return {mnt for _, mnt in mount_table()}


def find_tvcfs_mount(path: str):
    """``(repo_root, mountpoint, relative path)`` of the tvcfs mount holding ``path``
    (the innermost one), or ``None``. Sources are ``tvcfs:REPO_ROOT``."""
    real = mount_path(path)
    best = None
    for src, mnt in mount_table():
        if src.startswith("tvcfs:") and (real == mnt or real.startswith(mnt.rstrip("/") + "/")):
            if best is None or len(mnt) > len(best[1]):
                best = (src[len("tvcfs:"):], mnt)
    if best is None:
        return None
    return best[0], best[1], os.path.relpath(real, best[1])


def branch_in_mount(path: str):
    """``(repo_root, branch)`` if ``path`` lies in a tvcfs mount: ``branch`` is ``NAME``
    for ``MOUNT/branches/NAME[/...]`` and ``None`` elsewhere in the mount. ``None``
    if ``path`` is not in a tvcfs mount."""
    found = find_tvcfs_mount(path)
    if found is None:
        return None
    parts = found[2].split(os.sep)
    return found[0], (parts[1] if len(parts) > 1 and parts[0] == "branches" else None)


def prefetch(path: str, wait: bool = False) -> int:
    """Ask the mount holding ``path`` to load the file or tree at lowest priority: the
    path is written to ``MOUNT/.tvcfs/prefetch`` (the mount schedules every leaf below
    it, local leaves through the kernel's readahead, remote ones at background
    priority). ``wait``: then read everything, so it is local when this returns.
    Returns the bytes read (0 without ``wait``). Raises :class:`TvcfsError` if
    ``path`` is not in a tvcfs mount, ``OSError`` for a failed read."""
    from ..errors import TvcfsError

    found = find_tvcfs_mount(path)
    if found is None:
        raise TvcfsError(f"{path} is not inside a tvcfs mount")
    _, mountpoint, rel = found
    with open(os.path.join(mountpoint, ".tvcfs", "prefetch"), "w") as f:
        f.write(("" if rel == "." else rel) + "\n")
    if not wait:
        return 0
    total = 0
    files = [path] if not os.path.isdir(path) else [os.path.join(d, n) for d, _, ns in os.walk(path) for n in ns]
    for file_path in files:
        if os.path.islink(file_path):
            continue
        with open(file_path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total


def mount_stats(mountpoint: str) -> dict:
    """A mount's counters (``MOUNT/.tvcfs/stats``, a JSON object): bytes served and
    read from the store, readahead, and for lazy mounts bytes fetched per priority
    class and per peer, cache hits and pending wants. Raises :class:`TvcfsError` if
    ``mountpoint`` is not a tvcfs mount."""
    import json

    from ..errors import TvcfsError
    from ..names import printable_name

    try:
        with open(os.path.join(mountpoint, ".tvcfs", "stats")) as f:
            return json.load(f)
    except OSError as e:
        raise TvcfsError(f"{printable_name(mountpoint)} is not a tvcfs mount ({e.strerror}): "
                         "give the directory `tvcfs mount` mounted") from None


def prepare_mount(source: str, mountpoint: str, quiet: bool = False) -> str:
    """Check that ``mountpoint`` can take a mount of ``source`` and return the root of
    the repository to serve: ``source`` itself (a repository path), or for a
    ``tvcfs://`` or ``s3://BUCKET/PREFIX`` URL a lazy clone in the cache (made or
    refreshed; leaves fetched on demand). Raises :class:`TvcfsError` for a source that
    is neither, a mount point that is not a directory or is already mounted, a
    repository whose store or configuration does not read (its refs, HEAD, settings:
    :class:`~tvcfs.store.lmdb_store.StoreDamaged`, :class:`~tvcfs.config.ConfigError`)."""
    from ..errors import TvcfsError
    from ..repo import find_repo_root

    is_url = "://" in source
    repo_root = find_repo_root(source) if os.path.isdir(source) else None
    if repo_root is None and not is_url:
        raise TvcfsError(f"not a tvcfs repository: {source}")
    if not os.path.isdir(mountpoint):
        raise TvcfsError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise TvcfsError(f"{mountpoint} is already mounted")
    if source.startswith("s3://"):
        from .s3source import prepare_s3_mount

        return prepare_s3_mount(source, quiet=quiet)
    if is_url:
        from ..sync import prepare_url_mount

        return prepare_url_mount(source, quiet=False)
    from ..repo import Repo

    # what the mount reads first (settings, refs, their commits): a store LMDB cannot
    # read, or a damaged setting, is one line here rather than a mount answering EIO
    with Repo.open(repo_root) as repo:
        repo.config.get("lazy")
        for cid in set(repo.refs().values()):
            try:
                repo.get(cid)
            except TvcfsError:  # a missing or damaged block: the mount names it where it is read
                pass
    return repo_root


def mount_in_background(repo_root: str, mountpoint: str, options=None, timeout: float = 30.0) -> int:
    """Start a detached mount process of the repository at ``repo_root`` on
    ``mountpoint`` (``tvcfs mount -f`` with ``options``: parsed arguments or a dict
    of :data:`tvcfs.fs.options.MOUNT_OPTIONS` values; its log goes to
    ``REPO/.tvcfs/mount.log`` and the system log) and wait until the mount is live.
    Returns the process ID. Raises :class:`TvcfsError` with the log's tail if the mount
    does not come up within ``timeout`` seconds."""
    import sys

    from ..errors import TvcfsError
    from .options import command_line

    argv = [sys.executable, "-P", "-m", "tvcfs.cli", "mount", "-f", repo_root, os.path.abspath(mountpoint),
            *command_line({**_as_dict(options), "syslog": True})]
    try:
        return start_background(argv, os.path.join(repo_root, ".tvcfs"), mountpoint, timeout)
    except RuntimeError as e:
        raise TvcfsError(str(e)) from None


def _as_dict(options) -> dict:
    if options is None:
        return {}
    return dict(options) if isinstance(options, dict) else dict(vars(options))


def repo_mounts(repo_root: str) -> list:
    """``[(mountpoint, pid | None)]`` of the live tvcfs mounts of the repository at
    ``repo_root`` (from ``/proc/mounts``, never touching the mounts; ``pid`` from the
    mount's pid file, ``None`` if unknown)."""
    real = os.path.realpath(repo_root)
    out = []
    for src, mnt in mount_table():
        if src.startswith("tvcfs:") and os.path.realpath(src[len("tvcfs:"):]) == real:
            out.append((mnt, _mount_pid(real, mnt)))
    return out


def _mount_pid(repo_root: str, mountpoint: str) -> int | None:
    """The pid in the pid file of the mount of ``repo_root`` on ``mountpoint``, or
    ``None`` (no file, unreadable)."""
    try:
        with open(_pidfile(os.path.join(repo_root, ".tvcfs"), mountpoint)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def mount_path(mountpoint: str) -> str:
    """``mountpoint`` as ``/proc/mounts`` shows it, found without stat-ing the
    mountpoint itself (``os.path.realpath`` would, and a stat blocks on a hung FUSE
    mount): its parent's real path plus its name; a symlink (never itself a mount
    point, so ``lstat`` of it is safe) is followed."""
    a = os.path.abspath(mountpoint)
    cand = os.path.join(os.path.realpath(os.path.dirname(a)), os.path.basename(a))
    if cand not in _mounted_paths() and os.path.islink(cand):
        return os.path.realpath(cand)
    return cand


def set_readahead(mountpoint: str, kb: int = 1024) -> bool:
    """Raise the mount's bdi ``read_ahead_kb`` so buffered reads reach the filesystem
    as 1 MiB requests instead of 128 KiB (docs/architecture.md, measured facts). Needs root; returns success."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(kb))
        return True
    except OSError as e:
        log.info("could not raise read_ahead_kb: %s", e)
        return False


def _log_to_syslog(level: int) -> bool:
    """Also send the log to the system log (journal) through ``/dev/log``, as
    ``tvcfs[PID]``. Returns False when there is no ``/dev/log`` (the log then only
    goes to stderr, i.e. ``REPO/.tvcfs/mount.log`` for a background mount)."""
    import logging.handlers

    if not os.path.exists("/dev/log"):
        return False
    try:
        h = logging.handlers.SysLogHandler(address="/dev/log")
    except OSError as e:
        log.info("no system log (%s): logging to %s only", e, "stderr")
        return False
    h.setLevel(level)
    h.setFormatter(logging.Formatter(f"tvcfs[{os.getpid()}]: %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(h)
    return True


def _warm_decoders(store) -> None:
    """When ``store`` holds packed blocks, import their decoders before the mount
    serves (:func:`tvcfs.store.encodings.warm`): not on the first read, where it
    stalled every reader; and make the arena leaves are decoded into
    (:meth:`~tvcfs.store.lmdb_store.DecodedCache.warm`: ~10 ms of the first
    request's wait). docs/performance.md "Packed blocks"."""
    stat = getattr(store, "stat", None)
    if stat is not None and stat().get("packed"):
        from ..store import encodings

        encodings.warm()
        decoded = getattr(store, "decoded", None)
        if decoded is not None:
            decoded.warm()


def run_foreground(repo_root: str, mountpoint: str, debug: bool = False, verify: bool = True,
                   allow_other: bool = False, ops_factory=None, read_ahead_kb: int | None = None,
                   syslog: bool = False, **ops_kwargs) -> int:
    """Mount and serve until unmounted or signalled. Returns an exit code.

    ``verify``: check every block against its CID before it is first served
    (``LMDBStore.verify_reads``; ``False`` is ``--no-verify``).

    ``read_ahead_kb``: the mount's bdi ``read_ahead_kb`` (KiB; default 1024, which
    lets sequential reads arrive as 1 MiB requests; a lazy mount's own default).
    ``syslog``: also log to the system log when ``/dev/log`` exists (a background
    mount, whose stderr nobody watches). A lazy mount publishes its peers' states
    in ``REPO/.tvcfs/mounts/<hash>.remote.json`` (``tvcfs status``).

    ``ops_factory(repo, **ops_kwargs)`` builds the operations object (default: the
    writable mount of :mod:`tvcfs.fs.writable` if present, else read-only).
    """
    # This process is the mount daemon and does no linear algebra; numpy comes in
    # for buffer addresses, and OpenBLAS's thread pool would then spin a core
    # (~0.1 CPU-s per GiB read, measured) that the program loading the model needs.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pyfuse3
    import trio

    from ..fileio import unlink_quietly
    from ..repo import Repo

    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if syslog:
        _log_to_syslog(logging.DEBUG if debug else logging.INFO)
    repo = Repo.open(repo_root)
    repo.store.verify_reads = verify
    _warm_decoders(repo.store)
    if ops_factory is None:
        ops_factory = default_ops_factory()
    remote_opts = {k: ops_kwargs.pop(k) for k in ("remotes", "fetch_timeout", "prefetch", "cache_size")
                   if k in ops_kwargs}
    ops = ops_factory(repo, **ops_kwargs)
    from .s3source import attach_lazy

    fetcher = attach_lazy(repo, ops, **remote_opts)  # lazy mount: leaves from peers or a bucket
    options = set(pyfuse3.default_options)
    options.add(f"fsname=tvcfs:{repo.root}")
    options.add("subtype=tvcfs")
    if allow_other:
        options.add("allow_other")
    if debug:
        options.add("debug")
    pidfile = _pidfile(repo.control, mountpoint)
    os.makedirs(os.path.dirname(pidfile), exist_ok=True)
    pyfuse3.init(ops, mountpoint, options)
    # written whole, then renamed: a reader that sees the mount never reads it empty
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pidfile + ".tmp", pidfile)
    if fetcher is not None:  # peer states and the last failed read, for `tvcfs status`
        from .lazy import STATUS_SUFFIX

        fetcher.status_path = pidfile[:-len(".pid")] + STATUS_SUFFIX
        fetcher.mountpoint = mount_path(mountpoint)
    ops.refs_changed()
    log.info("mounted %s on %s (pid %d)", repo.root, mountpoint, os.getpid())

    async def main():
        async with trio.open_nursery() as nursery:
            if fetcher is not None:
                await nursery.start(fetcher.run)
            async def fuse_main():
                try:
                    await pyfuse3.main()
                finally:
                    nursery.cancel_scope.cancel()

            async def watch():
                while True:
                    await trio.sleep(REFS_POLL)
                    try:
                        ops.reader.renew()
                        ops.refs_changed()
                        if hasattr(ops, "tick"):
                            await ops.tick()
                    except Exception:
                        log.exception("ref watcher")

            async def signals():
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as it:
                    async for sig in it:
                        log.info("signal %d: unmounting", sig)
                        pyfuse3.terminate()
                        break
                    # pyfuse3.main() returns once every request taken is answered; one
                    # that waits (a lazy read from a stalled remote: up to the fetch
                    # timeout) would hold the exit, so after STOP_GRACE seconds (or at
                    # a second signal) the waiting requests are cancelled: their
                    # callers get ENOTCONN when the mount closes. A commit in progress
                    # runs in a thread and completes; staged writes are committed by
                    # ops.shutdown() below.
                    with trio.move_on_after(STOP_GRACE):
                        async for sig in it:
                            break
                log.warning("requests still pending after the signal: cancelled")
                nursery.cancel_scope.cancel()

            nursery.start_soon(fuse_main)
            nursery.start_soon(watch)
            nursery.start_soon(signals)
            # a lazy mount fetches whole leaves for every page the kernel reads: a smaller
            # readahead (mmap read-around) moves fewer bytes that nobody asked for
            from .lazy import READAHEAD_KB

            ra_kb = read_ahead_kb or (READAHEAD_KB if fetcher is not None else 1024)
            await trio.to_thread.run_sync(set_readahead, mountpoint, ra_kb)

    ok = True
    try:
        trio.run(main)
    except BaseException:
        log.exception("mount loop failed")
        ok = False
    finally:
        try:
            if hasattr(ops, "shutdown"):
                ops.shutdown()
        except Exception:
            log.exception("shutdown")
            ok = False
        pyfuse3.close(unmount=True)
        unlink_quietly(pidfile)
        ops.reader.close()
        repo.close()
        log.info("unmounted %s", mountpoint)
    return 0 if ok else 1


def default_ops_factory():
    """The pyfuse3 operations class to mount with: :class:`~.writable.WritableOperations`, or
    :class:`~.operations.ReadOnlyOperations` if it cannot be imported."""
    try:
        from .writable import WritableOperations

        return WritableOperations
    except ImportError:
        from .operations import ReadOnlyOperations

        return ReadOnlyOperations


def is_mounted(mountpoint: str) -> bool:
    """True if ``mountpoint`` is in ``/proc/mounts`` (no stat, so never blocks)."""
    return mount_path(mountpoint) in _mounted_paths()


def start_background(argv: list, repo_control: str, mountpoint: str, timeout: float = 30.0) -> int:
    """Start ``argv`` (a foreground mount command) detached and wait until the mount is
    live and its pid file written (the daemon writes it just after the kernel shows
    the mount: ``tvcfs unmount`` and ``status`` read it). Returns its pid. Raises
    ``RuntimeError`` with the log's tail on failure."""
    logpath = os.path.join(repo_control, "mount.log")
    with open(logpath, "ab") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, close_fds=True)
    pidfile = _pidfile(repo_control, mountpoint)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(mountpoint) and os.path.exists(pidfile):
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.terminate()
    tail = ""
    try:
        with open(logpath, "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
    except OSError:
        pass
    raise RuntimeError(f"mount did not come up; log {logpath}:\n{tail}")


def unmount(mountpoint: str, timeout: float = 60.0, lazy: bool = False) -> None:
    """Unmount with ``fusermount3 -u`` (``-z`` if ``lazy``) and wait for the mount
    process to finish its pending work (commits). Raises ``RuntimeError``."""
    real = mount_path(mountpoint)
    fsname = next((src for src, mnt in mount_table() if mnt == real), None)
    if fsname is None:
        raise RuntimeError(f"{mountpoint} is not mounted")
    pid = None
    if fsname.startswith("tvcfs:"):
        pid = _mount_pid(fsname[len("tvcfs:"):], mountpoint)
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u"] + (["-z"] if lazy else []) + [real] if tool else ["umount"] + (["-l"] if lazy else []) + [real]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"unmount failed: {r.stderr.strip() or r.stdout.strip()}")
    if pid:
        from ..fileio import process_alive

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # gone, or exited and not reaped yet (its parent, e.g. tvcfs.fs.mount, reaps it later)
            if not process_alive(pid):
                return
            time.sleep(0.05)
        raise RuntimeError(f"mount process {pid} still running after unmount")
