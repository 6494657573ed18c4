"""Names shared by ``tvcfs import-hf`` and the mount's ``MNT/hf/`` view: Hugging
Face cache folder names, HF revisions ↔ tvcfs branches and tags, and the 40-hex
commit id a tvcfs commit has in the cache layout (docs/mount.md, "The Hugging Face
cache view").

The layout is huggingface_hub's (``file_download.py``)::

    CACHE/models--org--name/refs/REVISION            the commit hash, no newline
    CACHE/models--org--name/snapshots/HASH/PATH       the files of that commit
    CACHE/models--org--name/blobs/ETAG               (what snapshot links point to)

A revision is what a user passes as ``revision=``: ``main``, a tag ``v1``, a pull
request ``refs/pr/1`` (so its ref file is ``refs/refs/pr/1``), or a commit hash.
"""

from __future__ import annotations

import hashlib
import re

from ..refs import HEADS, TAGS

COMMIT_HASH = re.compile(r"[0-9a-f]{40}")  # huggingface_hub's REGEX_COMMIT_HASH
IMPORTED = "hf.imported"  # meta key: {repo_id: {"prefix", "snapshots": {hash: CID}, "refs": {rev: hash}}}
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# Ref namespaces the Hub keeps under refs/ (refs/pr/N, refs/convert/parquet): a
# branch "pr/1" is revision "refs/pr/1"
_HUB_NAMESPACES = ("pr", "convert")
_VERSION = re.compile(r"v?\d+(\.\d+)*([-+._][0-9A-Za-z.+_-]*)?")


def git_blob_sha1(size: int):
    """A ``hashlib.sha1`` object holding git's blob header (``blob SIZE\\0``): fed the
    ``size`` bytes of a file, its ``hexdigest()`` is the file's git blob id (40 hex),
    the name the Hugging Face Hub and its cache give a file not stored in LFS."""
    return hashlib.sha1(b"blob %d\0" % size)


def folder_name(repo_id: str, repo_type: str = "model") -> str:
    """``models--org--name`` for ``org/name`` (huggingface_hub's ``repo_folder_name``)."""
    return "--".join([f"{repo_type}s", *repo_id.split("/")])


def parse_folder(name: str) -> tuple[str, str] | None:
    """``(repo_type, repo_id)`` of a cache folder name, or ``None`` if it is not one."""
    kind, sep, rest = name.partition("--")
    if not sep or kind not in REPO_TYPES or not rest:
        return None
    return REPO_TYPES[kind], rest.replace("--", "/")


def ref_of_revision(rev: str, tags=(), branches=()) -> tuple[str, str]:
    """The tvcfs ref ``("branch" | "tag", short name)`` for HF revision ``rev``:
    ``refs/pr/1`` → branch ``pr/1``, ``refs/heads/x`` → branch ``x``,
    ``refs/tags/x`` → tag ``x``; a plain name is a branch unless it is in ``tags``
    or looks like a version (``v1``, ``1.2.0``, ``v2-rc1``) and is not in
    ``branches`` (the cache does not say which a name was)."""
    if rev.startswith(HEADS):
        return "branch", rev[len(HEADS):]
    if rev.startswith(TAGS):
        return "tag", rev[len(TAGS):]
    if rev.startswith("refs/"):
        return "branch", rev[len("refs/"):]
    if rev in branches:
        return "branch", rev
    if rev in tags or _VERSION.fullmatch(rev):
        return "tag", rev
    return "branch", rev


def revision_of_ref(kind: str, name: str) -> str:
    """The HF revision of a tvcfs branch or tag (the inverse of
    :func:`ref_of_revision`): branch ``pr/1`` → ``refs/pr/1``, else the name."""
    if kind == "branch" and name.split("/", 1)[0] in _HUB_NAMESPACES and "/" in name:
        return "refs/" + name
    return name


def commit_id(cid: bytes, commit) -> str:
    """The 40-hex id of commit ``cid`` (decoded: ``commit``) in the cache layout:
    the Hugging Face commit hash it was imported from (``metadata["hf"]["commit"]``),
    else the first 40 hex digits of its CID's sha-256 digest. Either matches
    huggingface_hub's ``REGEX_COMMIT_HASH``, so ``revision=ID`` works offline."""
    hf = commit.metadata.get("hf") if isinstance(commit.metadata, dict) else None
    if isinstance(hf, dict) and isinstance(hf.get("commit"), str) and COMMIT_HASH.fullmatch(hf["commit"]):
        return hf["commit"]
    return bytes(cid[-32:]).hex()[:40]


def repos(store) -> dict:
    """``{repo_id: ref prefix}`` of the Hugging Face repositories this repository
    holds: ``hf.repo_id`` (configuration) with prefix ``""`` (its plain branches and
    tags), and every other repository ``tvcfs import-hf`` imported, with the prefix
    its refs got (``org/name/``). ``store``: an ``LMDBStore`` or write transaction."""
    from ..config import RepoConfig

    out = {}
    primary = RepoConfig(store).get("hf.repo_id")
    if primary:
        out[primary] = ""
    for rid, rec in RepoConfig(store).get(IMPORTED).items():
        if rid not in out and rec.get("prefix"):
            out[rid] = rec["prefix"]
    return out


def revisions(refs: dict, prefix: str, other_prefixes=()) -> dict:
    """``{HF revision: commit CID}`` of one repository from the tvcfs refs ``refs``
    (``{full ref name: CID}``): its branches and tags under ``prefix``, leaving out
    those under ``other_prefixes`` (other repositories' namespaces). A branch wins
    over a tag of the same revision."""
    out: dict = {}
    for base, kind in ((TAGS, "tag"), (HEADS, "branch")):
        for ref, cid in refs.items():
            if not ref.startswith(base) or cid is None or cid.startswith(b"ref: "):
                continue
            name = ref[len(base):]
            if not name.startswith(prefix) or any(p and p != prefix and name.startswith(p)
                                                  for p in other_prefixes):
                continue
            out[revision_of_ref(kind, name[len(prefix):])] = cid
    return out
