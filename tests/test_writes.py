"""Writes into ``MOUNT/branches/NAME/`` become commits (docs/writes.md).

Real FUSE mounts (``tvcfs mount -f`` in a child process, see
:class:`support.mount.Mounted`), real LMDB, the real all-MiniLM-L6-v2 model.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from support.cli import run_tvcfs
from support.trees import assert_same_tree
from support import MIB
from support.mount import AUTHOR, Mounted, fsync_dir, os_err
from support.repo import block_set, check_refs_complete, commit_count, head, new_block_bytes, wait_head_change
from support.wait import wait_until
from tvcfs.encoding.cid import cid_str

pytestmark = [pytest.mark.fuse]


@pytest.fixture
def model_repo(tmp_repo, real_model_dir):
    """``tmp_repo`` with the real model committed on ``main``."""
    tmp_repo.commit_dir(real_model_dir, message="base: all-MiniLM-L6-v2")
    return tmp_repo


def _checkout(repo, rev, dest) -> str:
    run_tvcfs("--repo", repo.root, "checkout", rev, dest)
    return str(dest)


def _read_other_process(path: str, offset: int = 0, size: int = -1) -> bytes:
    code = ("import sys; f=open(sys.argv[1],'rb'); f.seek(int(sys.argv[2])); "
            "sys.stdout.buffer.write(f.read(int(sys.argv[3])))")
    return subprocess.run([sys.executable, "-c", code, path, str(offset), str(size)], check=True,
                          capture_output=True, timeout=60).stdout


# ------------------------------------------------------------------ saving models
def _finetuned_tensors(model_dir: str, names, seed: int = 1):
    from safetensors import safe_open

    with safe_open(os.path.join(model_dir, "model.safetensors"), "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    rng = np.random.default_rng(seed)
    changed = 0
    for n in names:
        t = tensors[n]
        tensors[n] = (t + rng.standard_normal(t.shape).astype(t.dtype) * 1e-3).astype(t.dtype)
        changed += t.nbytes
    return tensors, meta, changed


CHANGED = ("encoder.layer.2.attention.self.query.weight", "encoder.layer.4.output.dense.weight")


@pytest.mark.timeout(120)
def test_save_file_and_json_is_one_commit(model_repo, real_model_dir, tmp_path):
    """safetensors ``save_file`` + JSON files into ``branches/main``: exactly one new
    commit (the quiet-period trigger, default delay), byte-identical to the same save
    on plain disk, with a message listing the files and tensors."""
    from safetensors.numpy import save_file

    tensors, meta, _ = _finetuned_tensors(real_model_dir, CHANGED)

    def save(d):
        save_file(tensors, os.path.join(d, "model.safetensors"), metadata=meta)
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        cfg["finetuned"] = True
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        with open(os.path.join(d, "trainer_state.json"), "w") as f:
            json.dump({"step": 100, "loss": [0.5, 0.25]}, f)

    plain = tmp_path / "plain"
    shutil.copytree(real_model_dir, plain)
    save(str(plain))
    base = head(model_repo)
    with Mounted(model_repo.root, tmp_path / "mnt", commit_delay=1.0) as m:
        save(m.branch())
        new = wait_head_change(model_repo, base, timeout=30)
        # read-your-writes through the mount, before and after the commit
        assert_same_tree(m.branch(), str(plain))
        import time

        time.sleep(2.0)  # a second (spurious) commit would land within the delay
        assert head(model_repo) == new
    assert commit_count(model_repo) == 2
    com = model_repo.read_commit(new)
    assert com.parents == (base,)
    assert (com.author_name, com.author_email) == (AUTHOR["TVCFS_AUTHOR_NAME"], AUTHOR["TVCFS_AUTHOR_EMAIL"])
    msg = com.message
    assert msg.splitlines()[0] == "Update 3 files on main", msg
    assert "modified: config.json" in msg and "added: trainer_state.json" in msg
    assert "modified: model.safetensors" in msg
    for n in CHANGED:
        assert f"tensor modified: {n}" in msg
    assert msg.count("tensor ") == 2, msg
    assert_same_tree(_checkout(model_repo, "main", tmp_path / "co"), str(plain))


@pytest.mark.ml
@pytest.mark.timeout(180)
def test_save_pretrained_is_one_commit(model_repo, real_model_dir, tmp_path, monkeypatch):
    """transformers ``save_pretrained`` of the real model (two tensors changed) into
    ``branches/main``: one commit, files byte-identical to ``save_pretrained`` to
    plain disk, unchanged tensors deduplicated."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(real_model_dir)
    sd = model.state_dict()
    changed_bytes = 0
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for n in CHANGED:
            sd[n].add_(torch.randn(sd[n].shape, generator=g) * 1e-3)
            changed_bytes += sd[n].numel() * sd[n].element_size()
    plain = tmp_path / "plain"
    model.save_pretrained(plain)
    base = head(model_repo)
    before = block_set(model_repo)
    with Mounted(model_repo.root, tmp_path / "mnt", commit_delay=1.0, limit=140) as m:
        model.save_pretrained(m.branch())
        new = wait_head_change(model_repo, base, timeout=60)
        import time

        time.sleep(2.0)  # a quiet period: a second (spurious) commit would land within it
        assert head(model_repo) == new
        for name in os.listdir(plain):
            with open(plain / name, "rb") as a, open(m.branch("main", name), "rb") as b:
                assert a.read() == b.read(), name
    assert commit_count(model_repo) == 2
    co = _checkout(model_repo, "main", tmp_path / "co")
    for name in os.listdir(plain):
        with open(plain / name, "rb") as a, open(os.path.join(co, name), "rb") as b:
            assert a.read() == b.read(), name
    # untouched files of the base commit are still there
    assert os.path.exists(os.path.join(co, "tokenizer.json"))
    msg = model_repo.read_commit(new).message
    assert "model.safetensors" in msg and "config.json" in msg
    # whatever save_pretrained's layout, unchanged tensors are not stored again: the new
    # blocks are the two changed tensors, the header and small DAG nodes (a few KiB),
    # not the 87 MiB model
    new_bytes = new_block_bytes(model_repo, before)
    assert new_bytes < changed_bytes + 256 * 1024 + os.path.getsize(plain / "config.json"), (new_bytes, changed_bytes)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant", ["two-tensors", "added-tensor-moves-offsets"])
def test_finetune_stores_only_changed_tensors(model_repo, real_model_dir, tmp_path, variant):
    """Saving a fine-tune stores new blocks of about the changed tensors' bytes."""
    from safetensors.numpy import save_file

    from support.model import make_finetune

    before = block_set(model_repo)
    base = head(model_repo)
    with Mounted(model_repo.root, tmp_path / "mnt") as m:
        dst = m.branch("main", "model.safetensors")
        if variant == "two-tensors":
            tensors, meta, expect = _finetuned_tensors(real_model_dir, CHANGED)
            save_file(tensors, dst, metadata=meta)
            plain = tmp_path / "plain.safetensors"
            save_file(tensors, plain, metadata=meta)
        else:
            ft = make_finetune(real_model_dir, str(tmp_path / "ft"))
            expect = ft.changed_bytes + ft.added_bytes + ft.header_bytes
            plain = ft.path
            shutil.copyfile(plain, dst)
        fsync_dir(m.branch())
        new = head(model_repo)
        assert new != base
        with open(plain, "rb") as a, open(dst, "rb") as b:
            assert a.read() == b.read()
    new_bytes = new_block_bytes(model_repo, before)
    # changed tensor data + header leaf + file/dir/commit nodes (< 64 KiB)
    assert expect <= new_bytes <= expect + 64 * 1024, (new_bytes, expect)
    assert commit_count(model_repo) == 2
    assert new_bytes < 0.1 * os.path.getsize(plain)


# ------------------------------------------------------------------ POSIX operations
def _posix_ops(root: str, big: bytes) -> None:
    """The same sequence of operations, applied to the branch and to a plain dir."""
    j = os.path.join
    # atomic save: temp file + rename over an existing file
    with open(j(root, "config.json.tmp"), "w") as f:
        f.write('{"atomic": 1}\n')
    os.rename(j(root, "config.json.tmp"), j(root, "config.json"))
    # ... and with fsync of the temp file before the rename (transformers/torch style)
    with open(j(root, "modules.json.tmp"), "wb") as f:
        f.write(b'{"modules": []}\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(j(root, "modules.json.tmp"), j(root, "modules.json"))
    # truncate: shorter, longer (zero fill), ftruncate through an fd
    os.truncate(j(root, "vocab.txt"), 1000)
    os.truncate(j(root, "README.md"), 20000)
    with open(j(root, "tokenizer.json"), "r+b") as f:
        f.truncate(4096)
    # O_TRUNC of a committed file, shorter content
    with open(j(root, "data_config.json"), "w") as f:
        f.write("[]\n")
    # sparse writes: pwrite past EOF in a new file and an existing one
    fd = os.open(j(root, "sparse.bin"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.pwrite(fd, b"tail", 5 * MIB + 3)
    os.pwrite(fd, b"head", 0)
    os.close(fd)
    fd = os.open(j(root, "special_tokens_map.json"), os.O_WRONLY)
    os.pwrite(fd, b"X" * 10, 3 * MIB)
    os.close(fd)
    # overwrite in place inside a big committed file (one tensor region)
    with open(j(root, "model.safetensors"), "r+b") as f:
        f.seek(40 * MIB + 12345)
        f.write(big)
    # append
    with open(j(root, "tokenizer_config.json"), "ab") as f:
        f.write(b"\n// appended\n")
    # chmod +x and a new executable
    os.chmod(j(root, "sentence_bert_config.json"), 0o755)
    with open(j(root, "run.sh"), "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(j(root, "run.sh"), 0o755)
    # symlinks
    os.symlink("model.safetensors", j(root, "pytorch_model.safetensors"))
    os.symlink("../config.json", j(root, "1_Pooling", "link-up"))
    # mkdir / rmdir / nested files / rename of a directory
    os.makedirs(j(root, "ckpt", "step-1"))
    with open(j(root, "ckpt", "step-1", "optim.bin"), "wb") as f:
        f.write(b"o" * 70000)
    os.mkdir(j(root, "empty"))
    os.mkdir(j(root, "gone"))
    os.rmdir(j(root, "gone"))
    os.rename(j(root, "ckpt"), j(root, "checkpoints"))
    os.rename(j(root, "checkpoints", "step-1", "optim.bin"), j(root, "optim.bin"))
    # unlink a committed file and a new one
    os.unlink(j(root, "config_sentence_transformers.json"))
    with open(j(root, "scratch"), "wb") as f:
        f.write(b"x")
    os.unlink(j(root, "scratch"))


@pytest.mark.timeout(120)
def test_posix_operations_match_plain_directory(model_repo, real_model_dir, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(real_model_dir, plain)
    big = np.random.default_rng(5).bytes(3 * MIB)
    _posix_ops(str(plain), big)
    base = head(model_repo)
    with Mounted(model_repo.root, tmp_path / "mnt", commit_delay=30) as m:
        br = m.branch()
        # errors that must match the plain filesystem
        assert os_err(os.rmdir, os.path.join(br, "1_Pooling")) == errno.ENOTEMPTY
        assert os_err(os.unlink, os.path.join(br, "1_Pooling")) == errno.EISDIR
        assert os_err(os.mkdir, os.path.join(br, "config.json")) == errno.EEXIST
        assert os_err(os.rename, br, os.path.join(br, "1_Pooling", "x")) is not None
        assert os_err(os.open, os.path.join(br, "nope", "x"), os.O_CREAT | os.O_WRONLY) == errno.ENOENT
        # creating in a directory removed meanwhile (held open) fails like on disk
        for root in (br, str(plain)):
            os.mkdir(os.path.join(root, "doomed"))
            dfd = os.open(os.path.join(root, "doomed"), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.rmdir(os.path.join(root, "doomed"))
                assert os_err(os.open, "x", os.O_CREAT | os.O_WRONLY, dir_fd=dfd) == errno.ENOENT, root
                assert os_err(os.mkdir, "d", dir_fd=dfd) == errno.ENOENT, root
            finally:
                os.close(dfd)
        assert os_err(os.setxattr, os.path.join(br, "config.json"), "user.x", b"1") in (errno.ENOTSUP,
                                                                                        errno.EOPNOTSUPP)
        _posix_ops(br, big)
        # read-your-writes from another process before any commit
        assert _read_other_process(os.path.join(br, "model.safetensors"), 40 * MIB + 12345, len(big)) == big
        assert _read_other_process(os.path.join(br, "sparse.bin")) == b"head" + bytes(5 * MIB - 1) + b"tail"
        assert_same_tree(br, str(plain))
        assert os.stat(os.path.join(br, "run.sh")).st_mode & 0o111
        assert not os.stat(os.path.join(br, "config.json")).st_mode & 0o111
        assert os.readlink(os.path.join(br, "pytorch_model.safetensors")) == "model.safetensors"
        fsync_dir(br)
        after = head(model_repo)
        assert after != base
        assert_same_tree(br, str(plain))  # the view after the commit
    co = _checkout(model_repo, "main", tmp_path / "co")
    assert_same_tree(co, str(plain))
    for name in ("run.sh", "sentence_bert_config.json"):
        assert os.stat(os.path.join(co, name)).st_mode & 0o111, name
    assert not os.stat(os.path.join(co, "config.json")).st_mode & 0o111
    assert os.readlink(os.path.join(co, "1_Pooling", "link-up")) == "../config.json"
    # fsync of modules.json.tmp committed the state at that moment (with the temp file);
    # the directory fsync committed the rest on top of it
    assert head(model_repo) == after
    assert commit_count(model_repo) == 3
    mid = model_repo.read_commit(after).parents[0]
    assert model_repo.read_commit(mid).parents == (base,)
    assert "modules.json.tmp" in {e.name for e in model_repo.ls(mid)}


@pytest.mark.timeout(90)
def test_read_your_writes_across_processes_and_page_cache(model_repo, tmp_path):
    """A reader in another process sees new bytes while the writer keeps the file
    open, also when the kernel cached the committed content (keep_cache)."""
    with Mounted(model_repo.root, tmp_path / "mnt", commit_delay=0.2) as m:
        p = m.branch("main", "vocab.txt")
        with open(p, "rb") as f:
            orig = f.read()
        # read twice through the mount so the committed content is in the page cache
        assert _read_other_process(p) == orig
        assert _read_other_process(p) == orig
        fd = os.open(p, os.O_RDWR)
        try:
            os.pwrite(fd, b"NEWBYTES", 100)
            exp = orig[:100] + b"NEWBYTES" + orig[108:]
            assert _read_other_process(p) == exp
            with open(p, "rb") as f2:   # an fd opened in this process too
                assert f2.read() == exp
            os.pwrite(fd, b"END", len(orig))
            exp += b"END"
            assert _read_other_process(p) == exp
            assert os.stat(p).st_size == len(exp)
            # a commit while the writer is open (fsync through the fd)
            old = head(model_repo)
            os.fsync(fd)
            assert head(model_repo) != old
            os.pwrite(fd, b"AFTER", 0)
            exp = b"AFTER" + exp[5:]
            assert _read_other_process(p) == exp
        finally:
            os.close(fd)
        c1 = head(model_repo)
        c2 = wait_head_change(model_repo, c1)
        assert b"".join(model_repo.read_file(c2, "vocab.txt")) == exp
        assert _read_other_process(p) == exp
        # a new file: create, read from another process while still open
        with open(m.branch("main", "new.txt"), "wb") as f:
            f.write(b"hello")
            f.flush()
            assert _read_other_process(m.branch("main", "new.txt")) == b"hello"
        # after the quiet commit, O_TRUNC + rewrite is seen by readers
        c3 = wait_head_change(model_repo, c2)
        with open(p, "rb") as f:
            f.read()
        with open(p, "wb") as f:
            f.write(b"short")
        assert _read_other_process(p) == b"short"
        wait_head_change(model_repo, c3)
        assert _read_other_process(p) == b"short"


@pytest.mark.timeout(90)
def test_open_handles_across_rename_unlink_and_commit(model_repo, tmp_path):
    """POSIX semantics of open handles: a file replaced by rename or unlinked keeps
    its content for handles opened before; a writer that stays open across commits
    loses nothing."""
    with Mounted(model_repo.root, tmp_path / "mnt", commit_delay=0.2) as m:
        j = lambda *p: m.branch("main", *p)  # noqa: E731
        with open(j("a.txt"), "wb") as f:
            f.write(b"A" * 5000)
        with open(j("b.txt"), "wb") as f:
            f.write(b"B" * 7000)
        r = open(j("a.txt"), "rb")            # reader of a staged file
        w = open(j("a.txt"), "r+b")           # writer of the same file
        os.rename(j("b.txt"), j("a.txt"))    # replace it under both handles
        assert r.read() == b"A" * 5000
        w.seek(0)
        w.write(b"W")
        w.flush()
        with open(j("a.txt"), "rb") as f:
            assert f.read() == b"B" * 7000
        r.close()
        w.close()
        fsync_dir(j())
        c = head(model_repo)
        assert b"".join(model_repo.read_file(c, "a.txt")) == b"B" * 7000
        # a read-only handle (no writer) of a staged file replaced by rename, and one
        # of a staged file that is unlinked: both keep reading the old content
        for how in ("rename", "unlink"):
            with open(j("c.txt"), "wb") as f:
                f.write(b"C" * 9000)
            with open(j("d.txt"), "wb") as f:
                f.write(b"D" * 100)
            fd = os.open(j("c.txt"), os.O_RDONLY)  # opening drops the kernel's cached pages
            if how == "rename":
                os.rename(j("d.txt"), j("c.txt"))
            else:
                os.unlink(j("c.txt"))
            assert os.pread(fd, 20000, 0) == b"C" * 9000, how
            os.close(fd)
        # a staged file with an open writer across several commits
        w = open(j("log.txt"), "wb", buffering=0)
        for i in range(5):
            w.write(b"line %d\n" % i)
            fsync_dir(j())
            assert b"".join(model_repo.read_file(head(model_repo), "log.txt")) == b"".join(
                b"line %d\n" % k for k in range(i + 1))
        # unlink while open: the handle still reads/writes, nothing is committed
        os.unlink(j("log.txt"))
        w.write(b"ghost\n")
        w.close()
        fsync_dir(j())
        assert "log.txt" not in os.listdir(j())
        ents = {e.name for e in model_repo.ls("main")}
        assert "log.txt" not in ents and "a.txt" in ents
        # a reader of a committed file that is then overwritten by rename
        r = open(j("vocab.txt"), "rb")
        head_bytes = r.read(100)
        with open(j("v.tmp"), "wb") as f:
            f.write(b"replacement")
        os.rename(j("v.tmp"), j("vocab.txt"))
        fsync_dir(j())
        assert len(r.read()) > 1000 and head_bytes
        r.close()
        with open(j("vocab.txt"), "rb") as f:
            assert f.read() == b"replacement"


# ------------------------------------------------------------------ branches, read-only views
@pytest.mark.timeout(90)
def test_branch_mkdir_rmdir_and_readonly_views(model_repo, tmp_path):
    run_tvcfs("--repo", model_repo.root, "tag", "v1")
    base = head(model_repo)
    with Mounted(model_repo.root, tmp_path / "mnt") as m:
        os.mkdir(m.path("branches", "exp"))
        assert head(model_repo, "exp") == base
        assert "exp" in os.listdir(m.path("branches"))
        assert os_err(os.mkdir, m.path("branches", "exp")) == errno.EEXIST
        assert os_err(os.mkdir, m.path("branches", "bad..name")) == errno.EINVAL
        # nested branch names
        os.mkdir(m.path("branches", "team"))  # a plain branch named "team"
        with open(m.branch("exp", "notes.txt"), "w") as f:
            f.write("experiment\n")
        fsync_dir(m.branch("exp"))
        exp = head(model_repo, "exp")
        assert exp != base and head(model_repo, "main") == base
        assert model_repo.read_commit(exp).parents == (base,)
        assert not os.path.exists(m.branch("main", "notes.txt"))
        # a branch with pending changes cannot be removed
        with open(m.branch("team", "x"), "w") as f:
            f.write("x")
        assert os_err(os.rmdir, m.path("branches", "team")) == errno.EBUSY
        fsync_dir(m.branch("team"))
        os.rmdir(m.path("branches", "team"))
        os.rmdir(m.path("branches", "exp"))
        assert head(model_repo, "exp") is None
        assert "exp" not in os.listdir(m.path("branches"))
        log = model_repo.reflog("exp")
        assert log[-1]["new"] is None and log[-1]["old"] == cid_str(exp)
        # a branch deleted from the CLI disappears from the mount; a process still in
        # its directory cannot create files there any more
        os.mkdir(m.path("branches", "tmp"))
        os.listdir(m.branch("tmp"))
        dfd = os.open(m.branch("tmp"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            run_tvcfs("--repo", model_repo.root, "branch", "-d", "tmp")
            wait_until(lambda: "tmp" not in os.listdir(m.path("branches")), 5, what="tmp to disappear")
            assert not os.path.exists(m.branch("tmp"))
            assert os_err(os.open, "x", os.O_CREAT | os.O_WRONLY, dir_fd=dfd) == errno.ENOENT
        finally:
            os.close(dfd)
        assert head(model_repo, "tmp") is None
        assert os_err(os.rmdir, m.path("branches", "main")) == errno.EBUSY  # HEAD's branch
        assert os_err(os.rmdir, m.path("branches", "nope")) == errno.ENOENT
        # tags/ and commits/ are read-only
        for view in (m.path("tags", "v1"), m.path("commits", cid_str(base))):
            assert os.path.isdir(view)
            assert os_err(open, os.path.join(view, "config.json"), "r+b") == errno.EROFS
            assert os_err(open, os.path.join(view, "new.txt"), "wb") == errno.EROFS
            assert os_err(os.mkdir, os.path.join(view, "d")) == errno.EROFS
            assert os_err(os.unlink, os.path.join(view, "config.json")) == errno.EROFS
            assert os_err(os.rename, os.path.join(view, "config.json"), os.path.join(view, "c")) == errno.EROFS
            assert os_err(os.symlink, "x", os.path.join(view, "l")) == errno.EROFS
            assert os_err(os.chmod, os.path.join(view, "config.json"), 0o755) == errno.EROFS
            assert os_err(os.truncate, os.path.join(view, "config.json"), 0) == errno.EROFS
        assert os_err(os.mkdir, m.path("tags", "v2")) == errno.EROFS
        assert os_err(os.mkdir, m.path("commits", "x")) == errno.EROFS
        assert os_err(os.rename, m.branch("main", "config.json"), m.path("tags", "v1", "c")) in (errno.EXDEV, errno.EROFS)
    assert head(model_repo, "main") == base
    check_refs_complete(model_repo)


# ------------------------------------------------------------------ concurrency
def _cli_commit_with(repo, tmp_path, name: str, changes: dict) -> bytes:
    """Commit on ``main`` from the CLI: a checkout of ``main`` with ``changes``
    ({path: bytes | None}) applied."""
    d = tmp_path / name
    _checkout(repo, "main", d)
    for p, v in changes.items():
        fp = os.path.join(d, p)
        if v is None:
            os.unlink(fp)
        else:
            os.makedirs(os.path.dirname(fp), exist_ok=True)
            with open(fp, "wb") as f:
                f.write(v)
    run_tvcfs("--repo", repo.root, "commit", str(d), "-b", "main", "-m", f"cli {name}")
    return head(repo)


@pytest.mark.timeout(120)
def test_branch_moved_without_collision_rebases(model_repo, tmp_path):
    base = head(model_repo)
    with Mounted(model_repo.root, tmp_path / "mnt", commit_delay=60) as m:
        with open(m.branch("main", "ours.txt"), "wb") as f:
            f.write(b"ours")
        with open(m.branch("main", "1_Pooling", "config.json"), "ab") as f:
            f.write(b"\n")
        keep = open(m.branch("main", "held.txt"), "wb", buffering=0)  # a writer open across the rebase
        keep.write(b"held-1 ")
        theirs = _cli_commit_with(model_repo, tmp_path, "t1", {"theirs.txt": b"theirs",
                                                                "sub/deep/t.txt": b"deep",
                                                                "vocab.txt": b"their vocab"})
        assert theirs != base
        fsync_dir(m.branch())
        new = head(model_repo)
        com = model_repo.read_commit(new)
        assert com.parents == (theirs,)
        files = {p: e for p, e in model_repo.walk(new)}
        assert {"ours.txt", "theirs.txt", "sub/deep/t.txt", "held.txt"} <= set(files)
        assert b"".join(model_repo.read_file(new, "vocab.txt")) == b"their vocab"
        assert b"".join(model_repo.read_file(new, "1_Pooling/config.json")).endswith(b"\n")
        # the mount now shows both sides
        wait_until(lambda: os.path.exists(m.branch("main", "theirs.txt")), 5, what="theirs.txt in the mount")
        with open(m.branch("main", "vocab.txt"), "rb") as f:
            assert f.read() == b"their vocab"
        with open(m.branch("main", "sub", "deep", "t.txt"), "rb") as f:
            assert f.read() == b"deep"
        # keep writing after the rebase; a second external commit; then our commit
        keep.write(b"held-2")
        theirs2 = _cli_commit_with(model_repo, tmp_path, "t2", {"theirs2.txt": b"2"})
        keep.close()
        with open(m.branch("main", "ours2.txt"), "wb") as f:
            f.write(b"ours2")
        fsync_dir(m.branch())
        new2 = head(model_repo)
        assert model_repo.read_commit(new2).parents == (theirs2,)
        assert b"".join(model_repo.read_file(new2, "held.txt")) == b"held-1 held-2"
        names = {p for p, _ in model_repo.walk(new2)}
        assert {"ours.txt", "ours2.txt", "theirs.txt", "theirs2.txt", "held.txt"} <= names
        assert not model_repo.config.conflicts
        assert_same_tree(m.branch(), _checkout(model_repo, "main", tmp_path / "co"))
    check_refs_complete(model_repo)


@pytest.mark.timeout(120)
def test_branch_moved_with_collision_goes_to_conflicts_branch(model_repo, tmp_path):
    base = head(model_repo)
    with Mounted(model_repo.root, tmp_path / "mnt", commit_delay=60) as m:
        with open(m.branch("main", "config.json"), "wb") as f:
            f.write(b'{"ours": true}')
        with open(m.branch("main", "ours-only.txt"), "wb") as f:
            f.write(b"o")
        held = open(m.branch("main", "held.txt"), "wb", buffering=0)  # open across the conflict
        held.write(b"before ")
        theirs = _cli_commit_with(model_repo, tmp_path, "t1", {"config.json": b'{"theirs": true}'})
        fsync_dir(m.branch())
        assert head(model_repo) == theirs  # the branch keeps their commit
        conf = {k: v for k, v in model_repo.branches().items() if k.startswith("conflicts/")}
        assert len(conf) == 1, conf
        (cname, ccid), = conf.items()
        assert cname.startswith("conflicts/main-")
        com = model_repo.read_commit(ccid)
        assert com.parents == (base,)
        assert "conflict" in com.message and "config.json" in com.message
        assert b"".join(model_repo.read_file(ccid, "config.json")) == b'{"ours": true}'
        assert b"".join(model_repo.read_file(ccid, "ours-only.txt")) == b"o"
        assert b"".join(model_repo.read_file(ccid, "held.txt")) == b"before "
        # the handle still open writes on: that lands on the conflicts branch, not lost
        held.write(b"after")
        held.close()
        fsync_dir(m.path("branches", *cname.split("/")))
        c2 = head(model_repo, cname)
        assert model_repo.read_commit(c2).parents == (ccid,)
        assert b"".join(model_repo.read_file(c2, "held.txt")) == b"before after"
        assert b"".join(model_repo.read_file(theirs, "config.json")) == b'{"theirs": true}'
        # the mount's branch directory now shows the branch (their version) ...
        wait_until(lambda: open(m.branch("main", "config.json"), "rb").read() == b'{"theirs": true}', 5,
                 what="their config.json in the mount")
        assert not os.path.exists(m.branch("main", "ours-only.txt"))
        # ... and ours is visible on the conflicts branch
        with open(m.path("branches", *cname.split("/"), "config.json"), "rb") as f:
            assert f.read() == b'{"ours": true}'
        st = run_tvcfs("--repo", model_repo.root, "status").stdout.decode()
        assert "Conflicts" in st and cname in st and "config.json" in st, st
        st = run_tvcfs("status", m.branch()).stdout.decode()
        assert cname in st, st
        # the mount keeps working on the branch after the conflict
        with open(m.branch("main", "after.txt"), "wb") as f:
            f.write(b"after")
        fsync_dir(m.branch())
        assert model_repo.read_commit(head(model_repo)).parents == (theirs,)
    check_refs_complete(model_repo)


# ------------------------------------------------------------------ unmount
@pytest.mark.timeout(90)
def test_unmount_commits_pending_changes(model_repo, tmp_path):
    base = head(model_repo)
    m = Mounted(model_repo.root, tmp_path / "mnt", commit_delay=600)
    with m:
        with open(m.branch("main", "pending.bin"), "wb") as f:
            f.write(b"p" * 300000)
        os.unlink(m.branch("main", "README.md"))
        os.symlink("config.json", m.branch("main", "cfg-link"))
        os.mkdir(m.branch("main", "newdir"))
        os.chmod(m.branch("main", "vocab.txt"), 0o755)
        st = run_tvcfs("status", m.branch()).stdout.decode()
        assert "running" in st, st
        for line in ("added: pending.bin (300000 bytes staged)", "removed: README.md", "added: cfg-link",
                     "added: newdir/", "mode changed: vocab.txt"):
            assert line in st, (line, st)
        assert head(model_repo) == base
        assert m.unmount() == 0
    new = head(model_repo)
    assert new != base
    names = {e.name for e in model_repo.ls(new)}
    assert "pending.bin" in names and "README.md" not in names
    assert {"cfg-link", "newdir"} <= names
    assert model_repo.entry(new, "vocab.txt").mode & 0o111
    st = run_tvcfs("--repo", model_repo.root, "status").stdout.decode()
    assert "No staged changes" in st, st
    assert not os.listdir(os.path.join(model_repo.control, "staging")) or all(
        not os.path.exists(os.path.join(model_repo.control, "staging", d, "state.json"))
        for d in os.listdir(os.path.join(model_repo.control, "staging")))
