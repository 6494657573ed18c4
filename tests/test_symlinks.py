"""Symlinks when committing a directory (issue 20, item 2; docs/repository.md,
"Symlinks"): a link whose target lies outside the committed tree is followed and
its content stored, with one note on stderr; a dangling link is an error naming it
(nothing committed); a link inside the tree stays a link. Real ``tvcfs`` CLI
subprocesses on a real LMDB repository."""

from __future__ import annotations

import os

from support.cli import run_tvcfs
from tvcfs.dag import KIND_DIR, KIND_FILE, KIND_SYMLINK


def _tree(tmp_path):
    """``(src, outside)``: a directory to commit and a directory beside it."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "sub").mkdir(parents=True)
    outside.mkdir()
    (src / "a.txt").write_bytes(b"inside\n")
    (outside / "weights.bin").write_bytes(os.urandom(3 << 20))
    (outside / "d").mkdir()
    (outside / "d" / "f.txt").write_bytes(b"in a followed directory\n")
    (outside / "d" / "rel").symlink_to("f.txt")  # inside the followed directory: stays a link
    return src, outside


def test_outside_links_followed_inside_links_kept(tmp_repo, tmp_path):
    """Files and directories behind outside links are stored (a note per link on
    stderr, the files counted); links inside the tree, relative or absolute, stay
    links; checkout gives the content back."""
    src, outside = _tree(tmp_path)
    (src / "model.bin").symlink_to(os.path.relpath(outside / "weights.bin", src))  # relative, outside
    (src / "sub" / "dir").symlink_to(outside / "d")  # absolute, outside: a directory
    (src / "sub" / "up").symlink_to("../a.txt")  # relative, inside
    (src / "abs").symlink_to(src / "a.txt")  # absolute, inside
    proc = run_tvcfs("--repo", tmp_repo.root, "commit", src, "-m", "links")
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 2, err
    assert any("model.bin" in line and "outside" in line for line in err), err
    assert any("sub/dir" in line and "outside" in line for line in err), err
    assert all(line.startswith("tvcfs: note: ") for line in err), err
    assert b" 3 files" in proc.stdout, proc.stdout  # a.txt, model.bin, sub/dir/f.txt

    e = {p: en for p, en in tmp_repo.walk("main")}
    assert e["model.bin"].kind == KIND_FILE and e["model.bin"].size == 3 << 20
    assert e["sub/dir"].kind == KIND_DIR and e["sub/dir/f.txt"].kind == KIND_FILE
    assert e["sub/dir/rel"].kind == KIND_SYMLINK and e["sub/dir/rel"].target == "f.txt"
    assert e["sub/up"].kind == KIND_SYMLINK and e["sub/up"].target == "../a.txt"
    assert e["abs"].kind == KIND_SYMLINK and e["abs"].target == str(src / "a.txt")
    out = tmp_path / "out"
    run_tvcfs("--repo", tmp_repo.root, "checkout", "main:sub/dir", out)
    assert (out / "f.txt").read_bytes() == b"in a followed directory\n"
    got = run_tvcfs("--repo", tmp_repo.root, "cat", "main:model.bin").stdout
    assert got == (outside / "weights.bin").read_bytes()


def test_dangling_link_is_an_error_naming_it(tmp_repo, tmp_path):
    """A dangling link (outside or inside) fails the commit with one line naming
    it; nothing is committed; the same directory commits once it is fixed."""
    src, outside = _tree(tmp_path)
    (src / "sub" / "gone").symlink_to(outside / "nothing-here")
    proc = run_tvcfs("--repo", tmp_repo.root, "commit", src, "-m", "bad", ok=False)
    err = proc.stderr.decode().strip()
    assert "\n" not in err and err.startswith("tvcfs: error: "), err
    assert "sub/gone" in err and "dangling symlink" in err and "Error" not in err, err
    assert tmp_repo.head() is None
    os.unlink(src / "sub" / "gone")
    (src / "sub" / "gone").symlink_to("nowhere")  # inside, dangling: the same
    err = run_tvcfs("--repo", tmp_repo.root, "commit", src, ok=False).stderr.decode()
    assert "sub/gone" in err and "dangling" in err, err
    os.unlink(src / "sub" / "gone")
    run_tvcfs("--repo", tmp_repo.root, "commit", src, "-m", "good")
    assert sorted(e.name for e in tmp_repo.ls("main")) == ["a.txt", "sub"]


def test_cycle_of_followed_links_is_an_error(tmp_repo, tmp_path):
    """A followed directory that links back above itself cannot be stored: one line
    naming the link, nothing committed."""
    src, outside = _tree(tmp_path)
    (src / "out").symlink_to(outside)
    (outside / "back").symlink_to(tmp_path)  # above both trees
    err = run_tvcfs("--repo", tmp_repo.root, "commit", src, ok=False).stderr.decode().strip()
    assert "\n" not in err and "back" in err and "cycle" in err, err
    assert tmp_repo.head() is None
