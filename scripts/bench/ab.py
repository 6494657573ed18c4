"""A/B benchmark of two revisions on the same machine, alternating.

    python scripts/bench/ab.py --old REV --new REV [--rounds 3] -- BENCH [ARGS...]

Checks both revisions out into temporary git worktrees and runs the benchmark
command (a script under scripts/bench/ of *this* checkout, so both sides are
measured the same way) ``--rounds`` times for each, alternating old/new, with
``PYTHONPATH`` pointing at the revision's worktree (so the library and the ``tvcfs``
console script of the shared venv run that revision's code; a revision with a
``setup.py`` gets its C extensions built in place first). The benchmark must take
``--json PATH``; ``{side}`` in its arguments becomes ``old`` or ``new`` (a work
directory per side, so neither reuses a repository the other revision wrote); every numeric figure in its JSON (nested keys joined with ``.``) is
reported as the median per side and the ratio new/old.

Prints one line per figure and, with ``--json OUT``, writes ``{figure: {old, new,
ratio, old_runs, new_runs}}``. Runs are alternated so that the VM's slow drifts (page
allocation, other load) hit both sides alike; single runs here swing 2-4x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def flatten(obj, prefix="") -> dict:
    """``{"a.b": number}`` for every int/float leaf of a JSON value (bools excluded)."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = float(obj)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="the baseline revision")
    ap.add_argument("--new", default="HEAD", help="the revision measured against it")
    ap.add_argument("--rounds", type=int, default=3, help="runs per side (medians)")
    ap.add_argument("--json", help="write the comparison here")
    ap.add_argument("bench", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS]: the benchmark")
    a = ap.parse_args()
    bench = a.bench[1:] if a.bench[:1] == ["--"] else a.bench
    if not bench:
        ap.error("name the benchmark after --")
    tmp = tempfile.mkdtemp(prefix="tvcfs-ab-")
    trees = {}
    try:
        for side, rev in (("old", a.old), ("new", a.new)):
            path = os.path.join(tmp, side)
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", path, rev], check=True)
            trees[side] = path
            if os.path.exists(os.path.join(path, "setup.py")):  # its compiled modules, in place
                print(f"== building {side}'s C extensions", flush=True)
                subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=path,
                               check=True, stdout=subprocess.DEVNULL)
        runs: dict = {"old": [], "new": []}
        for r in range(a.rounds):
            for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
                out = os.path.join(tmp, f"{side}-{r}.json")
                env = dict(os.environ, PYTHONPATH=trees[side])
                print(f"== round {r + 1}/{a.rounds}: {side} ({a.old if side == 'old' else a.new})", flush=True)
                argv = [x.replace("{side}", side) for x in bench]  # e.g. --workdir /tmp/w-{side}
                subprocess.run([sys.executable, *argv, "--json", out], env=env, check=True)
                with open(out) as f:
                    runs[side].append(flatten(json.load(f)))
        keys = sorted(set(runs["old"][0]) & set(runs["new"][0]))
        result = {}
        for k in keys:
            old = [x[k] for x in runs["old"] if k in x]
            new = [x[k] for x in runs["new"] if k in x]
            mo, mn = statistics.median(old), statistics.median(new)
            result[k] = {"old": mo, "new": mn, "ratio": (mn / mo) if mo else None,
                         "old_runs": old, "new_runs": new}
            ratio = f"{mn / mo:6.3f}" if mo else "   n/a"
            print(f"{k:50s} old {mo:12.4g}  new {mn:12.4g}  new/old {ratio}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=1)
        return 0
    finally:
        for path in trees.values():
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
