"""Reads never return wrong bytes: a damaged stored block is an error, not data.

A leaf of a real repository is damaged by writing straight into the LMDB ``blocks``
database through the store's write transaction (as a disk or file-system fault
would leave it): one byte flipped, one byte short, one byte long. Then, with the
default options, a real FUSE mount answers EIO for exactly the reads that need the
leaf and keeps serving everything else; ``tvcfs cat``, ``checkout``, ``export`` and
``diff`` stop with a one-line error naming the CID and exit non-zero, having written
no wrong byte; ``tvcfs fsck`` names the CID. ``--no-verify`` skips the hash check
but never the length check (docs/repository.md, docs/mount.md).
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from support.cli import run_tvcfs
from support.mount import Mounted
from support.repo import forget_checksums
from support.wait import wait_until
from support.safetensors import write_safetensors_raw
from tvcfs.encoding.cid import cid_str
from tvcfs.repo import Repo
from tvcfs.store.lmdb_store import checksum

MIB = 1 << 20
AUTHOR = {"TVCFS_AUTHOR_NAME": "Verify Tester", "TVCFS_AUTHOR_EMAIL": "verify@example.org"}


def _tensors(seed: int, scale_b: float = 1.0) -> list:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(3 * MIB // 4, dtype=np.float32)
    b = rng.standard_normal(3 * MIB // 4, dtype=np.float32) * np.float32(scale_b)
    c = rng.standard_normal(MIB // 2 + 77, dtype=np.float32)
    return [("a", "F32", [a.size], a.tobytes()), ("b", "F32", [b.size], b.tobytes()),
            ("c", "F32", [c.size], c.tobytes())]


class World:
    """A repository with two commits of a 9 MiB safetensors file (three tensors of
    several leaves each) and a text file; ``c2`` changes tensor ``b`` only.
    ``bad``: a leaf in the middle of ``b`` in ``c1``; ``orig1`` / ``orig2``: the
    file's bytes in ``c1`` / ``c2``."""

    def __init__(self, root: str, src: str):
        os.makedirs(src)
        p = os.path.join(src, "model.safetensors")
        write_safetensors_raw(p, _tensors(1))
        with open(os.path.join(src, "notes.txt"), "wb") as f:
            f.write(b"notes\n" * 1000)
        self.orig1 = open(p, "rb").read()
        self.notes = b"notes\n" * 1000
        self.root = root
        with Repo.init(root) as repo:
            self.c1 = repo.commit_dir(src, "main", "one", timestamp=1_700_000_000).cid
            write_safetensors_raw(p, _tensors(1, scale_b=1.5))
            self.orig2 = open(p, "rb").read()
            self.c2 = repo.commit_dir(src, "main", "two", timestamp=1_700_000_100).cid
            e1 = repo.entry(self.c1, "model.safetensors")
            self.file1 = e1.cid
            idx = repo.file_index(e1.cid)
            leaves2 = set(repo.file_index(repo.entry(self.c2, "model.safetensors").cid).leaves)
            changed = [i for i in range(len(idx.leaves)) if idx.leaves[i] not in leaves2]
            assert len(changed) >= 3, changed  # tensor b: several leaves, all changed
            i = changed[len(changed) // 2]
            self.bad, self.bad_start, self.bad_size = idx.leaves[i], idx.starts[i], idx.sizes[i]
            assert self.bad_size == MIB

    def damage(self, kind: str, cid: bytes | None = None) -> None:
        """Overwrite the stored bytes of ``cid`` (default: the bad leaf) in place."""
        cid = cid or self.bad
        with Repo.open(self.root) as repo, repo.store.write() as w:
            blk = bytearray(w.get_block(cid))
            if kind in ("flip", "node"):
                blk[len(blk) // 2] ^= 0x01
            elif kind == "short":
                del blk[-1]
            elif kind == "long":
                blk.append(0)
            w.txn.put(cid, bytes(blk), db=w.db["blocks"])


@pytest.fixture
def world(tmp_path):
    return World(str(tmp_path / "repo"), str(tmp_path / "src"))


def _one_line_error(proc, cid: bytes) -> str:
    err = proc.stderr.decode(errors="replace").strip()
    assert proc.returncode != 0
    assert err.startswith("tvcfs: error: ") and "\n" not in err, err
    assert cid_str(cid) in err, err
    assert "Traceback" not in err and "CorruptBlock" not in err, err
    return err


@pytest.mark.parametrize("kind", ["flip", "short", "long"])
def test_damaged_leaf_is_never_served(world, tmp_path, kind):
    world.damage(kind)
    bad = world.bad
    r = world.root

    # cat: the bytes before the damaged leaf, then a one-line error naming it
    p = run_tvcfs("--repo", r, "cat", f"{cid_str(world.c1)}:model.safetensors", ok=False)
    err = _one_line_error(p, bad)
    assert "model.safetensors" in err
    assert len(p.stdout) <= world.bad_start and world.orig1.startswith(p.stdout)
    p = run_tvcfs("--repo", r, "cat", cid_str(world.file1), ok=False)
    _one_line_error(p, bad)
    assert world.orig1.startswith(p.stdout) and len(p.stdout) <= world.bad_start

    # checkout: no damaged file is left behind, what was written is right
    dest = tmp_path / "co"
    p = run_tvcfs("--repo", r, "checkout", cid_str(world.c1), dest, ok=False)
    assert "model.safetensors" in _one_line_error(p, bad)
    assert not (dest / "model.safetensors").exists()
    for name in os.listdir(dest):
        assert name == "notes.txt" and (dest / name).read_bytes() == world.notes

    # export: error, and neither the CAR nor its temporary file exists
    car = tmp_path / "out.car"
    p = run_tvcfs("--repo", r, "export", cid_str(world.c1), car, ok=False)
    _one_line_error(p, bad)
    assert not car.exists() and not (tmp_path / "out.car.tmp").exists()

    # diff reads tensor b on both sides
    p = run_tvcfs("--repo", r, "diff", cid_str(world.c1), cid_str(world.c2), ok=False)
    assert "model.safetensors" in _one_line_error(p, bad)

    # the undamaged commit still checks out exactly
    p = run_tvcfs("--repo", r, "cat", f"{cid_str(world.c2)}:model.safetensors")
    assert p.stdout == world.orig2

    # fsck names the block
    p = run_tvcfs("--repo", r, "fsck", ok=False)
    assert cid_str(bad) in p.stdout.decode() + p.stderr.decode()

    # the mount: EIO for the damaged leaf, every other byte right, other files served
    mnt = str(tmp_path / "mnt")
    with Mounted(r, mnt, allow_errors=(cid_str(bad),)) as m:
        path = m.path("commits", cid_str(world.c1), "model.safetensors")
        assert os.path.getsize(path) == len(world.orig1)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            with pytest.raises(OSError) as ei:
                os.pread(fd, 4096, world.bad_start)
            assert ei.value.errno == errno.EIO
            with pytest.raises(OSError) as ei:
                os.pread(fd, 4096, world.bad_start + world.bad_size - 4096)
            assert ei.value.errno == errno.EIO
            assert os.pread(fd, 4096, world.bad_start - 4096) == world.orig1[world.bad_start - 4096:world.bad_start]
        finally:
            os.close(fd)
        # a plain sequential read: right bytes up to the damaged leaf, then EIO
        got = bytearray()
        with open(path, "rb", buffering=0) as f:
            with pytest.raises(OSError) as ei:
                while True:
                    chunk = f.read(256 * 1024)
                    if not chunk:
                        break
                    got += chunk
            assert ei.value.errno == errno.EIO
        assert world.orig1.startswith(bytes(got)) and len(got) <= world.bad_start
        # the mount keeps serving the rest
        with open(m.path("commits", cid_str(world.c2), "model.safetensors"), "rb") as f:
            assert f.read() == world.orig2
        with open(m.path("commits", cid_str(world.c1), "notes.txt"), "rb") as f:
            assert f.read() == world.notes
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            tail = world.bad_start + world.bad_size
            assert os.pread(fd, 4096, tail) == world.orig1[tail:tail + 4096]
        finally:
            os.close(fd)
    assert cid_str(bad) in m.log()


def test_damaged_interior_node(world):
    """The file's root node (dag-pb) is checked too: an error naming it, not a
    decoding failure or a wrong file."""
    world.damage("node", world.file1)
    p = run_tvcfs("--repo", world.root, "cat", f"{cid_str(world.c1)}:model.safetensors", ok=False)
    _one_line_error(p, world.file1)
    assert p.stdout == b""


def test_no_verify_skips_the_hash_not_the_length(world, tmp_path):
    """``--no-verify`` (CLI verbs and the mount): a flipped byte goes out unnoticed
    (what the option is for: trusting the disk); a leaf of the wrong length is still
    an error."""
    world.damage("flip")
    spec = f"{cid_str(world.c1)}:model.safetensors"
    p = run_tvcfs("--repo", world.root, "cat", "--no-verify", spec)
    assert len(p.stdout) == len(world.orig1) and p.stdout != world.orig1
    run_tvcfs("--repo", world.root, "cat", spec, ok=False)
    with Mounted(world.root, str(tmp_path / "mnt"), extra=("--no-verify",)) as m:
        with open(m.path("commits", cid_str(world.c1), "model.safetensors"), "rb") as f:
            got = f.read()
        assert len(got) == len(world.orig1) and got != world.orig1
    world.damage("short")
    p = run_tvcfs("--repo", world.root, "cat", "--no-verify", spec, ok=False)
    _one_line_error(p, world.bad)


# --------------------------------------------------------------------------- at-rest checksums
# Reads check a block against the xxh3 checksum recorded when it was stored; a block
# without one (a store made before checksums) is hashed against its CID, and so is
# every block with ``verify.reads = "cid"`` (docs/repository.md, "Verified reads").

def _read_through_mount(world, mnt: str, extra=()) -> None:
    """The damaged leaf is EIO through a mount, the rest of the file is right."""
    with Mounted(world.root, mnt, allow_errors=(cid_str(world.bad),), extra=extra) as m:
        path = m.path("commits", cid_str(world.c1), "model.safetensors")
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            with pytest.raises(OSError) as ei:
                os.pread(fd, 4096, world.bad_start)
            assert ei.value.errno == errno.EIO
            assert os.pread(fd, 4096, world.bad_start - 4096) == world.orig1[world.bad_start - 4096:world.bad_start]
        finally:
            os.close(fd)
    assert cid_str(world.bad) in m.log()


def test_flipped_byte_is_caught_by_the_recorded_checksum(world, tmp_path):
    world.damage("flip")
    spec = f"{cid_str(world.c1)}:model.safetensors"
    err = _one_line_error(run_tvcfs("--repo", world.root, "cat", spec, ok=False), world.bad)
    assert "does not match the checksum recorded when it was stored" in err, err
    _read_through_mount(world, str(tmp_path / "mnt"))
    p = run_tvcfs("--repo", world.root, "fsck", ok=False)
    assert (f"corrupt block {cid_str(world.bad)} (it does not match the checksum recorded when it was "
            "stored either)") in p.stdout.decode()


@pytest.mark.parametrize("kind", ["flip", "short"])
def test_store_without_checksums_hashes_against_the_cid(world, tmp_path, kind):
    """A store made before checksums: every read hashes against the CID, the damaged
    leaf is still never served; fsck records the checksums of the sound blocks only."""
    forget_checksums(world.root)
    world.damage(kind)
    spec = f"{cid_str(world.c1)}:model.safetensors"
    p = run_tvcfs("--repo", world.root, "cat", spec, ok=False)
    assert "does not hash to its CID" in _one_line_error(p, world.bad)
    assert world.orig1.startswith(p.stdout) and len(p.stdout) <= world.bad_start
    _read_through_mount(world, str(tmp_path / "mnt"))
    p = run_tvcfs("--repo", world.root, "fsck", ok=False)
    assert cid_str(world.bad) in p.stdout.decode()
    with Repo.open(world.root) as repo, repo.store.view(verify=False) as v:
        missing = [cid for cid, _, _ in v.stored() if v.recorded_checksum(cid) is None]
    assert missing == [world.bad]  # the sound blocks have theirs now, the damaged one none
    assert run_tvcfs("--repo", world.root, "cat", f"{cid_str(world.c2)}:model.safetensors").stdout == world.orig2
    p = run_tvcfs("--repo", world.root, "cat", spec, ok=False)
    assert "does not hash to its CID" in _one_line_error(p, world.bad)


def test_verify_reads_cid_hashes_every_block(world, tmp_path):
    """``tvcfs config verify.reads cid``: bytes that match their recorded checksum but
    not their CID (as a path that stored them unchecked would leave them) are an
    error for the CLI and EIO in the mount; the default trusts the checksum."""
    world.damage("flip")
    with Repo.open(world.root) as repo, repo.store.write() as w:
        w.record_checksum(world.bad, checksum(w.txn.get(world.bad, db=w.db["blocks"])))
    spec = f"{cid_str(world.c1)}:model.safetensors"
    p = run_tvcfs("--repo", world.root, "cat", spec)  # the checksum path: what was recorded
    assert len(p.stdout) == len(world.orig1) and p.stdout != world.orig1

    p = run_tvcfs("--repo", world.root, "config", "verify.reads", "sha", ok=False)
    assert p.stderr.decode().startswith("tvcfs: error: verify.reads takes 'checksum'")
    run_tvcfs("--repo", world.root, "config", "verify.reads", "cid")
    assert run_tvcfs("--repo", world.root, "config", "verify.reads").stdout == b"cid\n"
    p = run_tvcfs("--repo", world.root, "cat", spec, ok=False)
    assert "does not hash to its CID" in _one_line_error(p, world.bad)
    assert world.orig1.startswith(p.stdout) and len(p.stdout) <= world.bad_start
    _read_through_mount(world, str(tmp_path / "mnt"))
    p = run_tvcfs("--repo", world.root, "fsck", ok=False)  # fsck hashes whatever the mode
    assert f"corrupt block {cid_str(world.bad)}" in p.stdout.decode()


def test_failed_copy_on_write_keeps_following_the_branch(world, tmp_path):
    """A write to a committed file whose copy on write fails (a damaged leaf: EIO)
    stages nothing, so the workspace is still clean: it keeps following its branch
    when the branch moves (it stayed marked pending and showed the old tree until the
    next commit through the mount: with a long ``--commit-delay``, for that long)."""
    with Repo.open(world.root) as repo:
        idx2 = repo.file_index(repo.entry(world.c2, "model.safetensors").cid)
    bad2 = idx2.leaves[len(idx2.leaves) // 2]
    world.damage("flip", bad2)
    src3 = tmp_path / "src3"
    src3.mkdir()
    (src3 / "notes.txt").write_bytes(b"third\n")
    with Mounted(world.root, str(tmp_path / "mnt"), commit_delay=3600, allow_errors=(cid_str(bad2),)) as m:
        br = m.path("branches", "main")
        with open(os.path.join(br, "model.safetensors"), "r+b", buffering=0) as f:
            with pytest.raises(OSError) as ei:
                f.write(b"x")
            assert ei.value.errno == errno.EIO
        with open(os.path.join(br, "notes.txt"), "rb") as f:
            assert f.read() == world.notes
        run_tvcfs("--repo", world.root, "commit", str(src3), "-b", "main", "-m", "three", env=AUTHOR)
        wait_until(lambda: open(os.path.join(br, "notes.txt"), "rb").read() == b"third\n", 30,
                   what="branches/main to follow the branch after the failed copy on write")
        assert sorted(os.listdir(br)) == ["notes.txt"]
    with Repo.open(world.root) as repo:
        assert repo.entry(repo.ref_db.get("refs/heads/main"), "notes.txt") is not None
