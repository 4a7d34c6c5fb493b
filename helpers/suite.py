"""Run the notebook suite headless: ``python -m helpers.suite --profile P [--only 01,02] [-p name=value ...]``.

Each notebook runs with papermill under the profile (its ``profile`` parameter), writing an executed
copy to ``<out>/<profile>/`` (never over the committed notebook). A failing notebook is reported with
its failing cell and the others still run. Afterwards ``supplementary/<profile>/`` is rebuilt from
the records. Exit code: 0 all passed, 1 a notebook failed, 2 the profile cannot run on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from . import config, profiles, report

NOTEBOOKS_DIR = config.PROJECT_ROOT / "notebooks"


@dataclass
class NotebookRun:
    name: str
    seconds: float
    ok: bool
    error: str = ""


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The suite's notebooks in order (``NN_name.ipynb``), optionally only those whose NN is listed."""
    found = sorted(p for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {o.strip().zfill(2) for o in only if o.strip()}
        unknown = wanted - {p.name[:2] for p in found}
        if unknown:
            raise SystemExit(f"--only {sorted(unknown)}: no such notebook in {NOTEBOOKS_DIR} "
                             f"(have {[p.name for p in found]})")
        found = [p for p in found if p.name[:2] in wanted]
    return found


def parse_params(items: list[str]) -> dict:
    """``name=value`` pairs; values are YAML (``models=[openai:RN50]``, ``batch_size=32``, ``x=text``)."""
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.isidentifier():
            raise SystemExit(f"-p {item!r}: use name=value with a Python identifier as name")
        out[name] = yaml.safe_load(value)
    return out


def offline_message(profile: str, problems: list[str]) -> str:
    lines = [f"Profile '{profile}' cannot run on this machine; nothing was started:"]
    lines += [f"  - {p}" for p in problems]
    lines += ["To start anyway (e.g. a proxy this check cannot pass): add --skip-preflight",
              "Without network, run the embedded profile:   python -m helpers.suite --profile smoke",
              "or real EuroSAT with models that need no download: python -m helpers.suite --profile offline"]
    return "\n".join(lines)


def run_notebook(path: Path, out_dir: Path, parameters: dict) -> NotebookRun:
    import papermill as pm

    start = time.perf_counter()
    try:
        pm.execute_notebook(str(path), str(out_dir / path.name), parameters=parameters, cwd=str(path.parent),
                            progress_bar=False, log_output=False, kernel_name="python3")
        return NotebookRun(path.stem, time.perf_counter() - start, True)
    except pm.PapermillExecutionError as e:
        error = f"cell {e.exec_count}: {e.ename}: {e.evalue}"
        return NotebookRun(path.stem, time.perf_counter() - start, False, error)
    except Exception as e:  # kernel died, notebook unreadable, ...
        return NotebookRun(path.stem, time.perf_counter() - start, False, f"{type(e).__name__}: {e}")


def summary(runs: list[NotebookRun]) -> str:
    width = max([len(r.name) for r in runs] + [8])
    lines = [f"{'notebook':<{width}}  result  seconds", f"{'-' * width}  ------  -------"]
    for r in runs:
        lines.append(f"{r.name:<{width}}  {'ok' if r.ok else 'FAILED':<6}  {r.seconds:7.1f}")
    total = sum(r.seconds for r in runs)
    lines.append(f"{'total':<{width}}  {sum(r.ok for r in runs)}/{len(runs)} ok  {total:6.1f}")
    for r in runs:
        if not r.ok:
            lines.append(f"\n{r.name} failed at {r.error}\n  executed copy with the traceback: see the output folder")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.suite", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default=config.profile_name(), choices=profiles.available())
    ap.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,02")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                    help="notebook parameter (YAML value), repeatable")
    ap.add_argument("--out", type=Path, default=None, help="folder for executed notebooks (default <output>/runs)")
    ap.add_argument("--no-report", action="store_true", help="skip rebuilding supplementary/")
    ap.add_argument("--skip-preflight", action="store_true",
                    help="start without checking data, weights and download hosts first (a notebook that "
                         "lacks them then fails on its own)")
    args = ap.parse_args(argv)

    params = parse_params(args.param)
    profile = profiles.load(args.profile, **{k: v for k, v in params.items() if k in ("models", "templates")})
    problems = [] if args.skip_preflight else profile.preflight()
    if args.skip_preflight:
        print("preflight skipped (--skip-preflight): missing data, weights or network fail in the notebook "
              "that needs them", file=sys.stderr)
    if problems:
        print(offline_message(args.profile, problems), file=sys.stderr)
        return 2
    selected = notebooks(args.only.split(",") if args.only else None)
    out_dir = (args.out or config.output_root() / "runs") / args.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["CLIPLAB_PROFILE"] = args.profile  # also for code the notebooks start

    runs = []
    bar = tqdm(selected, desc=f"suite [{args.profile}]", unit="notebook")
    for path in bar:
        bar.set_postfix_str(path.stem)
        run = run_notebook(path, out_dir, {"profile": args.profile, **params})
        runs.append(run)
        bar.write(f"{'ok    ' if run.ok else 'FAILED'} {path.stem} ({run.seconds:.1f} s){'' if run.ok else ': ' + run.error}")
    bar.close()
    print("\n" + summary(runs))
    print(f"\nexecuted notebooks: {out_dir}")
    if not args.no_report:
        written = report.build(args.profile)
        print(f"report: {written['report.pdf']} (+ {', '.join(k for k in written if k != 'report.pdf')})")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
