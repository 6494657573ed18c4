"""Importing the Hugging Face cache (``tvcfs import-hf``; docs/repository.md,
"Importing the Hugging Face cache").

Every complete snapshot of a cached model repository becomes one commit (its files
read through the snapshot's blob links), whose metadata records
``{"hf": {"repo_id": "org/name", "commit": HASH}}``; every ref file becomes a branch
or a tag (:func:`tvcfs.hf.layout.ref_of_revision`). Which commit each snapshot
became is recorded in the repository (meta ``hf.imported``), so importing again
stores only snapshots not imported yet and moves only refs that moved.

History is not in the cache, so it is reconstructed: the snapshots that ``main``
and tags point to or that no ref points to form the main line, oldest first by the
snapshot directory's time, with ``refs/main``'s snapshot last (it is the newest
main); a snapshot that only another branch (``refs/pr/N``) points to gets as parent
the main-line snapshot before it in time. A commit's timestamp is its snapshot's
time and its author fixed (:data:`AUTHOR`), so the same cache gives the same
commits in any repository.

A snapshot is *incomplete* when a link in it dangles (its blob is gone), leads out of
its repository's folder or to something else than a file (a cache made or changed
by hand: importing it would read any file of the machine), or a blob it
links to does not hash to its name (truncated or damaged: huggingface_hub names a
blob by the sha-256 of an LFS file or the git blob sha-1 of another; checked for
the snapshots an import reads, before it reads them): it is not imported (never a
truncated commit) and reported. A ref naming a snapshot that is not in the cache
(an interrupted download) is reported too, and its branch or tag is not set to it. A ``blobs/*.incomplete`` file (an
interrupted download) is reported too. A snapshot holding fewer files than
huggingface_hub's listing of its commit (``trees/HASH.json``) names — a download
limited by patterns, or files fetched one by one — is imported as it is, with a
note; files downloaded into an imported snapshot later make it import again, as a
commit on top of the first.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from ..encoding.cid import cid_from_str, cid_str
from ..encoding.commit import Commit
from ..errors import TvcfsError
from ..formatting import short_cid
from ..importer import Importer
from ..refs import HEADS, TAGS, InvalidRefName, check_name
from .layout import COMMIT_HASH, IMPORTED, folder_name, git_blob_sha1, parse_folder, ref_of_revision

AUTHOR_NAME = "Hugging Face cache"  # the author of imported commits (email empty)
AUTHOR = (AUTHOR_NAME, "")


def default_cache_dir(env=None) -> str:
    """The Hugging Face hub cache huggingface_hub uses (``constants.HF_HUB_CACHE``):
    ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    env = os.environ if env is None else env
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return os.path.expanduser(os.path.expandvars(env[var]))
    if env.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.path.expandvars(env["HF_HOME"])), "hub")
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


@dataclass
class Snapshot:
    """One ``snapshots/HASH/`` directory: ``time`` (Unix seconds, the directory's
    mtime); ``missing``: why it is incomplete (``["PATH: …", …]``: dangling links;
    empty when complete); ``absent``: files huggingface_hub's listing of the commit
    names that were not downloaded (a download limited by patterns, or single
    files: imported as they are); ``fingerprint``: a digest of its entries (paths
    and link targets, which name blobs by content; size and mtime for plain files),
    to notice files added to an imported snapshot."""

    hash: str
    path: str
    time: int
    missing: list = field(default_factory=list)
    absent: list = field(default_factory=list)
    fingerprint: str = ""


@dataclass
class CachedRepo:
    """One ``models--org--name`` folder: ``refs`` ``{revision: hash}``, ``snapshots``
    ``{hash: Snapshot}``, ``partial_blobs``: names of ``blobs/*.incomplete`` files,
    ``bad_refs``: ``{revision: content}`` of ref files that hold no commit hash."""

    repo_id: str
    path: str
    refs: dict
    snapshots: dict
    partial_blobs: list
    bad_refs: dict = field(default_factory=dict)


def scan(cache_dir: str, repo_ids=()) -> list:
    """The model repositories of the cache at ``cache_dir`` (all, or those named in
    ``repo_ids``), as :class:`CachedRepo` sorted by ID. Raises :class:`TvcfsError`
    when the cache or a named repository is not there."""
    if not os.path.isdir(cache_dir):
        raise TvcfsError(f"no Hugging Face cache at {cache_dir}: give its path with --cache-dir "
                         "(or set HF_HUB_CACHE)")
    found = {}
    for name in sorted(os.listdir(cache_dir)):
        parsed = parse_folder(name)
        if parsed and parsed[0] == "model" and os.path.isdir(os.path.join(cache_dir, name)):
            found[parsed[1]] = os.path.join(cache_dir, name)
    if repo_ids:
        absent = [r for r in repo_ids if r not in found]
        if absent:
            raise TvcfsError(f"{', '.join(absent)}: not in the Hugging Face cache {cache_dir} (no "
                             f"{folder_name(absent[0])}/; it holds {', '.join(sorted(found)) or 'no models'})")
        found = {r: found[r] for r in repo_ids}
    return [_scan_repo(rid, path) for rid, path in sorted(found.items())]


def _scan_repo(repo_id: str, path: str) -> CachedRepo:
    refs, bad = {}, {}
    refs_dir = os.path.join(path, "refs")
    for dirpath, _, files in os.walk(refs_dir):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, encoding="utf-8", errors="replace") as fh:
                value = fh.read().strip()
            rev = os.path.relpath(p, refs_dir).replace(os.sep, "/")
            if COMMIT_HASH.fullmatch(value):
                refs[rev] = value
            else:
                bad[rev] = value
    snaps = {}
    snap_dir = os.path.join(path, "snapshots")
    if os.path.isdir(snap_dir):
        for h in sorted(os.listdir(snap_dir)):
            p = os.path.join(snap_dir, h)
            if os.path.isdir(p):
                snaps[h] = _scan_snapshot(path, h, p)
    blobs = os.path.join(path, "blobs")
    partial = sorted(b for b in os.listdir(blobs) if b.endswith(".incomplete")) if os.path.isdir(blobs) else []
    return CachedRepo(repo_id, path, refs, snaps, partial, bad)


def _scan_snapshot(repo_path: str, h: str, snap: str) -> Snapshot:
    """Read snapshot directory ``snap`` (links only, no file data): dangling links,
    files the cached listing (``trees/HASH.json``, recent huggingface_hub) names but
    the snapshot lacks, and the fingerprint of its entries."""
    missing, present, fp = [], set(), hashlib.sha256()
    # the repository's folder, and its blobs/ where that is a link to another disk
    inside = (os.path.realpath(repo_path) + os.sep, os.path.realpath(os.path.join(repo_path, "blobs")) + os.sep)
    for dirpath, dirs, files in os.walk(snap):
        dirs.sort()
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, snap).replace(os.sep, "/")
            present.add(rel)
            if os.path.islink(p):
                target = os.readlink(p)
                fp.update(f"{rel}\0L{target}\0".encode("utf-8", "surrogateescape"))
                real = os.path.realpath(p)
                if not os.path.exists(p):
                    missing.append(f"{rel}: its blob {target} is missing")
                elif not real.startswith(inside):
                    # huggingface_hub links a snapshot's files to ../../blobs/HASH: a link
                    # out of the repository's folder would import any file on the machine
                    missing.append(f"{rel}: its link leads out of {repo_path} (to {real}); "
                                   "a snapshot's files link to its blobs/")
                elif not os.path.isfile(real):
                    missing.append(f"{rel}: its blob {target} is not a file")
            else:
                st = os.lstat(p)
                fp.update(f"{rel}\0F{st.st_size}:{st.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
    try:
        with open(os.path.join(repo_path, "trees", f"{h}.json"), encoding="utf-8") as f:
            listed = json.load(f).get("files", {})
    except (OSError, ValueError, AttributeError):
        listed = {}
    absent = [rel for rel in sorted(listed) if rel not in present]
    return Snapshot(h, snap, int(os.lstat(snap).st_mtime), missing, absent, fp.hexdigest())


@dataclass
class ImportReport:
    """What importing one cached repository did. ``imported``: ``[(hash, CID)]``
    committed now; ``known``: snapshots already imported before; ``refs``:
    ``[(full ref, CID)]`` set or moved; ``warnings``: one line each (incomplete
    snapshots, interrupted downloads, refs left alone); ``notes``: one line each
    (partial downloads, snapshots imported again); ``incomplete``: how many
    snapshots were not imported for being incomplete; ``dangling_refs``: how many
    refs name no snapshot in the cache (a snapshot it lacks, or no commit hash at all);
    ``files``, ``bytes``: read;
    ``new_bytes``: stored."""

    repo_id: str
    prefix: str
    imported: list = field(default_factory=list)
    known: int = 0
    refs: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    incomplete: int = 0
    dangling_refs: int = 0
    files: int = 0
    bytes: int = 0
    new_bytes: int = 0


def import_cache(repo, cache_dir: str | None = None, repo_ids=(), tags=(), branches=(),
                 on_commit=None, progress=None) -> list:
    """Import the model repositories of a Hugging Face cache into ``repo`` (a
    :class:`tvcfs.Repo`): all, or those named in ``repo_ids``. ``tags`` /
    ``branches``: revision names to import as tags / branches whatever they look
    like. ``on_commit(repo_id, hash, cid)`` is called after each new commit;
    ``progress(snapshots done, snapshots of the repository, repo_id)`` after each snapshot.

    One repository imported into a repository without ``hf.repo_id`` (or with it
    equal) gets plain branch and tag names and sets ``hf.repo_id``; any other gets
    its refs under ``ORG/NAME/`` (branch ``org/name/main``). Returns one
    :class:`ImportReport` per repository. Raises :class:`TvcfsError` when the cache
    or a named repository is missing (nothing imported)."""

    cache_dir = cache_dir or default_cache_dir()
    cached = scan(cache_dir, repo_ids)
    if not cached:
        raise TvcfsError(f"no model repositories in the Hugging Face cache {cache_dir}")
    primary = repo.config.get("hf.repo_id")
    if primary is None and len(cached) == 1:
        primary = cached[0].repo_id
    reports = []
    for c in cached:
        prefix = "" if c.repo_id == primary else c.repo_id + "/"
        reports.append(_import_repo(repo, c, prefix, set(tags), set(branches), on_commit, progress))
    if primary and any(r.prefix == "" for r in reports):
        with repo.store.write() as w:
            if repo.config.get("hf.repo_id", w) != primary:
                repo.config.set_text("hf.repo_id", primary, w)
    return reports


def _line(c: CachedRepo, complete: dict, tags, branches) -> tuple[list, dict]:
    """``(main line [hash, …] oldest first, {side hash: parent hash | None})``."""
    main_target = c.refs.get("main")
    side = set()
    for rev, h in c.refs.items():
        kind, name = ref_of_revision(rev, tags, branches)
        if kind == "branch" and name != "main" and h != main_target:
            side.add(h)
    for rev, h in c.refs.items():  # a snapshot main or a tag points to stays on the main line
        if ref_of_revision(rev, tags, branches)[0] == "tag" or rev == "main":
            side.discard(h)
    by_time = sorted(complete.values(), key=lambda s: (s.time, s.hash))
    line = [s.hash for s in by_time if s.hash not in side and s.hash != main_target]
    if main_target in complete:
        line.append(main_target)
    parents = {}
    for s in by_time:
        if s.hash in side:
            before = [h for h in line if complete[h].time <= s.time]
            parents[s.hash] = before[-1] if before else None
    return line, parents


def _import_repo(repo, c: CachedRepo, prefix: str, tags, branches, on_commit, progress=None) -> ImportReport:
    rep = ImportReport(c.repo_id, prefix)
    for rev, value in sorted(c.bad_refs.items()):
        rep.dangling_refs += 1
        rep.warnings.append(f"{c.repo_id}: refs/{rev} in {c.path} holds {value[:60]!r}, not a commit hash "
                            "(a damaged or interrupted download): not imported")
    for b in c.partial_blobs:
        rep.warnings.append(f"{c.repo_id}: an interrupted download left blobs/{b} in {c.path}: a snapshot "
                            "may lack that file; finish the download and run tvcfs import-hf again")
    record = repo.config.get(IMPORTED).get(c.repo_id, {})
    done = {h: r for h, r in record.get("snapshots", {}).items() if repo.has(cid_from_str(r["commit"]))}
    complete = {}
    for h, s in c.snapshots.items():
        if not s.missing and (h not in done or done[h].get("files") != s.fingerprint):
            s.missing = _bad_blobs(s.path)  # to be read now: its blobs must be what their names say
        if s.missing:
            rep.incomplete += 1
            more = f" (and {len(s.missing) - 1} more)" if len(s.missing) > 1 else ""
            rep.warnings.append(f"{c.repo_id}: snapshot {h} is incomplete, not imported: {s.missing[0]}{more}; "
                                f"download it again (huggingface-cli download {c.repo_id} --revision {h}) and "
                                "run tvcfs import-hf again")
        elif COMMIT_HASH.fullmatch(h):
            complete[h] = s
    known = {h: cid_from_str(r["commit"]) for h, r in done.items()}  # a collected commit: import again
    previous = dict(known)
    line, side_parent = _line(c, complete, tags, branches)
    order = line + [h for h in side_parent]
    for i, h in enumerate(order):
        if progress is not None:
            progress(i, len(order), c.repo_id)
        s = complete[h]
        if s.absent:
            rep.notes.append(f"{c.repo_id}: snapshot {h} holds {len(s.absent)} file(s) fewer than its revision "
                             f"(a partial download, e.g. {s.absent[0]}): imported as it is")
        if h in known and done[h].get("files") == s.fingerprint:
            rep.known += 1
            continue
        if h in known:  # files were downloaded into it (or removed) since
            rep.notes.append(f"{c.repo_id}: snapshot {h} changed since it was imported: imported again, on "
                             "top of its commit")
            parents = (known[h],)
        elif h in side_parent:
            parents = (known[side_parent[h]],) if side_parent[h] is not None else ()
        else:
            parents = (known[line[i - 1]],) if i > 0 else ()
        cid = _commit_snapshot(repo, c, s, parents, prefix, rep)
        known[h] = cid
        rep.imported.append((h, cid))
        if on_commit is not None:
            on_commit(c.repo_id, h, cid)
    if progress is not None:
        progress(len(order), len(order), c.repo_id)
    _set_refs(repo, c, prefix, known, previous, line, record, tags, branches, rep)
    return rep


def _bad_blobs(snap: str) -> list:
    """``["PATH: …", …]``: the files of snapshot directory ``snap`` whose link names
    a blob whose bytes do not hash to the blob's name (64 hex: sha-256; 40 hex: git
    blob sha-1 of ``blob SIZE\\0`` + bytes; other names are not checked), or that
    cannot be read. Reads each such blob once."""
    bad, seen = [], {}
    for dirpath, dirs, files in os.walk(snap):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                continue
            blob = os.path.realpath(p)
            want = os.path.basename(blob)
            if len(want) not in (40, 64) or any(ch not in "0123456789abcdef" for ch in want):
                continue
            if blob not in seen:
                seen[blob] = _blob_problem(blob, want)
            if seen[blob]:
                bad.append(f"{os.path.relpath(p, snap).replace(os.sep, '/')}: its blob {want} {seen[blob]}")
    return bad


def _blob_problem(path: str, name: str) -> str | None:
    """``None`` when blob file ``path`` hashes to ``name`` (40 hex: git blob sha-1,
    64 hex: sha-256), else what is wrong (one phrase)."""
    try:
        size = os.path.getsize(path)
        h = git_blob_sha1(size) if len(name) == 40 else hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if h.hexdigest() != name:
        return f"({size} bytes) does not hash to its name (truncated or damaged)"
    return None


def _commit_snapshot(repo, c: CachedRepo, s: Snapshot, parents: tuple, prefix: str, rep: ImportReport) -> bytes:
    """Store snapshot ``s`` as a commit (blocks, commit and its record in
    ``hf.imported`` in one transaction); return its CID."""
    with repo.store.write() as w:
        imp = Importer(w, note=None)  # every file of a snapshot is a link out of it
        tree = imp.add_tree(s.path)[0]
        com = Commit(tree=tree, parents=parents, author_name=AUTHOR[0], author_email=AUTHOR[1],
                     message=f"{c.repo_id} {s.hash} (imported from the Hugging Face cache)",
                     timestamp=s.time, metadata={"hf": {"repo_id": c.repo_id, "commit": s.hash}})
        cid, block = com.cid_and_block()
        w.put_block(cid, block)

        def record_snapshot(allrec):
            rec = allrec.setdefault(c.repo_id, {"prefix": prefix, "snapshots": {}, "refs": {}})
            rec.setdefault("snapshots", {})[s.hash] = {"commit": cid_str(cid), "files": s.fingerprint}

        repo.config.update(IMPORTED, record_snapshot, w)
        rep.files += imp.files
        rep.bytes += imp.bytes
        rep.new_bytes += w.new_bytes
    return cid


def _set_refs(repo, c: CachedRepo, prefix: str, known: dict, previous: dict, line: list, record: dict, tags,
              branches, rep: ImportReport) -> None:
    """Point a branch or tag at each ref's commit (``known``: ``{hash: CID}`` now;
    ``previous``: before this import), in one transaction. A ref is set when it is
    new, still where the last import put it, or (a branch) fast-forwards; otherwise
    it is left alone and a warning says so."""
    old_refs = dict(record.get("refs", {}))
    new_refs = dict(old_refs)
    wanted = []
    for rev, h in sorted(c.refs.items()):
        kind, name = ref_of_revision(rev, tags, branches)
        full = (HEADS if kind == "branch" else TAGS) + prefix + name
        try:
            check_name(prefix + name, kind)
        except InvalidRefName as e:
            rep.warnings.append(f"{c.repo_id}: refs/{rev}: {e}; not imported")
            continue
        if h not in known:
            why = "incomplete" if h in c.snapshots else "not in the cache"
            if h not in c.snapshots:
                rep.dangling_refs += 1
            instead = "not set"
            if kind == "branch" and name == "main" and line:
                instead = f"set to the newest complete snapshot {line[-1]} instead"
            rep.warnings.append(f"{c.repo_id}: refs/{rev} points to snapshot {h}, which is {why}: "
                                f"{kind} {prefix + name} {instead}")
            continue
        wanted.append((rev, h, kind, full))
    if line and not any(kind == "branch" and full == HEADS + prefix + "main" for _, _, kind, full in wanted):
        # no usable refs/main: without a branch the main line would be reachable from
        # no ref (and garbage collection would take it)
        wanted.append((None, line[-1], "branch", HEADS + prefix + "main"))
    with repo.store.write() as w:
        for rev, h, kind, full in wanted:
            cid, cur = known[h], w.get_ref(full)
            if cur != cid:
                prev = previous.get(old_refs.get(rev)) if rev is not None else None
                if cur is None or cur == prev or (kind == "branch" and cur in set(repo.ancestors([cid]))):
                    w.set_ref(full, cid, cur, message=f"import-hf: {c.repo_id} {rev or 'newest snapshot'} {h}")
                    rep.refs.append((full, cid))
                else:
                    rep.warnings.append(f"{c.repo_id}: {kind} {full.split('/', 2)[2]} is at {short_cid(cur)}, "
                                        f"not the cache's {rev} ({h}): left alone (tvcfs {kind} -f "
                                        f"{full.split('/', 2)[2]} {short_cid(cid)} to move it)")
                    continue
            if rev is not None:
                new_refs[rev] = h

        def record_refs(allrec):
            rec = allrec.setdefault(c.repo_id, {"prefix": prefix, "snapshots": {}, "refs": {}})
            rec["prefix"] = prefix
            rec["refs"] = new_refs

        repo.config.update(IMPORTED, record_refs, w)
