"""``tvcfs import-hf`` (the Hugging Face cache, :mod:`tvcfs.hf.cache`) and ``tvcfs
config`` (:mod:`tvcfs.config`): argument parsing and printing only."""

from __future__ import annotations

import sys

from ..encoding.cid import cid_str
from ..formatting import human_size, short_cid
from . import open_repo


def cmd_import_hf(args):
    """``tvcfs import-hf [REPO_ID...]``: import Hugging Face cache snapshots as commits,
    printing a report per repository; exit status 1 if a snapshot was incomplete or a ref
    named none (the rest is imported), else 0."""
    from ..hf.cache import default_cache_dir, import_cache
    from .progress import progress_bar

    cache_dir = args.cache_dir or default_cache_dir()
    with open_repo(args) as repo, progress_bar(args, "import-hf", unit="snapshots") as bar:
        reports = import_cache(
            repo, cache_dir, args.repo_ids, tags=args.tag, branches=args.branch,
            on_commit=lambda rid, h, cid: print(f" {rid} {h[:12]} -> {short_cid(cid)}", flush=True),
            progress=bar)
    incomplete = dangling = 0
    for r in reports:
        for n in r.notes:
            print(f"tvcfs: note: {n}", file=sys.stderr)
        for w in r.warnings:
            print(f"tvcfs: warning: {w}", file=sys.stderr)
        print(f"{r.repo_id}: {len(r.imported)} snapshots imported, {r.known} already imported"
              + (f", {r.incomplete} incomplete (not imported)" if r.incomplete else "")
              + f"; {r.files} files, {human_size(r.bytes)} read, {human_size(r.new_bytes)} new")
        for full, cid in r.refs:
            kind, name = ("branch", full[len("refs/heads/"):]) if full.startswith("refs/heads/") else \
                ("tag", full[len("refs/tags/"):])
            print(f" {kind} {name} -> {cid_str(cid)}")
        incomplete += r.incomplete
        dangling += r.dangling_refs
    if incomplete or dangling:
        what = [f"{incomplete} incomplete snapshot(s) in {cache_dir} were not imported"] if incomplete else []
        what += [f"{dangling} ref(s) name no snapshot in {cache_dir}"] if dangling else []
        print(f"tvcfs: error: {'; '.join(what)} (see the warnings above; download again and rerun tvcfs "
              "import-hf); everything else was imported", file=sys.stderr)
        return 1
    return 0


def cmd_config(args):
    """``tvcfs config [--list | KEY [VALUE] | --unset KEY]``: read or set the repository's user
    settings; exit status 1 for an unset key (as git config), else 0. Raises
    :class:`~tvcfs.config.ConfigError` for an unknown key or a bad value."""
    from ..config import USER_KEYS, ConfigError

    with open_repo(args) as repo:
        if args.list:
            for k, v in repo.config.user_values().items():
                print(f"{k}={v}")
            return 0
        if not args.key:
            raise ConfigError("name a key (known: " + ", ".join(sorted(USER_KEYS)) + ") or use --list")
        if args.unset:
            repo.config.set_text(args.key, None)
            return 0
        if args.value is None:
            v = repo.config.get(args.key)
            if v is None:
                return 1  # as git config: unset prints nothing, exit 1
            print(v)
            return 0
        repo.config.set_text(args.key, args.value)
    return 0


def register(sub) -> None:
    """Add ``import-hf`` and ``config`` to the ``tvcfs`` argument parser."""
    p = sub.add_parser("import-hf", help="import models from the Hugging Face cache (every snapshot, every ref)",
                       description="Import every snapshot of the named model repositories of a Hugging Face "
                                   "cache (all if none named) as commits, and their refs (main, refs/pr/N, tags) "
                                   "as branches and tags. Importing again adds only what is new. Incomplete "
                                   "snapshots are reported and not imported (exit 1).")
    p.add_argument("repo_ids", nargs="*", metavar="REPO_ID", help="org/name (default: every model in the cache)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the cache (default: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)")
    p.add_argument("--tag", action="append", default=[], metavar="REVISION",
                   help="import this ref as a tag (default: names like v1 or 1.0 are tags, others branches)")
    p.add_argument("--branch", action="append", default=[], metavar="REVISION",
                   help="import this ref as a branch even if it looks like a version")
    p.set_defaults(func=cmd_import_hf)

    p = sub.add_parser("config", help="get or set a repository setting (hf.repo_id)",
                       description="Get (KEY) or set (KEY VALUE) a repository setting. Keys: hf.repo_id (the "
                                   "Hugging Face repository ID the mount's hf/ view shows, org/name).")
    p.add_argument("key", nargs="?", metavar="KEY")
    p.add_argument("value", nargs="?", metavar="VALUE")
    p.add_argument("--unset", action="store_true", help="remove KEY")
    p.add_argument("--list", "-l", action="store_true", help="print every set key as KEY=VALUE")
    p.set_defaults(func=cmd_config)
