"""Run the notebook suite headless: ``python -m helpers.suite --profile P [--only 01,02] [-p name=value ...]``.

Each notebook runs with papermill under the profile (its ``profile`` parameter), writing an executed
copy to ``<out>/<profile>/`` (never over the committed notebook). A failing notebook is reported with
its failing cell and the others still run. Afterwards ``supplementary/<profile>/`` is rebuilt from
the records. The preflight also checks that the cache's filesystem has the disk the run will add
(:func:`helpers.cache.disk_needed`). Exit code: 0 all passed, 1 a notebook failed, 2 the profile cannot run on this machine.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from helpers import cache, experiments, profiles, report, settings
from helpers.core import config, storage
from helpers.core.errors import DatasetError

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
            raise settings.ConfigError(f"--only {sorted(unknown)}: no such notebook in {NOTEBOOKS_DIR} "
                             f"(have {[p.name for p in found]})")
        found = [p for p in found if p.name[:2] in wanted]
    return found


def parse_params(items: list[str]) -> dict:
    """``-p`` items as ``{"dotted.key": value}`` (values are YAML): ``models=[openai:RN50]``,
    ``clip_finetune.train.epochs=3``, ``clip_finetune.wise_ft=null`` (switches WiSE-FT off)."""
    return dict(settings.parse_assignment(item) for item in items)


def offline_message(profile: str, problems: list[str]) -> str:
    lines = [f"Profile '{profile}' cannot run on this machine; nothing was started:"]
    lines += [f"  - {p}" for p in problems]
    if any("ownload" in p or "reached" in p for p in problems):  # only where a download is the problem
        lines += ["To start anyway (e.g. a proxy this check cannot pass): add --skip-preflight",
                  "Without network, run the embedded profile:   python -m helpers.suite --profile smoke",
                  "or real EuroSAT with models that need no download: python -m helpers.suite --profile offline"]
    return "\n".join(lines)


@functools.cache
def _kernel_manager():
    """Kernels talk to the suite over Unix sockets in Jupyter's private runtime folder, not loopback
    TCP: no port open to other local users, and no "Kernel is running over TCP without encryption"
    warning from ipykernel 7 for every notebook. TCP where Unix sockets do not exist (Windows)."""
    from jupyter_client.manager import KernelManager
    from traitlets import default

    if os.name == "nt":
        return KernelManager

    class LocalSocketKernelManager(KernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

    return LocalSocketKernelManager


def run_notebook(path: Path, out_dir: Path, parameters: dict) -> NotebookRun:
    """Execute one notebook with papermill. Its executed copy appears whole or not at all: papermill
    writes to a hidden file that is renamed once it is complete JSON (a full disk or a kill never
    leaves a truncated notebook where the summary points)."""
    import json

    import papermill as pm

    start = time.perf_counter()
    final, partial = out_dir / path.name, out_dir / f".{path.stem}.running.ipynb"
    try:
        pm.execute_notebook(str(path), str(partial), parameters=parameters, cwd=str(path.parent),
                            progress_bar=False, log_output=False, kernel_name="python3",
                            kernel_manager_class=_kernel_manager())
        run = NotebookRun(path.stem, time.perf_counter() - start, True)
    except pm.PapermillExecutionError as e:
        run = NotebookRun(path.stem, time.perf_counter() - start, False, f"cell {e.exec_count}: {e.ename}: {e.evalue}")
    except Exception as e:  # kernel died, notebook unreadable, disk full, ...
        run = NotebookRun(path.stem, time.perf_counter() - start, False, f"{type(e).__name__}: {e}")
    finally:
        try:
            json.loads(partial.read_text())
            os.replace(partial, final)
        except (OSError, ValueError):
            partial.unlink(missing_ok=True)
    return run


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


def trainings(profile: str, since: str) -> str:
    """Every training the run did, read from what its records state: records created since ``since``
    whose ``protocol.training`` (or notebook 07's ``protocol.expert.training``) says epochs were trained
    by that call (``ran``; a reused finished checkpoint is not a training)."""
    from helpers.results import records

    done: dict[tuple, dict] = {}
    for r in records.read_records(profile=profile, skipped=[]):
        p = r.get("protocol") or {}
        for t in (p.get("training"), (p.get("expert") or {}).get("training")):
            if r.get("created", "") >= since and isinstance(t, dict) and t.get("ran"):
                done[(r["experiment"], t["what"])] = t
    if not done:
        return "trainings in this run: none (no notebook trained, or each reused its finished checkpoint or recorded results)"
    lines = [f"trainings in this run ({len(done)}):"]
    for (exp, what), t in done.items():
        resumed = f", resumed at epoch {t['resumed_from_epoch']}" if t.get("resumed_from_epoch") else ""
        lines.append(f"  {exp[:2]}  {what}: {t['epochs_trained']} epoch(s){resumed}, {t['seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.suite", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default=config.profile_name(),
                    help=f"a bundled profile ({', '.join(profiles.available())}) or the path of your own YAML")
    ap.add_argument("--dataset", default=None, metavar="PATH",
                    help="the dataset of every notebook: a folder in any supported layout, a card (.yaml) or a "
                         "bundled card name; the same as -p dataset=PATH")
    ap.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,02")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting by dotted key with a YAML value, repeatable: -p clip_finetune.train.epochs=3")
    ap.add_argument("--show-config", action="store_true",
                    help="print every setting (value, default, type, meaning) after overrides, and exit")
    ap.add_argument("--out", type=Path, default=None, help="folder for executed notebooks (default <output>/runs)")
    ap.add_argument("--no-report", action="store_true", help="skip rebuilding supplementary/")
    ap.add_argument("--skip-preflight", action="store_true",
                    help="start without checking data, weights, download hosts and free disk first (a "
                         "notebook that lacks them then fails on its own)")
    args = ap.parse_args(argv)

    try:  # the whole configuration is validated before anything starts
        params = parse_params(args.param)
        profile = profiles.load(args.profile, params, dataset=args.dataset)
        selected = notebooks(args.only.split(",") if args.only else None)
    except settings.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.show_config:
        print(f"# profile {profile.name} ({profile.path})" + (f" with {len(params)} override(s)" if params else ""))
        print(settings.describe(profile.config))
        return 0
    problems = [] if args.skip_preflight else profile.preflight([p.name[:2] for p in selected])
    splits = None
    if not problems and not args.skip_preflight:
        try:  # the dataset's layout, classes and splits are checked once, before anything is written
            splits = profile.dataset()
        except (DatasetError, OSError) as e:
            print(f"error: dataset {profile.config.dataset.label()}: {e}", file=sys.stderr)
            return 2
    out_dir = (args.out or config.output_root() / "runs") / profile.name
    try:  # every folder the run writes, checked before any work (and only made when nothing else is wrong)
        for folder, what, var in ((out_dir, "executed notebooks", None),
                                  (config.results_dir(profile.name), "results", "CLIPLAB_OUT"),
                                  (config.pics_dir(profile.name), "figures", "CLIPLAB_OUT"),
                                  (config.cache_dir(), "cache", "CLIPLAB_CACHE")):
            if not problems:
                storage.ensure_writable_dir(folder, what, var)
    except storage.NotWritableError as e:
        problems.append(str(e))
    if splits is not None and not problems:  # the disk the run adds to the cache (formula: cache.disk_needed)
        short = cache.disk_problem(profile.settings, {s: len(v) for s, v in splits.items()},
                                   [p.name[:2] for p in selected])
        if short:
            problems.append(short)
    if args.skip_preflight:
        print("preflight skipped (--skip-preflight): missing data, weights or network fail in the notebook "
              "that needs them", file=sys.stderr)
    if problems:
        print(offline_message(profile.name, problems), file=sys.stderr)
        return 2
    registry = experiments.by_id()
    skipped = {p.stem: registry[p.stem].lacks(splits) for p in selected if p.stem in registry and splits}
    skipped = {k: v for k, v in skipped.items() if v}
    for stem, lacking in skipped.items():
        print(f"skip   {stem}: dataset {profile.config.dataset.label()} has no {' / '.join(lacking)} split "
              f"(it has {', '.join(splits)})", file=sys.stderr)
    selected = [p for p in selected if p.stem not in skipped]
    os.environ["CLIPLAB_PROFILE"] = str(profile.path) if profile.path.parent != profiles.PROFILES_DIR else profile.name

    runs = []
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")  # as records' "created"
    bar = tqdm(selected, desc=f"suite [{profile.name}]", unit="notebook")
    try:
        for path in bar:
            bar.set_postfix_str(path.stem)
            run = run_notebook(path, out_dir, {"profile": args.profile, "dataset": args.dataset, "overrides": params})
            runs.append(run)
            bar.write(f"{'ok    ' if run.ok else 'FAILED'} {path.stem} ({run.seconds:.1f} s){'' if run.ok else ': ' + run.error}")
    except KeyboardInterrupt:  # records written so far stay; a rerun resumes what can be resumed
        bar.close()
        print(f"\ninterrupted during {path.stem}: the records written so far are kept; run the same command "
              "again to resume (finished trainings and cached features are reused)", file=sys.stderr)
        print(summary(runs) if runs else "no notebook finished", file=sys.stderr)
        return 130
    bar.close()
    print("\n" + summary(runs))
    print("\n" + trainings(profile.name, started))
    print(f"\nexecuted notebooks: {out_dir}")
    if not args.no_report:  # the exit code speaks of the notebooks; a report that fails says so and why
        try:
            written = report.build(profile.name)
            print(f"report: {written['report.pdf']} (+ {', '.join(k for k in written if k != 'report.pdf')})")
        except Exception as e:  # noqa: BLE001 (any failure here must not hide the notebooks' result)
            print(f"warning: the report could not be rebuilt ({type(e).__name__}: {e}); the records are intact: "
                  f"python -m helpers.report --profile {profile.name}", file=sys.stderr)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
