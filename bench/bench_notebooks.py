"""Wall time of whole notebooks at an earlier commit and at a later one, measured in one run.

For each notebook (``--only``), first at ``--base`` and then at ``--this`` (default HEAD), each in a git
worktree of its commit (so editing this tree meanwhile changes nothing): ``python -m helpers.suite --profile P --only N --skip-preflight --no-report -p ...`` with a fresh,
empty ``CLIPLAB_CACHE`` and ``CLIPLAB_OUT`` of its own (features, checkpoints and inductor's cache all
cold, as on a user's first run), the same data folder, the same Python and packages, and ``PYTHONPATH``
naming the tree under test so the kernels import its ``helpers`` (checked before the run). The
notebook's wall time is the suite call's; the training seconds are read from the records it wrote.

    python bench/bench_notebooks.py --base a2a3fc6 --only 05,06 --profile offline \\
        -p baselines.train.epochs=2 -p clip_finetune.train.epochs=2 [--no-record]

The last line prints ``ratios: 05=base/this ...`` (> 1: the later commit is faster). The numbers are appended
as a record of experiment ``bench_notebooks`` to ``<CLIPLAB_OUT>/supplementary/bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _check_imports(tree: Path, env: dict) -> None:
    """The kernels must import the ``helpers`` of the tree under test, not the installed one."""
    where = subprocess.run([sys.executable, "-c", "import helpers; print(helpers.__file__)"], cwd=tree / "notebooks",
                           env=env, check=True, capture_output=True, text=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"helpers would be imported from {where}, not from {tree}: is PYTHONPATH honoured?")


def train_seconds(out: Path) -> float:
    """Sum of the training seconds the records of one run state (one per trained model)."""
    seen, total = set(), 0.0
    for f in (out / "supplementary").glob("*/results/*.jsonl"):
        for line in f.read_text().splitlines():
            p = json.loads(line).get("protocol") or {}
            key = (p.get("checkpoint"), p.get("train_seconds"))
            if p.get("train_seconds") is not None and key not in seen:
                seen.add(key)
                total += float(p["train_seconds"])
    return round(total, 2)


def run_notebook(tree: Path, nb: str, args, scratch: Path) -> dict:
    cache, out = scratch / "cache", scratch / "out"
    env = {**os.environ, "CLIPLAB_CACHE": str(cache), "CLIPLAB_OUT": str(out), "PYTHONPATH": str(tree)}
    _check_imports(tree, env)
    cmd = [sys.executable, "-m", "helpers.suite", "--profile", args.profile, "--only", nb, "--skip-preflight",
           "--no-report", *[a for p in args.param for a in ("-p", p)]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"notebook {nb} failed in {tree} (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {"wall_s": round(seconds, 2), "train_s": train_seconds(out)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    ap.add_argument("--this", default="HEAD", help="the later commit (default HEAD)")
    ap.add_argument("--only", default="05,06", help="notebooks, comma-separated (default 05,06)")
    ap.add_argument("--profile", default="offline")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for both runs, as the suite takes it (e.g. fewer epochs)")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append a record")
    args = ap.parse_args(argv)

    base_rev, head_rev = git("rev-parse", args.base), git("rev-parse", args.this)
    scratch = Path(tempfile.mkdtemp(prefix="bench-notebooks-"))
    trees = {"base": scratch / "base", "this": scratch / "this"}
    for name, rev in (("base", base_rev), ("this", head_rev)):
        git("worktree", "add", "--detach", str(trees[name]), rev)
    times: dict[str, dict] = {}
    load_at_start = os.getloadavg()[0]
    try:
        for nb in args.only.split(","):
            times[nb] = {}
            for name, tree in trees.items():
                print(f"notebook {nb} at {name} ({tree}) ...", flush=True)
                times[nb][name] = run_notebook(tree, nb, args, scratch / f"{nb}-{name}")
                print(f"  {times[nb][name]['wall_s']:.1f} s, of which training {times[nb][name]['train_s']:.1f} s", flush=True)
                shutil.rmtree(scratch / f"{nb}-{name}", ignore_errors=True)
    finally:
        for tree in trees.values():
            git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(scratch, ignore_errors=True)
    ratios = {nb: round(t["base"]["wall_s"] / t["this"]["wall_s"], 3) for nb, t in times.items()}
    for nb, t in times.items():
        b, h = t["base"], t["this"]
        print(f"{nb}: {b['wall_s']:8.1f} s at {base_rev[:8]} -> {h['wall_s']:8.1f} s at {head_rev[:8]} "
              f"(wall time {h['wall_s'] / b['wall_s'] - 1:+.0%}); "
              f"training {b['train_s']:.1f} -> {h['train_s']:.1f} s")
    if not args.no_record:
        from helpers.results import records

        protocol = {"base_commit": base_rev, "this_commit": head_rev,
                    "profile": args.profile, "overrides": args.param, "order": "base then this, per notebook",
                    "caches": "fresh and empty for every run (features, checkpoints, inductor)",
                    "cpu_count": os.cpu_count(), "load_average_1min_at_start": round(load_at_start, 2),
                    "load_average_1min_at_end": round(os.getloadavg()[0], 2)}
        rec = records.make_record("bench_notebooks", {"seconds": times, "ratios": ratios}, protocol=protocol,
                                  dataset={"name": f"the {args.profile} profile's dataset"}, profile="bench",
                                  variant=f"{args.profile} {args.only} {base_rev[:8]}->{head_rev[:8]}")
        print(f"record appended to {records.append_record(rec)}")
    print("ratios: " + " ".join(f"{nb}={r:.2f}" for nb, r in ratios.items()))
    return times


if __name__ == "__main__":
    main()
