"""Tables rebuilt from records: results aggregated over seeds (mean and 95% CI), untrained masked or
left out, one metric family per table (classification, retrieval, restoration)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from helpers.eval import probes
from helpers.results import records


def seed_summary(recs: list[dict], metric: str = "top1") -> pd.DataFrame:
    """Mean and 95% CI of ``metric`` over seeds, one row per model and facets other than the seed."""
    groups: dict[tuple, list[float]] = {}
    flags: dict[tuple, bool] = {}
    for r in recs:
        facets = {k: v for k, v in records.facets(r).items() if k != "seed"}
        key = (r["model"].get("spec"), tuple(sorted((k, str(v)) for k, v in facets.items())))
        groups.setdefault(key, []).append(r["metrics"][metric])
        flags[key] = bool(r.get("untrained"))
    rows = []
    for (spec, facets), values in groups.items():
        mean, lo, hi = probes.mean_ci(values)
        rows.append({"model": spec, **dict(facets), "seeds": len(values), f"{metric}_mean": round(mean, 4),
                     "ci95_low": round(lo, 4), "ci95_high": round(hi, 4), "untrained": flags[(spec, facets)]})
    return records.mask_untrained(pd.DataFrame(rows), [f"{metric}_mean", "ci95_low", "ci95_high"])


# ----------------------------------------------------------------------------- the report's tables
# What can tell two results of one experiment apart. Records written before facets existed carry them
# in their protocol; ``label`` parts of their variant string are not names and are not used.
FACET_KEYS = ("task", "head", "objective", "stage", "regime", "role", "upsampler", "factor", "size", "space",
              "match_temperature", "alpha", "k", "classnames", "templates", "chosen_on_val", "seed")
_LEGACY_HEADS = ("zero-shot", "linear probe", "zero-shot-init probe")
NOT_ROWS = ("seed", "n_train")  # never a row of their own: seeds are aggregated, n_train follows k

LABELS = {"top1": "top-1", "top5": "top-5", "balanced_accuracy": "balanced acc.", "ece": "ECE",
          "val_top1": "val top-1", "best_val_top1": "val top-1 (best epoch)", "mean_recall": "mean recall",
          "psnr": "PSNR (dB)", "ssim": "SSIM", "n": "images"}
CLASSIFICATION = ("top1", "top5", "balanced_accuracy", "ece", "val_top1", "best_val_top1")
RETRIEVAL = tuple(f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)) + ("mean_recall",)
RESTORATION = ("psnr", "ssim", "n")


def label(metric: str) -> str:
    return LABELS.get(metric) or metric.replace("image_to_text_", "i2t ").replace("text_to_image_", "t2i ")


def family(rec: dict) -> str | None:
    """The metric family a record belongs to: "retrieval", "restoration", "classification" or None."""
    m = rec.get("metrics", {})
    if any("_R@" in k for k in m):
        return "retrieval"
    if "psnr" in m:
        return "restoration"
    return "classification" if "top1" in m else None


def report_facets(rec: dict) -> dict:
    """A record's facets; for a record from before facets existed, the facet-like scalars of its
    protocol and the ``key=value`` parts of its variant."""
    if rec.get("facets") is not None:
        return dict(rec["facets"])
    parsed = records.facets(rec)
    out = {k: v for k, v in parsed.items() if not k.startswith("label")}
    for k in FACET_KEYS:
        v = rec.get("protocol", {}).get(k)
        if k not in out and isinstance(v, (str, int, float, bool)):
            out[k] = v
    if "head" not in out and parsed.get("label") in _LEGACY_HEADS:
        out["head"] = parsed["label"]
    return out


def value_of(rec: dict, key: str):
    """``model`` (short name), ``dataset`` (name) or a facet of the record (None when it has none)."""
    if key == "model":
        return records.short_model(rec.get("model", {}).get("spec", ""))
    if key == "dataset":
        return rec.get("dataset", {}).get("name")
    return report_facets(rec).get(key)


def varying(recs: list[dict], keys=None) -> list[str]:
    """The facets whose values differ between ``recs`` (in FACET_KEYS order, then the others), without
    seeds and facets that only repeat the model's name."""
    keys = keys or list(dict.fromkeys([*FACET_KEYS, *(k for r in recs for k in report_facets(r))]))
    out = []
    for k in keys:
        if k in NOT_ROWS:
            continue
        values = [value_of(r, k) for r in recs]
        if len({str(v) for v in values}) > 1 and any(str(v) != value_of(r, "model") for v, r in zip(values, recs,
                                                                                                     strict=True)):
            out.append(k)
    return out


def cell(values, digits: int = 4, ci=None) -> str:
    """Mean, and ``± half-width`` of its 95% CI over seeds (Student t) when there are several; a
    single value with a CI of its own (``ci``: over images) shows that one."""
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    if not values:
        return ""
    mean, lo, hi = probes.mean_ci(values)
    half = (hi - lo) / 2 if len(values) > 1 else ci
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if half else "")


def _show(key: str, value) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _seed_note(counts: Counter) -> str:
    if not counts:
        return ""
    common, _ = counts.most_common(1)[0]
    return (f"mean ± 95% CI over {common} seeds" if common > 1 else "one seed per cell") + (
        "; (n) marks cells of another number of seeds" if len(counts) > 1 else "")


def compact_models(table: pd.DataFrame, rows) -> tuple[pd.DataFrame, str]:
    """(table, note): a ``model`` column that names one model throughout is dropped (the note names
    it); a model made from another (``file:x.pt|wise-ft alpha=0.5``) is named by the one it was made
    from wherever the other ``rows`` columns still tell the rows apart."""
    if "model" not in table.columns or table.empty:
        return table, ""
    base = table["model"].map(lambda m: str(m).split("|")[0])
    if not table.assign(model=base).duplicated([c for c in rows if c in table.columns]).any():
        table = table.assign(model=base)
    if table["model"].nunique() == 1 and len([c for c in rows if c in table.columns]) > 1:
        return table.drop(columns="model"), f"model {table['model'].iloc[0]}"
    return table, ""


def pivot(recs: list[dict], rows, columns, metric: str = "top1") -> tuple[pd.DataFrame, str]:
    """(table, note): one row per value of the ``rows`` keys, one column per value of the ``columns``
    keys (in the order the records meet them), each cell the mean ± 95% CI of ``metric`` over seeds."""
    groups: dict[tuple, dict[tuple, list[float]]] = {}
    col_order: dict[tuple, None] = {}
    for r in recs:
        if metric not in r.get("metrics", {}):
            continue
        rk = tuple(value_of(r, k) for k in rows)
        ck = tuple(value_of(r, k) for k in columns)
        groups.setdefault(rk, {}).setdefault(ck, []).append(r["metrics"][metric])
        col_order[ck] = None
    counts = Counter(len(v) for g in groups.values() for v in g.values())
    common = counts.most_common(1)[0][0] if counts else 1
    named = len(columns) == 1 and columns[0] not in ("model", "dataset") and (
        columns[0] in ("k", "alpha") or any(not isinstance(c[0], str) for c in col_order if c[0] is not None))

    def header(ck):
        if all(v is None for v in ck):
            return "—"
        text = " · ".join(_show(k, v) for k, v in zip(columns, ck, strict=True))
        return f"{columns[0]}={text}" if named else text

    out = []
    for rk, cells in groups.items():
        row = {k: _show(k, v) for k, v in zip(rows, rk, strict=True)}
        for ck in col_order:
            values = cells.get(ck)
            row[header(ck)] = "" if not values else cell(values) + (f" ({len(values)})" if len(values) != common else "")
        out.append(row)
    table, model = compact_models(pd.DataFrame(out), rows)
    return table, "; ".join(n for n in (model, _seed_note(counts)) if n)


def metric_table(recs: list[dict], metrics, rows) -> tuple[pd.DataFrame, str]:
    """(table, note): one row per value of the ``rows`` keys, one column per metric of ``metrics`` that
    any record has, each cell the mean ± 95% CI over seeds (or the record's own CI over images, as
    ``psnr_ci95``, for a single result)."""
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault(tuple(value_of(r, k) for k in rows), []).append(r)
    present = [m for m in metrics if any(m in r.get("metrics", {}) for r in recs)]
    counts = Counter(len(g) for g in groups.values())
    out = []
    for rk, group in groups.items():
        row = {k: _show(k, v) for k, v in zip(rows, rk, strict=True)}
        for m in present:
            values = [r["metrics"].get(m) for r in group]
            if m == "n":
                row[label(m)] = _show(m, values[0])
                continue
            own_ci = group[0]["metrics"].get(f"{m}_ci95") if len(group) == 1 else None
            row[label(m)] = cell(values, digits=2 if m == "psnr" else 4, ci=own_ci)
        if len(counts) > 1:
            row["seeds"] = len(group)
        out.append(row)
    table, model = compact_models(pd.DataFrame(out), rows)
    return table, "; ".join(n for n in (model, _seed_note(counts)) if n)
