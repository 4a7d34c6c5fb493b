"""``supplementary/<profile>/`` rebuilt from result records only: results table (CSV, Markdown) and a report.

The report (Markdown, HTML and PDF) has a title, then one section per experiment: its protocol
(dataset, split and how it was made, models and weights hashes, transform, prompts, seeds), its
results table and its figures. The PDF is written with fpdf2 and a font that ships with matplotlib,
so it needs no network and no system packages.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import re
import warnings
from pathlib import Path

import matplotlib
import pandas as pd

from helpers import experiments
from helpers.core import config, storage
from helpers.eval import probes
from helpers.results import records


def comparison_table(recs: list[dict], dataset: str | None = None) -> pd.DataFrame:
    """CLIP and ImageNet models side by side on one dataset's test split (``dataset``; None: every
    record must be of one dataset): test top-1 (mean over seeds) of each regime an experiment declares
    (``Experiment.comparison``), from the newest record of each result. Datasets are never averaged."""
    recs = [r for r in recs if dataset is None or r.get("dataset", {}).get("name") == dataset]
    names = {r.get("dataset", {}).get("name") for r in recs}
    if len(names) > 1:
        raise ValueError(f"comparison_table: records of several datasets {sorted(map(str, names))}; name one")
    registry = experiments.by_id()
    columns = list(dict.fromkeys(c for e in registry.values() for c in e.comparison_columns))
    cells: dict[tuple[str, str], list[float]] = {}
    untrained: dict[tuple[str, str], bool] = {}
    for r in {r["key"]: r for r in recs if "key" in r}.values():
        exp = registry.get(r["experiment"])
        col = exp.comparison(r) if exp and exp.comparison else None
        if col is None or r["dataset"].get("split") != "test" or "top1" not in r.get("metrics", {}):
            continue
        spec = r["model"].get("spec")
        cells.setdefault((spec, col), []).append(r["metrics"]["top1"])
        untrained[(spec, col)] = untrained.get((spec, col), False) or bool(r.get("untrained"))
    rows = []
    for spec in dict.fromkeys(s for s, _ in cells):
        row = {"model": spec}
        for col in columns:
            if (spec, col) in cells:
                row[col] = "untrained" if untrained[(spec, col)] else round(probes.mean_ci(cells[(spec, col)])[0], 4)
            else:
                row[col] = ""
        rows.append(row)
    used = [c for c in columns if any(r.get(c, "") != "" for r in rows)]
    return pd.DataFrame(rows, columns=["model", *used])


def summary_rows(side: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The side-by-side table as a reader sees it: rows of untrained weights left out (named), the
    best number of each column marked with ★."""
    cols = [c for c in side.columns if c != "model"]
    trained = side[cols].apply(lambda row: any(isinstance(v, float) for v in row), axis=1)
    left_out = side.loc[~trained, "model"].tolist()
    shown = side[trained].copy()
    shown["model"] = [f"file:{Path(m[5:]).name}" if str(m).startswith("file:") else m for m in shown["model"]]
    for col in cols:
        values = [v for v in shown[col] if isinstance(v, float)]
        if values:
            best = max(values)
            shown[col] = [f"{v:.4f} ★" if isinstance(v, float) and v == best and len(values) > 1 else
                          (f"{v:.4f}" if isinstance(v, float) else v) for v in shown[col]]
    return shown.reset_index(drop=True), left_out


def _title(experiment: str) -> str:
    exp = experiments.by_id().get(experiment)
    return exp.title if exp else experiment


def _protocol_lines(recs: list[dict]) -> list[str]:
    """What was run, in words, from the records' protocol cards (newest record of each key)."""
    last = recs[-1]
    ds = last["dataset"]
    counts = ", ".join(f"{k} {v}" for k, v in ds.get("counts", {}).items())
    lines = [
        f"Dataset: {ds.get('name')} ({ds.get('layout')} layout), split '{ds.get('split')}' with {ds.get('n_images')} images"
        f" in {len(ds.get('classes', []))} classes ({counts}).",
        f"Split protocol: {ds.get('split_protocol')}.",
    ]
    seen = {}
    for r in recs:
        m = r.get("model") or {}
        if m.get("spec"):
            seen[m["spec"]] = m
    for spec, m in seen.items():  # only what the card states: an interpolation or a combination has no weights
        facts = [f"{m['status']} weights" if m.get("status") not in (None, "n/a") else "",
                 f"sha256 {m['weights_sha256'][:16]} (prefix)" if m.get("weights_sha256") else "",
                 f"{m['n_params']:,} parameters" if m.get("n_params") else "",
                 f"input {m['input_resolution']} px" if m.get("input_resolution") else ""]
        lines.append(f"Model {spec}: {', '.join(f for f in facts if f) or 'no weights'}.")
    proto = last.get("protocol", {})
    for key in ("head", "selection", "transform", "templates", "template_sets"):
        if key in proto:
            lines.append(f"{key.replace('_', ' ').capitalize()}: {proto[key]}.")
    env = last.get("environment", {})
    lines.append(f"Seeds: {last.get('seeds')}; device {env.get('device')} with {env.get('autocast')} autocast;"
                 f" git {str((last.get('git') or {}).get('commit'))[:10]}; torch {last['versions'].get('torch')}.")
    if any(r.get("untrained") for r in recs):
        lines.append("Untrained weights: these rows prove the code path only; their numbers are masked.")
    return lines


def sections(profile: str) -> list[tuple[str, object]]:
    """The report as blocks: ("h1"|"h2"|"p", text), ("table", DataFrame), ("image", path)."""
    skipped: list[tuple] = []
    all_recs = records.read_records(profile=profile, skipped=skipped)
    table = records.results_frame(all_recs)
    blocks: list[tuple[str, object]] = [
        ("h1", f"CLIP lab report — profile '{profile}'"),
        ("p", f"Built {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC from {len(all_recs)} result records "
              f"in supplementary/{profile}/results/. Every number below comes from those records."),
    ]
    if not all_recs:
        blocks.append(("p", "No records yet: run the suite first."))
        return blocks
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
                         "experiment named by its column (sections below give the protocols).")]
        blocks.append(("table", shown) if not shown.empty else
                      ("p", "No trained model has results here yet: every model so far has untrained weights."))
        if left_out:
            blocks.append(("p", f"Left out: {', '.join(left_out)} — untrained weights only prove the code path."))
    latest = records.records_table(all_recs)
    keys = set(latest["key"]) if "key" in latest else set()
    by_exp: dict[str, list[dict]] = {}
    for r in all_recs:
        by_exp.setdefault(r["experiment"], []).append(r)
    for exp in sorted(by_exp):
        recs = [r for r in by_exp[exp] if r.get("key") in keys] or by_exp[exp]
        recs = list({r["key"]: r for r in recs}.values())
        blocks.append(("h2", _title(exp)))
        blocks += [("p", line) for line in _protocol_lines(recs)]
        summarise = getattr(experiments.by_id().get(exp), "summarise", None)
        summary = None
        if summarise is not None:
            try:
                summary = summarise(recs)
            except (KeyError, TypeError, ValueError) as e:  # a record lacking a metric: the plain table instead
                warnings.warn(f"report: {exp} records do not summarise ({type(e).__name__}: {e}); "
                              "showing them one per row", stacklevel=2)
        if summary is None:  # one row per result, without the columns no row of this experiment fills
            summary = table[table["experiment"] == exp].drop(columns=["experiment"])
            summary = summary.loc[:, [c for c in summary.columns if (summary[c].astype(str) != "").any()]]
        blocks.append(("table", summary))
        figures = dict.fromkeys(f for r in recs for f in r.get("figures", []))
        for f in figures:
            path = config.output_root() / f
            if path.is_file():
                blocks.append(("image", path))
    no_top1 = [r for r in all_recs if "top1" not in r.get("metrics", {}) and r.get("dataset", {}).get("split") != "retrieval"
               and not str(r.get("variant", "")).startswith("quality")]
    if skipped or no_top1:
        blocks.append(("h2", "Appendix — records left out or incomplete"))
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
        return value.map(_public) if not value.empty else value
    if not isinstance(value, str):
        return value
    roots = [(str(config.cache_dir()), "$CLIPLAB_CACHE"), (str(config.data_root()), "$CLIPLAB_DATA"),
             (str(config.output_root()), "."), (str(Path.home()), "~")]

    def short(m):
        path = m.group(0)
        for root, name in roots:
            if path.startswith(root + "/"):
                return name + path[len(root):]
        return Path(path).name or path

    return re.sub(r"(?<![\w.$~/])/(?:[\w.@+-]+/)*[\w.@+-]+", short, value)


def to_markdown(blocks, base: Path) -> str:
    out = []
    for kind, value in blocks:
        if kind == "h1":
            out.append(f"# {value}\n")
        elif kind == "h2":
            out.append(f"\n## {value}\n")
        elif kind == "p":
            out.append(f"{value}\n")
        elif kind == "table":
            out.append(value.to_markdown(index=False) + "\n")
        elif kind == "image":
            out.append(f"![{Path(value).stem}]({_relpath(value, base)})\n")
    return "\n".join(out)


def to_html(blocks, base: Path) -> str:
    body = []
    for kind, value in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(str(value))}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(str(value))}</p>")
        elif kind == "table":
            body.append(value.to_html(index=False, border=0, classes="results"))
        elif kind == "image":
            body.append(f'<figure><img src="{html.escape(_relpath(value, base))}" style="max-width:100%"></figure>')
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
             "table.results{border-collapse:collapse;font-size:85%}"
             "table.results td,table.results th{border-bottom:1px solid #ccc;padding:2px 8px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>CLIP lab report</title><style>{style}</style></head><body>{''.join(body)}</body></html>"


def to_pdf(blocks) -> bytes:
    """An A4 PDF of the blocks (fpdf2; DejaVu Sans from matplotlib for full Unicode)."""
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_font("DejaVu", "", str(font_dir / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(font_dir / "DejaVuSans-Bold.ttf"))
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    for kind, value in blocks:
        if kind == "h1":
            pdf.set_font("DejaVu", "B", 16)
            pdf.multi_cell(width, 8, str(value), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        elif kind == "h2":
            if not str(value).startswith("Summary") or pdf.get_y() > pdf.h * 0.6:  # summaries share page 1
                pdf.add_page()
            else:
                pdf.ln(3)
            pdf.set_font("DejaVu", "B", 13)
            pdf.multi_cell(width, 7, str(value), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        elif kind == "p":
            pdf.set_font("DejaVu", "", 8.5)
            pdf.multi_cell(width, 4.2, str(value), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(0.8)
        elif kind == "table":
            df = value
            pdf.set_font("DejaVu", "", 6.5 if len(df.columns) > 8 else 7.5)
            pdf.ln(1)
            with pdf.table(headings_style=FontFace(emphasis="BOLD"), line_height=3.6, text_align="LEFT",
                           width=width) as t:
                t.row([str(c) for c in df.columns])
                for _, row in df.iterrows():
                    t.row([_cell(v) for v in row])
            pdf.ln(2)
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


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def _relpath(path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.report --profile P``: rebuild supplementary/P/ from its records alone."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m helpers.report", description=main.__doc__.split(":")[0])
    ap.add_argument("--profile", default=config.profile_name(), help="the profile whose records to report")
    args = ap.parse_args(argv)
    written = build(args.profile)
    print(f"report: {written['report.pdf']} (+ {', '.join(k for k in written if k != 'report.pdf')})")
    return 0


def build(profile: str | None = None) -> dict[str, Path]:
    """Rebuild every file of ``supplementary/<profile>/`` from its records; returns what was written."""
    profile = profile or config.profile_name()
    folder = storage.ensure_writable_dir(config.supplementary_dir(profile), "report", "CLIPLAB_OUT")
    blocks = sections(profile)
    table = _public(records.results_frame(records.read_records(profile=profile, skipped=[])))
    written = {
        "results.csv": storage.atomic_write_text(folder / "results.csv", table.to_csv(index=False)),
        "results.md": storage.atomic_write_text(
            folder / "results.md", table.to_markdown(index=False) + "\n" if not table.empty else "No results yet.\n"),
        "report.md": storage.atomic_write_text(folder / "report.md", to_markdown(blocks, folder)),
        "report.html": storage.atomic_write_text(folder / "report.html", to_html(blocks, folder)),
        "report.pdf": storage.atomic_write_bytes(folder / "report.pdf", to_pdf(blocks)),
    }
    return written


if __name__ == "__main__":
    raise SystemExit(main())
