"""04 few-shot: k-shot and full linear probes on frozen features (and zero-shot-initialised heads),
mean and 95% CI over seeds."""

from __future__ import annotations

import pandas as pd

from helpers import models
from helpers.data import prompts
from helpers.data.samples import Samples
from helpers.eval import probes, zeroshot
from helpers.eval.probes import kshot_rows
from helpers.experiments import Experiment, Pivot
from helpers.experiments.common import Outcome, encode, save_stamped, slug
from helpers.profiles import Profile
from helpers.results import plots, records, tables


def _comparison(rec: dict) -> str | None:
    f = records.facets(rec)
    if f.get("head") == "linear probe" and str(f.get("k")) in ("16", "all"):
        return "16-shot probe" if str(f["k"]) == "16" else "linear probe"
    return None


EXPERIMENT = Experiment(
    "04_few_shot", "04 — Few-shot and linear probes on frozen CLIP features", section="few_shot",
    summarise=tables.seed_summary, comparison=_comparison, comparison_columns=("16-shot probe", "linear probe"),
    pivot=Pivot(rows=("model", "head"), columns=("k",)), headline=lambda path: True)


def summarise_points(rows: list[dict], metric: str = "top1") -> pd.DataFrame:
    """Mean and 95% confidence interval over seeds of each (model, head, k)."""
    out = []
    df = pd.DataFrame([{**{k: v for k, v in r.items() if k != "metrics"}, metric: r["metrics"][metric]} for r in rows])
    for (model, head, k), g in df.groupby(["model", "head", "k"], sort=False):
        mean, lo, hi = probes.mean_ci(g[metric])
        out.append({"model": model, "head": head, "k": k, "seeds": len(g), "mean": mean, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out)


def run(P: Profile, splits: dict[str, Samples], specs: list[str] | None = None) -> Outcome:
    """k-shot linear probes (>= 3 seeds per k) and the full probe on cached features of each model,
    against its zero-shot accuracy and a zero-shot-initialised probe; one figure for all models."""
    settings = P["few_shot"]
    ks, seeds = list(settings["ks"]), list(settings["seeds"])
    test = splits["test"]
    all_rows, recs, zs_top1, untrained_specs = [], [], {}, []
    for spec in specs or P.models:
        timer = records.Timer()
        loaded = models.load_model(spec)
        f = {s: encode(P, loaded, splits[s]) for s in ("train", "val", "test")}
        zs = zeroshot.evaluate(loaded, f["test"].features, f["test"].labels, test.classnames, P["templates"])
        classifier = zeroshot.text_classifier(loaded, test.classnames, P["templates"])
        notes: list[str] = []
        rows = kshot_rows(f["train"], f["val"], f["test"], test.num_classes, ks, seeds,
                          zs=(classifier, zeroshot.logit_scale(loaded)),
                          max_iter=int(settings.get("max_iter", 1000)), notes=notes,
                          backend=settings["probe_backend"])
        for note in dict.fromkeys(notes):
            print(f"{spec}: {note}")
        for r in rows:
            r["model"] = spec
        all_rows += rows
        zs_top1[spec] = zs["metrics"]["top1"]
        if not loaded.trained:
            untrained_specs.append(spec)
        protocol = {
            "sampling": "k images per class from the train split only (val/test never sampled)",
            "probe": f"multinomial logistic regression (L-BFGS; backend in probe_backend) on L2-normalised features; C swept on val over "
                     f"{len(probes.C_GRID)} values 1e-3..1e3; k-shot: fit on the k-shot sample; all: refit on train+val",
            "zero_shot_init": "torch linear head initialised with scale x text classifier, AdamW full batch, "
                              "best val step kept (step 0 = zero-shot)",
            "templates": prompts.templates(P["templates"]), "ks": ks, "seeds": seeds, "skipped_ks": notes,
            "features_from_cache": {s: f[s].from_cache for s in f}, "encoded_with": f["test"].encoded_with,
            "transform": loaded.transform()[1]}
        card = loaded.card()
        recs.append(records.make_record("04_few_shot", zs["metrics"], dataset=test.card(), model=card,
                                        profile=P.name, variant="zero-shot", protocol=protocol, seeds=seeds,
                                        wall_time_s=timer.seconds, facets={"head": "zero-shot"},
                                        predictions=zs["logits"], labels=f["test"].labels))
        for r in rows:
            recs.append(records.make_record(
                "04_few_shot", r["metrics"], dataset=test.card(), model=card, profile=P.name,
                variant=f"{r['head']}|k={r['k']}|seed={r['seed']}", seeds=[r["seed"]], wall_time_s=timer.seconds,
                protocol={**protocol, **{k: v for k, v in r.items() if k not in ("metrics", "model", "predictions")}},
                facets={"head": r["head"], "k": r["k"], "seed": r["seed"], "n_train": r["n_train"]},
                predictions=r["predictions"], labels=f["test"].labels))
    summary = summarise_points(all_rows)
    fig = plots.kshot_curve(summary, zero_shot=zs_top1, title=f"k-shot linear probes vs zero-shot — {test.name}/test")
    saved = [save_stamped(fig, P, slug("04_few_shot", test.name), ", ".join(untrained_specs), bool(untrained_specs))]
    for rec in recs:
        rec["figures"] = saved
        records.append_record(rec)
    shown = records.mask_untrained(summary.assign(untrained=summary["model"].isin(untrained_specs)),
                                   ["mean", "ci_low", "ci_high"])
    return Outcome(recs, shown, {"kshot": fig}, {"summary": summary, "zero_shot_top1": zs_top1})
