"""02 prompt validation: template sets x class-name variants, chosen on val, reported once on test."""

from __future__ import annotations

import numpy as np
import pandas as pd

from helpers import models
from helpers.data import prompts
from helpers.data.samples import Samples
from helpers.eval import zeroshot
from helpers.experiments import Experiment
from helpers.experiments.common import Outcome, encode, save_stamped, slug
from helpers.profiles import Profile
from helpers.results import plots, records

EXPERIMENT = Experiment(
    "02_prompt_validation", "02 — Prompt validation (chosen on val, reported on test)", section="prompt_validation",
    comparison=lambda rec: "best prompt" if records.facets(rec).get("chosen_on_val") else None,
    comparison_columns=("best prompt",), needs=("val", "test"))


def classname_variants(samples: Samples, wanted) -> dict[str, list[str]]:
    """Named class-name lists: ``folder`` (directory names) and ``readable`` (the dataset's human names)."""
    known = {"folder": list(samples.classes), "readable": list(samples.classnames)}
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"class-name variants {unknown} unknown; use {sorted(known)}")
    return {w: known[w] for w in wanted}


def run(P: Profile, spec: str, splits: dict[str, Samples]) -> Outcome:
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
    stem = slug("02_prompts", test.name, spec)
    figs = {"bars": plots.grouped_bars(table, "prompt", ["val_top1", "test_top1"],
                                       title=f"zero-shot top-1 per prompt — {spec} (chosen on val: {best['prompt']})")}
    if baseline in outs:
        delta = (np.asarray(outs[best["prompt"]]["metrics"]["per_class_recall"])
                 - np.asarray(outs[baseline]["metrics"]["per_class_recall"]))
        figs["per_class"] = plots.per_class_delta(
            test.classnames, delta, title=f"test recall: best prompt ({best['prompt']}) − plain folder name",
            xlabel="recall difference on test")
    saved = [save_stamped(f, P, f"{stem}-{k}", spec, untrained) for k, f in figs.items()]
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
            seeds=[P.seed], wall_time_s=timer.seconds, figures=saved,
            facets={"head": "zero-shot", "classnames": row["classnames"], "templates": row["templates"],
                    "chosen_on_val": chosen}))
    for rec in recs:
        records.append_record(rec)
    shown = records.mask_untrained(table.assign(untrained=untrained),
                                   ["val_top1", "test_top1", "val_balanced", "test_balanced"])
    shown["chosen_on_val"] = table["prompt"] == best["prompt"]
    return Outcome(recs, shown, figs, {"best": best["prompt"]})
