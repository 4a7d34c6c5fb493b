"""``supplementary/<profile>/`` rebuilt from result records only: results table (CSV, Markdown) and a report.

The report (Markdown, HTML and PDF) opens with one summary per dataset (models x regimes, the best of
each column marked, the best tested against the runner-up on the same test images), then has one
section per experiment of the registry: a protocol of a few lines, compact tables (seeds aggregated
to mean and 95% CI, one metric family per table, untrained weights left out and counted), its
figures and a link to its executed notebook; an appendix holds the full protocol cards. The HTML
embeds its figures; the PDF is written with fpdf2 and fonts that ship with matplotlib, so it needs
no network and no system packages. Nothing the report shows holds an absolute path of the machine.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import re
import warnings
from collections import Counter
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from helpers import experiments
from helpers.core import config, storage
from helpers.eval import metrics, probes
from helpers.results import records, tables

NO_PER_IMAGE = "n/a: no per-image predictions recorded"
UNTRAINED_WHY = "untrained weights prove the code path, they are not results"


# ----------------------------------------------------------------------------- the summary
def _comparison_cells(recs: list[dict], dataset: str | None) -> tuple[dict[tuple[str, str], list[dict]], list[str]]:
    """{(model spec, column): its newest records (one per seed)} of the side-by-side table, and the
    columns in the registry's order."""
    recs = [r for r in recs if dataset is None or r.get("dataset", {}).get("name") == dataset]
    names = {r.get("dataset", {}).get("name") for r in recs}
    if len(names) > 1:
        raise ValueError(f"comparison_table: records of several datasets {sorted(map(str, names))}; name one")
    registry = experiments.by_id()
    columns = list(dict.fromkeys(c for e in registry.values() for c in e.comparison_columns))
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in {r["key"]: r for r in recs if "key" in r}.values():
        exp = registry.get(r["experiment"])
        col = exp.comparison(r) if exp and exp.comparison else None
        if col is None or r["dataset"].get("split") != "test" or "top1" not in r.get("metrics", {}):
            continue
        cells.setdefault((r["model"].get("spec"), col), []).append(r)
    return cells, columns


def comparison_table(recs: list[dict], dataset: str | None = None) -> pd.DataFrame:
    """CLIP and ImageNet models side by side on one dataset's test split (``dataset``; None: every
    record must be of one dataset): test top-1 (mean over seeds) of each regime an experiment declares
    (``Experiment.comparison``), from the newest record of each result. Datasets are never averaged."""
    cells, columns = _comparison_cells(recs, dataset)
    rows = []
    for spec in dict.fromkeys(s for s, _ in cells):
        row = {"model": spec}
        for col in columns:
            found = cells.get((spec, col))
            if found:
                row[col] = ("untrained" if any(r.get("untrained") for r in found)
                            else round(probes.mean_ci([r["metrics"]["top1"] for r in found])[0], 4))
            else:
                row[col] = ""
        rows.append(row)
    used = [c for c in columns if any(r.get(c, "") != "" for r in rows)]
    return pd.DataFrame(rows, columns=["model", *used])


def summary_rows(side: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The side-by-side table as a reader sees it: rows of untrained weights left out (named), models
    by their short names, the best number of each column marked with ★."""
    cols = [c for c in side.columns if c != "model"]
    trained = side[cols].apply(lambda row: any(isinstance(v, float) for v in row), axis=1)
    left_out = [records.short_model(m) for m in side.loc[~trained, "model"]]
    shown = side[trained].copy()
    shown["model"] = [records.short_model(m) for m in shown["model"]]
    for col in cols:
        values = [v for v in shown[col] if isinstance(v, float)]
        if values:
            best = max(values)
            shown[col] = [f"{v:.4f} ★" if isinstance(v, float) and v == best and len(values) > 1 else
                          (f"{v:.4f}" if isinstance(v, float) else v) for v in shown[col]]
    return shown.reset_index(drop=True), left_out


def _seed(rec: dict):
    seeds = rec.get("seeds") or [None]
    return seeds[0] if len(seeds) == 1 else tuple(seeds)


def paired_test(recs_a: list[dict], recs_b: list[dict]) -> dict:
    """Model A against model B on the same test images: McNemar's exact test on each seed both have
    (the largest p over seeds is reported: the difference holds on every seed at that level) and a
    paired bootstrap 95% CI of the accuracy gap (images resampled, each image's correctness averaged
    over the seeds). ``why`` says why there is no test when there is none."""
    a = {_seed(r): r for r in recs_a}
    b = {_seed(r): r for r in recs_b}
    common = [s for s in a if s in b]
    pairs, why = [], NO_PER_IMAGE
    for s in common:
        ca, cb = records.correctness(a[s]), records.correctness(b[s])
        if ca is None or cb is None:
            continue
        same = (a[s]["per_image"].get("test_set") == b[s]["per_image"].get("test_set") and ca.shape == cb.shape)
        if not same:
            why = "n/a: not measured on the same test images"
            continue
        pairs.append((ca, cb))
    if not common:
        why = "n/a: no seed in common"
    if not pairs:
        return {"why": why}
    tests = [metrics.mcnemar_exact(ca, cb) for ca, cb in pairs]
    gap, lo, hi = metrics.paired_bootstrap_ci(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    return {"p_value": max(t["p_value"] for t in tests), "seeds": len(pairs), "gap": gap, "ci": (lo, hi),
            "a_only": sum(t["a_only"] for t in tests), "b_only": sum(t["b_only"] for t in tests), "n": tests[0]["n"]}


def paired_rows(recs: list[dict], dataset: str) -> pd.DataFrame:
    """For each column of the summary with two or more trained models: the best against the
    runner-up, the gap in top-1 with its paired 95% CI and McNemar's exact p (or why there is none)."""
    cells, columns = _comparison_cells(recs, dataset)
    rows = []
    for col in columns:
        ranked = sorted(((probes.mean_ci([r["metrics"]["top1"] for r in found])[0], spec)
                         for (spec, c), found in cells.items()
                         if c == col and not any(r.get("untrained") for r in found)), reverse=True)
        if len(ranked) < 2:
            continue
        (top, best), (second, runner) = ranked[:2]
        test = paired_test(cells[(best, col)], cells[(runner, col)])
        row = {"regime": col, "best": records.short_model(best), "runner-up": records.short_model(runner)}
        if "why" in test:
            row.update({"gap in top-1 (95% CI)": f"{top - second:+.4f}", "McNemar exact p": test["why"]})
        else:
            lo, hi = test["ci"]
            p = f"{test['p_value']:.2g}" if test["p_value"] >= 1e-4 else "< 1e-4"
            row.update({"gap in top-1 (95% CI)": f"{top - second:+.4f} ({lo:+.4f} … {hi:+.4f})",
                        "McNemar exact p": f"{p} ({test['a_only']} vs {test['b_only']} images"
                                           + (f", max over {test['seeds']} seeds)" if test["seeds"] > 1 else ")")})
        rows.append(row)
    return pd.DataFrame(rows)


def _summary_blocks(all_recs: list[dict]) -> list[tuple[str, object]]:
    blocks: list[tuple[str, object]] = []
    datasets = list(dict.fromkeys(r.get("dataset", {}).get("name") for r in all_recs if "key" in r))
    for name in datasets:
        side = comparison_table(all_recs, name)
        if len(side.columns) <= 1 or side.empty:
            continue
        shown, left_out = summary_rows(side)
        test = next((r["dataset"] for r in reversed(all_recs) if r["dataset"].get("name") == name
                     and r["dataset"].get("split") == "test"), {})
        blocks += [("h2", f"Summary — {name}: which feature extractor serves it best"),
                   ("p", f"Test top-1 on {name} ({test.get('n_images', '?')} test images, "
                         f"{len(test.get('classes', []))} classes) of each model under each regime; k-shot cells are "
                         "means over seeds; ★ marks the best of each column. Each cell comes from the records of the "
                         "experiment named by its column (the sections below give the protocols).")]
        blocks.append(("table", shown) if not shown.empty else
                      ("p", "No trained model has results here yet: every model so far has untrained weights."))
        if left_out:
            blocks.append(("p", f"Left out: {', '.join(left_out)} — {UNTRAINED_WHY}."))
        blocks.append(("p", _summary_protocol(all_recs, name)))
        paired = paired_rows(all_recs, name)
        if not paired.empty:
            blocks += [("p", "Best against runner-up of each column on the same test images: the gap in top-1 with a "
                             "paired bootstrap 95% CI (images resampled), and McNemar's exact test, a two-sided binomial "
                             "test on the images only one of the two gets right (their numbers in brackets: only the "
                             "best right vs only the runner-up right)."), ("table", paired)]
        blocks += [("image", f) for f in headline_figures(all_recs, name)]
    return blocks


def _summary_protocol(recs: list[dict], dataset: str) -> str:
    """One line under a summary: which experiment fills each column, over how many seeds."""
    cells, columns = _comparison_cells(recs, dataset)
    parts = []
    for col in columns:
        found = [r for (_, c), rs in cells.items() if c == col for r in rs if not r.get("untrained")]
        if not found:
            continue
        exps = sorted({r["experiment"][:2] for r in found})
        seeds = max(len({_seed(r) for (s, c), rs in cells.items() if c == col for r in rs if s == spec})
                    for spec in {r["model"].get("spec") for r in found})
        parts.append(f"{col} from {'/'.join(exps)}" + (f" (mean of {seeds} seeds)" if seeds > 1 else ""))
    return ("Protocol: " + "; ".join(parts) + ". Test images are never used to choose prompts, C, epochs or alpha "
            "(val decides); each experiment's section states its protocol in full.") if parts else ""


def headline_figures(recs: list[dict], dataset: str) -> list[Path]:
    """The figures that carry the study (each experiment's ``headline``), of trained results on ``dataset``."""
    registry = experiments.by_id()
    out: dict[Path, None] = {}
    for r in recs:
        exp = registry.get(r.get("experiment"))
        if exp is None or exp.headline is None or r.get("untrained") or r.get("dataset", {}).get("name") != dataset:
            continue
        for f in r.get("figures", []):
            path = config.output_root() / f
            if exp.headline(str(f)) and path.is_file():
                out[path] = None
    return list(out)


# ----------------------------------------------------------------------------- per experiment
def _title(experiment: str) -> str:
    exp = experiments.by_id().get(experiment)
    return exp.title if exp else experiment


def _short(value, limit: int = 110) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _transform_text(card) -> str:
    if not isinstance(card, dict):
        return str(card)
    mean = tuple(round(float(x), 3) for x in card.get("mean", ()))
    norm = {(0.481, 0.458, 0.408): "CLIP mean/std", (0.485, 0.456, 0.406): "ImageNet mean/std"}.get(mean)
    parts = [f"resize {card['resize']}" if card.get("resize") else "",
             f"{card['crop']} crop" if card.get("crop") else "", card.get("interpolation", ""),
             norm or (f"mean {list(mean)}" if mean else ""), card.get("augment", "")]
    return ", ".join(p for p in parts if p)


def _templates_text(value) -> str:
    if isinstance(value, list):
        return (f"'{value[0]}'" if len(value) == 1 else
                f"{len(value)} templates averaged ('{value[0]}', …)") if value else "none"
    if isinstance(value, dict):
        return f"{len(value)} template sets ({', '.join(value)})"
    return f"template set '{value}'"


def _split_text(ds: dict) -> str:
    sp = ds.get("split_protocol") or {}
    parts = [str(sp["source"])] if sp.get("source") else []
    if isinstance(sp.get("restored"), dict):
        rp = sp["restored"]
        parts.append(f"downscaled x{rp.get('factor')} and restored to {rp.get('target')} px by each upsampler")
    if sp.get("selection"):
        parts.append(str(sp["selection"]))
    return "; ".join(parts)


def _split_sizes(recs: list[dict]) -> str:
    """What the records say about the other splits: val from a recorded val card, train from a probe
    fitted on all of it, a caption split as stated."""
    sizes = {}
    for r in recs:
        p, f = r.get("protocol", {}), tables.report_facets(r)
        val = p.get("val_split")
        if isinstance(val, dict) and val.get("n_images"):
            sizes["val"] = val["n_images"]
        if str(f.get("k")) == "all" and (f.get("n_train") or p.get("n_train")):
            sizes["train (+ val for the full probe)"] = f.get("n_train") or p.get("n_train")
        if isinstance(p.get("split"), str):
            sizes["caption split"] = p["split"]
    return "; ".join(f"{k} {v}" for k, v in sizes.items())


def _protocol_lines(recs: list[dict]) -> list[str]:
    """What was run, in a few lines, from the records' protocol cards (newest record of each key)."""
    lines = []
    datasets: dict[tuple, dict] = {}
    for r in recs:
        ds = r.get("dataset", {})
        datasets[(ds.get("name"), ds.get("split"), ds.get("n_images"))] = ds
    for (name, split, n), ds in datasets.items():
        how = _split_text(ds)
        classes = "" if "caption" in str(ds.get("layout")) else f" in {len(ds.get('classes', []))} classes"
        lines.append(f"Data: {name} ({ds.get('layout')}), {split} split of {n} images{classes}"
                     + (f" ({how})" if how else "") + ".")
    other = _split_sizes(recs)
    if other:
        lines.append(f"Other splits: {other}.")
    models, derived = {}, {}
    for r in recs:
        m = r.get("model") or {}
        name = records.short_model(m.get("spec", ""))
        if "|" in name:  # made in memory from a model above (WiSE-FT weights, caption fine-tuning)
            base, _, how = name.partition("|")
            derived.setdefault(base, []).append(how)
        elif name:
            models[name] = m
    shown = []
    for name, m in models.items():
        facts = [m["weights_sha256"][:8] if m.get("weights_sha256") else "",
                 str(m["status"]) if m.get("status") not in (None, "n/a") else ""]
        facts = [f for f in facts if f]
        shown.append(name + (f" ({', '.join(facts)})" if facts else ""))
    lines.append(f"Models: {'; '.join(shown)}" + "".join(
        f"; from {base}: {', '.join(dict.fromkeys(how))}" for base, how in derived.items()) + ".")
    for key, what in (("transform", "Transform"), ("train_transform", "Training transform")):
        found = dict.fromkeys(_transform_text(r["protocol"][key]) for r in recs if key in r.get("protocol", {}))
        if found:
            lines.append(f"{what}: {' | '.join(found)}.")
    prompts = dict.fromkeys(_templates_text(r["protocol"][k]) for r in recs for k in ("template_sets", "templates")
                            if k in r.get("protocol", {}) and not (k == "templates" and "template_sets" in r["protocol"]))
    if prompts:
        lines.append(f"Prompts: {' | '.join(prompts)}.")
    last = recs[-1].get("protocol", {})
    for key, what in (("head", "Head"), ("probe", "Probe"), ("selection", "Selection"),
                      ("alpha_selection", "Alpha selection"), ("metrics", "Metrics")):
        if key in last and isinstance(last[key], str):
            lines.append(f"{what}: {last[key]}.")
    seeds = sorted({s for r in recs for s in (r.get("seeds") or [])}, key=str)
    commits = Counter(str((r.get("git") or {}).get("commit"))[:7] + ("+" if (r.get("git") or {}).get("dirty") else "")
                      for r in recs)
    env = recs[-1].get("environment", {})
    lines.append(f"Seeds: {', '.join(map(str, seeds)) or 'none recorded'}; git {', '.join(commits)}"
                 f"{' (+: uncommitted changes)' if any(c.endswith('+') for c in commits) else ''}; "
                 f"torch {recs[-1].get('versions', {}).get('torch')} on {env.get('device')} ({env.get('autocast')} autocast).")
    return lines


def _groups(recs: list[dict], across_datasets: bool) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in recs:
        ds = r.get("dataset", {})
        key = ("all",) if across_datasets else (ds.get("name"), ds.get("split"), ds.get("n_images"))
        out.setdefault(key, []).append(r)
    return out


def _where(key: tuple) -> str:
    return "" if key == ("all",) else f" — {key[0]}, {key[1]} split ({key[2]} images)"


def experiment_tables(exp, recs: list[dict]) -> list[tuple[str, object]]:
    """The tables of one experiment's trained results: one per metric family (and dataset)."""
    blocks: list[tuple[str, object]] = []
    by_family: dict[str, list[dict]] = {}
    for r in recs:
        fam = tables.family(r)
        if fam:
            by_family.setdefault(fam, []).append(r)
    for key, group in _groups(by_family.get("restoration", []), False).items():
        factor = tables.value_of(group[0], "factor")
        table, _ = tables.metric_table(group, tables.RESTORATION, ["model"])
        blocks += [("h3", f"Restoration quality{f' (x{factor})' if factor else ''}{_where(key)}"),
                   ("p", "PSNR and SSIM of each upsampler against the original images, mean ± 95% CI over images."),
                   ("table", table.rename(columns={"model": "upsampler"}))]
    for key, group in _groups(by_family.get("retrieval", []), False).items():
        table, note = tables.metric_table(group, tables.RETRIEVAL, ["model", *tables.varying(group)])
        blocks += [("h3", f"Retrieval{_where(key)}"),
                   ("p", "Recall@K both ways: i2t = image→text (an image is a hit when one of its captions is among "
                         f"its K nearest), t2i = text→image; {note}."), ("table", table)]
    group_all = by_family.get("classification", [])
    pivot = getattr(exp, "pivot", None)
    summarise = getattr(exp, "summarise", None)
    for key, group in _groups(group_all, bool(pivot and "dataset" in pivot.columns)).items():
        if pivot is not None:
            table, note = tables.pivot(group, pivot.rows, pivot.columns, pivot.metric)
            what = f"Test {tables.label(pivot.metric)} by {' · '.join(pivot.columns)}"
        else:
            table = None
            if summarise is not None and summarise is not tables.seed_summary:
                try:
                    table, note = summarise(group), "the experiment's own summary of its results"
                except (KeyError, TypeError, ValueError) as e:  # a record lacking a metric: the plain table
                    warnings.warn(f"report: {exp.id} records do not summarise ({type(e).__name__}: {e}); "
                                  "showing them one per row", stacklevel=2)
            if table is None:
                table, note = tables.metric_table(group, tables.CLASSIFICATION, ["model", *tables.varying(group)])
            what = "Classification"
        blocks += [("h3", f"{what}{_where(key)}"), ("p", f"Cells: {note}."), ("table", table)]
    return blocks


def _experiment_blocks(exp_id: str, recs: list[dict], notebooks: dict[str, Path]) -> list[tuple[str, object]]:
    exp = experiments.by_id().get(exp_id)
    blocks: list[tuple[str, object]] = [("h2", _title(exp_id))]
    blocks += [("p", line) for line in _protocol_lines(recs)]
    if exp_id in notebooks:
        blocks.append(("link", (f"Executed notebook: {notebooks[exp_id].name}", notebooks[exp_id])))
    untrained = [r for r in recs if r.get("untrained")]
    trained = [r for r in recs if not r.get("untrained")]
    if untrained:
        specs = ", ".join(dict.fromkeys(records.short_model(r["model"].get("spec", "")) for r in untrained))
        blocks.append(("p", f"Left out of the tables: {len(untrained)} result{'s' if len(untrained) > 1 else ''} of "
                            f"untrained weights ({specs}); {UNTRAINED_WHY}. Their figures are stamped UNTRAINED."))
    tables_ = experiment_tables(exp, trained) if trained else []
    if not tables_:
        blocks.append(("p", "No table: this experiment has no results of trained weights yet."))
    blocks += tables_
    for f in dict.fromkeys(f for r in recs for f in r.get("figures", [])):
        path = config.output_root() / f
        if path.is_file():
            blocks.append(("image", path))
    return blocks


# ----------------------------------------------------------------------------- the appendix
def _card_lines(recs: list[dict]) -> list[str]:
    """The full protocol card of an experiment's results: data, models, protocol, software, runs."""
    lines = []
    for ds in {(r["dataset"].get("name"), r["dataset"].get("split"), r["dataset"].get("fingerprint")): r["dataset"]
               for r in recs}.values():
        counts = ", ".join(f"{k} {v}" for k, v in (ds.get("counts") or {}).items())
        lines += [f"dataset {ds.get('name')}/{ds.get('split')}: {ds.get('n_images')} images, layout {ds.get('layout')}, "
                  f"root {ds.get('root')}", f"  fingerprint {ds.get('fingerprint')}",
                  f"  split protocol {_short(ds.get('split_protocol'), 400)}",
                  f"  classes ({len(ds.get('classes', []))}): {_short(counts, 400)}"]
    for m in {r["model"].get("spec"): r["model"] for r in recs if r.get("model", {}).get("spec")}.values():
        meta = m.get("meta") if isinstance(m.get("meta"), dict) else {}
        initial = meta.get("initial") if isinstance(meta.get("initial"), dict) else {"spec": meta.get("initial")}
        facts = {"status": m.get("status"), "sha256": m.get("weights_sha256"), "parameters": m.get("n_params"),
                 "image tower": m.get("image_tower"), "input px": m.get("input_resolution"),
                 "file": Path(m["source_file"]).name if m.get("source_file") else None,
                 "objective": meta.get("objective"), "tuned from": initial.get("spec"),
                 "tuned from sha256": initial.get("weights_sha256")}
        lines.append(f"model {m.get('spec')}: "
                     + "; ".join(f"{k} {v}" for k, v in facts.items() if v not in (None, "")))
    keys = list(dict.fromkeys(k for r in recs for k in r.get("protocol", {}) if k != "history"))
    same, varies = [], []
    for k in keys:
        values = [json.dumps(r["protocol"][k], sort_keys=True, default=str) if k in r.get("protocol", {})
                  else "(absent)" for r in recs]
        (same if len(set(values)) == 1 else varies).append(k)
    for k in same:
        lines.append(f"protocol {k}: {_short(recs[0]['protocol'][k], 600)}")
    if varies:
        lines.append(f"protocol per result (see the records): {', '.join(varies)}")
    if any("history" in r.get("protocol", {}) for r in recs):
        lines.append("training history per epoch: in the records (protocol.history)")
    versions = Counter(json.dumps(r.get("versions", {}), sort_keys=True) for r in recs)
    for v, n in versions.items():
        lines.append(f"versions ({n} result{'s' if n > 1 else ''}): "
                     + ", ".join(f"{k} {x}" for k, x in json.loads(v).items()))
    commits = Counter(f"{(r.get('git') or {}).get('commit')}{' (uncommitted changes)' if (r.get('git') or {}).get('dirty') else ''}"
                      for r in recs)
    lines += [f"git {c}: {n} result{'s' if n > 1 else ''}" for c, n in commits.items()]
    envs = Counter(json.dumps(r.get("environment", {}), sort_keys=True) for r in recs)
    for e in envs:
        lines.append("environment: " + ", ".join(f"{k} {x}" for k, x in json.loads(e).items()))
    created = sorted(str(r.get("created")) for r in recs)
    wall = sum(float(r.get("wall_time_s") or 0) for r in recs)
    lines.append(f"records: {len(recs)}, created {created[0]} … {created[-1]}, recorded wall time {wall:,.0f} s "
                 "(a shared encoding or training counts once per result that used it)")
    metric_names = sorted({k for r in recs for k in r.get("metrics", {})})
    lines.append(f"metrics recorded: {', '.join(metric_names)}")
    n_per_image = sum(1 for r in recs if records.correctness(r) is not None)
    lines.append(f"per-image correctness: {n_per_image} of {len(recs)} results")
    return lines


# ----------------------------------------------------------------------------- the report
def sections(profile: str, notebooks: dict[str, Path] | None = None) -> list[tuple[str, object]]:
    """The report as blocks: ("h1"|"h2"|"h3"|"p"|"mono", text), ("table", DataFrame), ("image", path),
    ("link", (text, path)). ``notebooks``: executed notebooks' HTML by experiment id, linked."""
    notebooks = notebooks or {}
    skipped: list[tuple] = []
    all_recs = records.read_records(profile=profile, skipped=skipped)
    blocks: list[tuple[str, object]] = [
        ("h1", f"CLIP lab report — profile '{profile}'"),
        ("p", f"Built {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC from {len(all_recs)} result records "
              f"in supplementary/{profile}/results/. Every number below comes from those records; the appendix "
              "holds each experiment's full protocol card."),
    ]
    if not all_recs:
        blocks.append(("p", "No records yet: run the suite first."))
        return blocks
    blocks += _summary_blocks(all_recs)
    latest = list({r["key"]: r for r in all_recs if "key" in r}.values())
    by_exp: dict[str, list[dict]] = {}
    for r in latest + [r for r in all_recs if "key" not in r]:
        by_exp.setdefault(r["experiment"], []).append(r)
    order = [e.id for e in experiments.registry() if e.id in by_exp] + sorted(set(by_exp) - set(experiments.by_id()))
    for exp in order:
        blocks += _experiment_blocks(exp, by_exp[exp], notebooks)
    blocks.append(("h2", "Appendix A — protocol cards"))
    blocks.append(("p", "Everything the records state about how each experiment's results were obtained, paths "
                        "written from $CLIPLAB_DATA or $CLIPLAB_CACHE or as file names. The records themselves are in "
                        f"supplementary/{profile}/results/."))
    for exp in order:
        blocks += [("h3", _title(exp)), ("mono", "\n".join(_card_lines(by_exp[exp])))]
    no_top1 = [r for r in all_recs if tables.family(r) is None]
    if skipped or no_top1:
        blocks.append(("h2", "Appendix B — records left out or incomplete"))
        for name, line, why in skipped:
            blocks.append(("p", f"results/{name} line {line}: not a usable record ({why}); left out."))
        for r in no_top1:
            blocks.append(("p", f"{r['experiment']} {r.get('variant') or ''} on {r['dataset'].get('name')}: no top-1 "
                                "in its metrics; shown without it."))
    return [(kind, _public(value)) for kind, value in blocks]


def _public(value):
    """No absolute path of the machine that ran the suite in what the report shows: paths under the
    cache or data folder are written from those roots, any other by its file name."""
    if isinstance(value, pd.DataFrame):
        if value.empty:
            return value
        out = value.map(_public)
        out.columns = [_public(str(c)) for c in value.columns]
        return out
    if isinstance(value, tuple):  # a link: its text is shown, its target is a file the report points to
        return (_public(value[0]), value[1])
    if not isinstance(value, str):
        return value
    value = config.portable(value)  # cache and data folders as the records write them
    roots = [(str(config.output_root()), "."), (str(Path.home()), "~")]

    def short(m):
        path = m.group(0)
        for root, name in roots:
            if path.startswith(root + "/"):
                return name + path[len(root):]
        return Path(path).name or path

    return re.sub(r"(?<![\w.$~/])/(?:[\w.@+-]+/)*[\w.@+-]+", short, value)


# ----------------------------------------------------------------------------- renderings
def to_markdown(blocks, base: Path) -> str:
    out = []
    for kind, value in blocks:
        if kind == "h1":
            out.append(f"# {value}\n")
        elif kind == "h2":
            out.append(f"\n## {value}\n")
        elif kind == "h3":
            out.append(f"### {value}\n")
        elif kind == "p":
            out.append(f"{value}\n")
        elif kind == "mono":
            out.append(f"```text\n{value}\n```\n")
        elif kind == "link":
            out.append(f"[{value[0]}]({_relpath(value[1], base)})\n")
        elif kind == "table":
            out.append(value.to_markdown(index=False) + "\n")
        elif kind == "image":
            out.append(f"![{Path(value).stem}]({_relpath(value, base)})\n")
    return "\n".join(out)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def to_html(blocks, base: Path) -> str:
    """One self-contained page: figures embedded (base64 PNG), headings anchored, a contents list."""
    body, contents = [], []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            anchor = _anchor(value)
            if kind == "h2":
                contents.append(f'<li><a href="#{anchor}">{html.escape(str(value))}</a></li>')
            body.append(f'<{kind} id="{anchor}">{html.escape(str(value))}</{kind}>')
        elif kind == "p":
            body.append(f"<p>{html.escape(str(value))}</p>")
        elif kind == "mono":
            body.append(f"<pre>{html.escape(str(value))}</pre>")
        elif kind == "link":
            body.append(f'<p><a href="{html.escape(_relpath(value[1], base))}">{html.escape(value[0])}</a></p>')
        elif kind == "table":
            body.append(value.to_html(index=False, border=0, classes="results"))
        elif kind == "image":
            data = base64.b64encode(Path(value).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(Path(value).stem)}">'
                        f"<figcaption>{html.escape(Path(value).name)}</figcaption></figure>")
    if contents and len(body) > 1:
        body.insert(2, f"<nav><ul>{''.join(contents)}</ul></nav>")
    style = ("body{font-family:sans-serif;max-width:62em;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table.results{border-collapse:collapse;font-size:85%;margin:0.5em 0 1em}"
             "table.results td,table.results th{border-bottom:1px solid #ccc;padding:2px 8px;text-align:left}"
             "pre{font-size:75%;white-space:pre-wrap;background:#f6f6f6;padding:0.6em}"
             "figure{margin:1em 0}figure img{max-width:100%}figcaption{font-size:75%;color:#555}"
             "h3{margin-bottom:0.2em}nav ul{columns:2;font-size:90%}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>CLIP lab report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def to_pdf(blocks, base: Path | None = None) -> bytes:
    """An A4 PDF of the blocks (fpdf2; DejaVu Sans and Sans Mono from matplotlib for full Unicode)."""
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_font("DejaVu", "", str(font_dir / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(font_dir / "DejaVuSans-Bold.ttf"))
    pdf.add_font("DejaVuMono", "", str(font_dir / "DejaVuSansMono.ttf"))
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    summaries_done = False
    for kind, value in blocks:
        if kind == "h1":
            pdf.set_font("DejaVu", "B", 16)
            pdf.multi_cell(width, 8, str(value), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        elif kind == "h2":
            summary = str(value).startswith("Summary")
            if (not summary and not (summaries_done and str(value).startswith("Appendix B"))) or pdf.get_y() > pdf.h * 0.6:
                pdf.add_page()  # summaries share page 1; each experiment starts a page
            else:
                pdf.ln(3)
            summaries_done = summaries_done or not summary
            pdf.set_font("DejaVu", "B", 13)
            pdf.multi_cell(width, 7, str(value), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        elif kind == "h3":
            if pdf.get_y() > pdf.h - pdf.b_margin - 30:
                pdf.add_page()
            pdf.ln(1.5)
            pdf.set_font("DejaVu", "B", 10)
            pdf.multi_cell(width, 5, str(value), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(0.5)
        elif kind == "p":
            pdf.set_font("DejaVu", "", 8.5)
            # ragged right: fpdf2 justifies by default, which spreads lines of long model names apart
            pdf.multi_cell(width, 4.2, str(value), new_x="LMARGIN", new_y="NEXT", align="L")
            pdf.ln(0.8)
        elif kind == "mono":
            pdf.set_font("DejaVuMono", "", 6.3)
            pdf.multi_cell(width, 3.1, str(value), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1.5)
        elif kind == "link":
            pdf.set_font("DejaVu", "", 8.5)
            pdf.set_text_color(20, 60, 160)
            target = _relpath(value[1], base) if base is not None else str(value[1])
            pdf.write(4.2, str(value[0]), link=target)
            pdf.set_text_color(0, 0, 0)
            pdf.ln(5)
        elif kind == "table":
            _pdf_table(pdf, value, width, FontFace)
        elif kind == "image":
            from PIL import Image

            with Image.open(value) as im:
                w_px, h_px = im.size
            w = min(width, w_px / 150 * 25.4)  # figures are saved at 150 dpi: keep their physical size
            h = w * h_px / w_px
            if h > pdf.h - 2 * pdf.t_margin - 10:
                h = pdf.h - 2 * pdf.t_margin - 10
                w = h * w_px / h_px
            if pdf.get_y() + h > pdf.h - pdf.b_margin:
                pdf.add_page()
            pdf.image(str(value), x=pdf.l_margin + (width - w) / 2, w=w, h=h)
            pdf.ln(3)
    return bytes(pdf.output())


def _pdf_table(pdf, df: pd.DataFrame, width: float, FontFace) -> None:
    """A table whose columns are as wide as their content asks; when the page is too narrow for
    that, only the widest columns give way (their text wraps), down to their longest header word."""
    size = 6.5 if len(df.columns) > 7 else 7.5
    cells = [[str(c) for c in df.columns]] + [[_cell(v) for v in row] for _, row in df.iterrows()]
    pdf.set_font("DejaVu", "B", size)
    floor = [min(40.0, max((pdf.get_string_width(w) for w in name.split()), default=0) + 2.5) for name in cells[0]]
    pdf.set_font("DejaVu", "", size)
    # no column narrower than its longest word (up to 40 mm): short names such as "pil-bilinear" never break
    floor = [max(f, min(40.0, max((pdf.get_string_width(w) for r in cells[1:] for w in r[j].split()), default=0) + 2.5))
             for j, f in enumerate(floor)]
    want = [max(max((pdf.get_string_width(r[j]) for r in cells[1:]), default=0) + 2.5, floor[j], 8)
            for j in range(len(cells[0]))]
    room = width - 0.5
    if sum(want) > room:  # the largest cap c with sum(min(want, max(c, floor))) <= room
        lo, hi = 0.0, max(want)
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if sum(min(w, max(mid, f)) for w, f in zip(want, floor, strict=True)) <= room else (lo, mid)
        want = [min(w, max(lo, f)) for w, f in zip(want, floor, strict=True)]
        if sum(want) > room:
            want = [w * room / sum(want) for w in want]
    pdf.ln(1)
    with pdf.table(headings_style=FontFace(emphasis="BOLD"), line_height=size * 0.5, text_align="LEFT",
                   width=sum(want), col_widths=want, align="LEFT") as t:
        for row in cells:
            t.row(row)
    pdf.ln(2)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def _relpath(path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


# ----------------------------------------------------------------------------- executed notebooks
def export_notebook_html(notebook: Path, page: Path) -> Path:
    """``page``: an executed notebook as one HTML file with its outputs and images, by nbconvert (no
    TeX involved); written atomically."""
    import nbconvert
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = nbconvert.HTMLExporter(template_name="classic").from_notebook_node(nb)
    return storage.atomic_write_text(page, body)


def notebook_pages(runs: Path, folder: Path) -> dict[str, Path]:
    """Executed notebooks of ``runs`` as HTML in ``folder`` (``supplementary/<profile>/notebooks/``,
    beside the report that links them) by notebook stem, exported where the page is missing or older
    than its notebook; pages already there for notebooks not rerun on this machine are kept and linked.
    A notebook that cannot be exported is left unlinked with a warning."""
    out = {page.stem: page for page in sorted(Path(folder).glob("[0-9][0-9]_*.html"))} if Path(folder).is_dir() else {}
    for nb in sorted(Path(runs).glob("[0-9][0-9]_*.ipynb")) if Path(runs).is_dir() else []:
        page = Path(folder) / f"{nb.stem}.html"
        try:
            if not page.is_file() or page.stat().st_mtime < nb.stat().st_mtime:
                storage.ensure_writable_dir(Path(folder), "executed notebooks (HTML)", "CLIPLAB_OUT")
                export_notebook_html(nb, page)
            out[nb.stem] = page
        except Exception as e:  # noqa: BLE001 (a notebook that does not export must not stop the report)
            warnings.warn(f"report: {nb.name} could not be exported to HTML ({type(e).__name__}: {e})", stacklevel=2)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.report --profile P``: rebuild supplementary/P/ from its records alone."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m helpers.report", description=main.__doc__.split(":")[0])
    ap.add_argument("--profile", default=config.profile_name(), help="the profile whose records to report")
    ap.add_argument("--runs", type=Path, default=None,
                    help="folder of the executed notebooks to link (default <output>/runs/<profile>)")
    args = ap.parse_args(argv)
    written = build(args.profile, runs=args.runs)
    print(f"report: {written['report.pdf']} (+ {', '.join(k for k in written if k != 'report.pdf')})")
    return 0


def build(profile: str | None = None, runs: Path | None = None) -> dict[str, Path]:
    """Rebuild every file of ``supplementary/<profile>/`` from its records; returns what was written.
    ``runs``: the executed notebooks to link (default ``<output>/runs/<profile>``)."""
    profile = profile or config.profile_name()
    folder = storage.ensure_writable_dir(config.supplementary_dir(profile), "report", "CLIPLAB_OUT")
    blocks = sections(profile, notebook_pages(runs or config.output_root() / "runs" / profile, folder / "notebooks"))
    table = _public(records.results_frame(records.read_records(profile=profile, skipped=[])))
    written = {
        "results.csv": storage.atomic_write_text(folder / "results.csv", table.to_csv(index=False)),
        "results.md": storage.atomic_write_text(
            folder / "results.md", table.to_markdown(index=False) + "\n" if not table.empty else "No results yet.\n"),
        "report.md": storage.atomic_write_text(folder / "report.md", to_markdown(blocks, folder)),
        "report.html": storage.atomic_write_text(folder / "report.html", to_html(blocks, folder)),
        "report.pdf": storage.atomic_write_bytes(folder / "report.pdf", to_pdf(blocks, folder)),
    }
    return written


if __name__ == "__main__":
    raise SystemExit(main())
