"""The experiments the notebooks run, each as one call: dataset -> cached features -> head -> metrics -> record.

A notebook holds its parameters, calls one function here, and shows what comes back (tables and
figures). Every function writes its figures to ``pics/<profile>/`` and its records to
``supplementary/<profile>/results/``; results of untrained weights are stamped and masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import config, features, metrics, models, plots, prompts, records, zeroshot
from .data import Samples
from .profiles import Profile


@dataclass
class Outcome:
    """What an experiment hands back to its notebook: records, a table to show, figures by name."""

    records: list[dict] = field(default_factory=list)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    figures: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def _slug(*parts: str) -> str:
    return "-".join("".join(c if c.isalnum() else "_" for c in str(p)).strip("_") for p in parts if p)


def _save(fig, P: Profile, name: str, spec: str, untrained: bool) -> str:
    if untrained:
        plots.mark_untrained(fig, spec)
    path = plots.save_figure(fig, name, folder=config.pics_dir(P.name))
    plots.plt.close(fig)  # the notebook shows it with display(); keeps headless runs from piling figures up
    return str(path.relative_to(config.output_root())) if path.is_relative_to(config.output_root()) else str(path)


def encode(P: Profile, loaded: models.LoadedModel, samples: Samples) -> features.Features:
    """Image features of ``samples`` through the shared cache, with the profile's batch size."""
    return features.image_features(loaded, samples, batch_size=int(P.get("batch_size", 64)))


# ------------------------------------------------------------------------------ 01 zero-shot
def zero_shot(P: Profile, spec: str, samples: Samples, templates=None, grid_images: int | None = None) -> Outcome:
    """Zero-shot top-k / balanced accuracy / per-class recall / ECE of one model on one split, with figures."""
    timer = records.Timer()
    templates = templates or P["templates"]
    loaded = models.load_model(spec)
    feats = encode(P, loaded, samples)
    result = zeroshot.evaluate(loaded, feats.features, feats.labels, samples.classnames, templates)
    m, untrained = result["metrics"], not loaded.trained
    pred = metrics.predictions(result["logits"])
    stem = _slug("01_zero_shot", samples.name, samples.split, spec)
    label = f"{spec} on {samples.name}/{samples.split}"
    figs = {
        "confusion": plots.confusion_matrix(metrics.confusion(pred, feats.labels, samples.num_classes),
                                            samples.classnames, title=f"zero-shot confusion: {label}"),
        "reliability": plots.reliability_diagram(metrics.calibration(result["logits"], feats.labels),
                                                 title=f"{spec}"),
        "grid": plots.prediction_grid(samples.paths, feats.labels, pred, samples.classnames,
                                      n=grid_images or int(P.get("grid_images", 8)), seed=P.seed,
                                      title=f"Predicted (True) — {label}"),
    }
    saved = [_save(f, P, f"{stem}-{k}", spec, untrained) for k, f in figs.items()]
    _, transform_card = loaded.transform()
    rec = records.make_record(
        "01_zero_shot", m, dataset=samples.card(), model=loaded.card(), profile=P.name,
        protocol={"head": "zero-shot text classifier (mean of normalised prompt embeddings)",
                  "templates": prompts.templates(templates), "logit_scale": zeroshot.logit_scale(loaded),
                  "transform": transform_card, "feature_cache": feats.key[:16],
                  "features_from_cache": feats.from_cache, "batch_size": int(P.get("batch_size", 64))},
        seeds=[P.seed], wall_time_s=timer.seconds, figures=saved)
    records.append_record(rec)
    return Outcome([rec], records.results_frame([rec]), figs,
                   {"per_class": per_class_table(samples.classnames, m["per_class_recall"], untrained)})


def extra_test_splits(P: Profile) -> list[Samples]:
    """The test split of every extra image folder the profile lists (a user's own data)."""
    from .data import load_image_folder

    out = []
    for item in P.get("extra_datasets") or []:
        root = item["root"] if isinstance(item, dict) else item
        name = item.get("name") if isinstance(item, dict) else None
        out.append(load_image_folder(root, name=name, seed=P.seed)["test"])
    return out


def per_class_table(classnames: list[str], recall, untrained: bool) -> pd.DataFrame:
    values = ["untrained"] * len(classnames) if untrained else [round(float(r), 4) for r in recall]
    return pd.DataFrame({"class": classnames, "recall": values})


# ------------------------------------------------------------------------- 02 prompt validation
def classname_variants(samples: Samples, wanted) -> dict[str, list[str]]:
    """Named class-name lists: ``folder`` (directory names) and ``readable`` (the dataset's human names)."""
    known = {"folder": list(samples.classes), "readable": list(samples.classnames)}
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"class-name variants {unknown} unknown; use {sorted(known)}")
    return {w: known[w] for w in wanted}


def prompt_validation(P: Profile, spec: str, splits: dict[str, Samples]) -> Outcome:
    """Every (class-name variant x template set) scored on val and test; the best is chosen on val only."""
    timer = records.Timer()
    val, test = splits["val"], splits["test"]
    loaded = models.load_model(spec)
    f_val, f_test = encode(P, loaded, val), encode(P, loaded, test)
    settings = P["prompt_validation"]
    rows, outs = [], {}
    for cn_name, names in classname_variants(test, settings["classname_variants"]).items():
        for tset in settings["template_sets"]:
            on_val = zeroshot.evaluate(loaded, f_val.features, f_val.labels, names, tset)
            on_test = zeroshot.evaluate(loaded, f_test.features, f_test.labels, names, tset)
            prompt = f"{cn_name} / {tset}"
            outs[prompt] = on_test
            rows.append({"prompt": prompt, "classnames": cn_name, "templates": tset,
                         "n_templates": len(prompts.templates(tset)),
                         "val_top1": on_val["metrics"]["top1"], "test_top1": on_test["metrics"]["top1"],
                         "val_balanced": on_val["metrics"]["balanced_accuracy"],
                         "test_balanced": on_test["metrics"]["balanced_accuracy"]})
    table = pd.DataFrame(rows)
    best = table.loc[table["val_top1"].idxmax()]  # first of equals, in the profile's order
    baseline = "folder / plain"
    untrained = not loaded.trained
    stem = _slug("02_prompts", test.name, spec)
    figs = {"bars": plots.grouped_bars(table, "prompt", ["val_top1", "test_top1"],
                                       title=f"zero-shot top-1 per prompt — {spec} (chosen on val: {best['prompt']})")}
    if baseline in outs:
        delta = (np.asarray(outs[best["prompt"]]["metrics"]["per_class_recall"])
                 - np.asarray(outs[baseline]["metrics"]["per_class_recall"]))
        figs["per_class"] = plots.per_class_delta(
            test.classnames, delta, title=f"test recall: best prompt ({best['prompt']}) − plain folder name",
            xlabel="recall difference on test")
    saved = [_save(f, P, f"{stem}-{k}", spec, untrained) for k, f in figs.items()]
    protocol = {"selection": "highest val top-1 (ties: first in profile order); test never used to choose",
                "val_split": val.split_protocol, "classname_variants": settings["classname_variants"],
                "template_sets": {t: prompts.templates(t) for t in settings["template_sets"]},
                "transform": loaded.transform()[1]}
    recs = []
    for row in rows:
        chosen = row["prompt"] == best["prompt"]
        recs.append(records.make_record(
            "02_prompt_validation", {**outs[row["prompt"]]["metrics"], "val_top1": row["val_top1"],
                                     "val_balanced_accuracy": row["val_balanced"]},
            dataset=test.card(), model=loaded.card(), profile=P.name, variant=row["prompt"],
            protocol={**protocol, "classnames": row["classnames"], "templates": row["templates"],
                      "chosen_on_val": chosen},
            seeds=[P.seed], wall_time_s=timer.seconds, figures=saved))
    for rec in recs:
        records.append_record(rec)
    shown = table.copy()
    if untrained:
        for col in ("val_top1", "test_top1", "val_balanced", "test_balanced"):
            shown[col] = "untrained"
    shown["chosen_on_val"] = table["prompt"] == best["prompt"]
    return Outcome(recs, shown, figs, {"best": best["prompt"]})
