"""The experiments the notebooks run, each as one call: dataset -> cached features -> head -> metrics -> record.

A notebook holds its parameters, calls one function here, and shows what comes back (tables and
figures). Every function writes its figures to ``pics/<profile>/`` and its records to
``supplementary/<profile>/results/``; results of untrained weights are stamped and masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import (
    backbones,
    config,
    features,
    finetune,
    metrics,
    models,
    plots,
    probes,
    prompts,
    records,
    training,
    transforms,
    zeroshot,
)
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


# ------------------------------------------------------------------------------- 04 few-shot
def _kshot_rows(f_train, f_val, f_test, num_classes: int, ks, seeds, zs=None, max_iter: int = 1000) -> list[dict]:
    """Linear-probe points (k, seed): k-shot from train only; C swept on val; 'all' refit on train+val.

    ``zs``: (classifier, scale) to also train a zero-shot-initialised torch head on each k-shot sample.
    """
    rows = []
    y_train = f_train.labels
    for k in ks:
        k_seeds = [seeds[0]] if k == "all" else seeds  # the full probe is deterministic: one fit
        for seed in k_seeds:
            idx = np.arange(len(y_train)) if k == "all" else probes.kshot_indices(y_train, int(k), seed)
            fit = probes.fit_logistic(f_train.features[idx], y_train[idx], f_val.features, f_val.labels,
                                      refit_on_val=(k == "all"), max_iter=max_iter)
            m = probes.evaluate_logits(probes.full_logits(fit, f_test.features, num_classes), f_test.labels,
                                       num_classes)
            rows.append({"head": "linear probe", "k": k, "seed": seed, "n_train": len(idx), "C": fit.C,
                         "val_top1_at_C": fit.val_scores[fit.C], "metrics": m})
            if zs is not None and k != "all":
                head = probes.zero_shot_init_probe(f_train.features[idx], y_train[idx], f_val.features,
                                                   f_val.labels, zs[0], zs[1], seed=seed)
                m = probes.evaluate_logits(probes.head_logits(head, f_test.features), f_test.labels, num_classes)
                rows.append({"head": "zero-shot-init probe", "k": k, "seed": seed, "n_train": len(idx),
                             "best_step": head["best_step"], "val_top1": head["val_top1"], "metrics": m})
    return rows


def summarise_points(rows: list[dict], metric: str = "top1") -> pd.DataFrame:
    """Mean and 95% confidence interval over seeds of each (model, head, k)."""
    out = []
    df = pd.DataFrame([{**{k: v for k, v in r.items() if k != "metrics"}, metric: r["metrics"][metric]} for r in rows])
    for (model, head, k), g in df.groupby(["model", "head", "k"], sort=False):
        mean, lo, hi = probes.mean_ci(g[metric])
        out.append({"model": model, "head": head, "k": k, "seeds": len(g), "mean": mean, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out)


def few_shot(P: Profile, splits: dict[str, Samples], specs: list[str] | None = None) -> Outcome:
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
        rows = _kshot_rows(f["train"], f["val"], f["test"], test.num_classes, ks, seeds,
                           zs=(classifier, zeroshot.logit_scale(loaded)),
                           max_iter=int(settings.get("max_iter", 1000)))
        for r in rows:
            r["model"] = spec
        all_rows += rows
        zs_top1[spec] = zs["metrics"]["top1"]
        if not loaded.trained:
            untrained_specs.append(spec)
        protocol = {
            "sampling": "k images per class from the train split only (val/test never sampled)",
            "probe": f"sklearn LogisticRegression(lbfgs) on L2-normalised features; C swept on val over "
                     f"{len(probes.C_GRID)} values 1e-3..1e3; k-shot: fit on the k-shot sample; all: refit on train+val",
            "zero_shot_init": "torch linear head initialised with scale x text classifier, AdamW full batch, "
                              "best val step kept (step 0 = zero-shot)",
            "templates": prompts.templates(P["templates"]), "ks": ks, "seeds": seeds,
            "features_from_cache": {s: f[s].from_cache for s in f}, "transform": loaded.transform()[1]}
        card = loaded.card()
        recs.append(records.make_record("04_few_shot", zs["metrics"], dataset=test.card(), model=card,
                                        profile=P.name, variant="zero-shot", protocol=protocol, seeds=seeds,
                                        wall_time_s=timer.seconds))
        for r in rows:
            recs.append(records.make_record(
                "04_few_shot", r["metrics"], dataset=test.card(), model=card, profile=P.name,
                variant=f"{r['head']}|k={r['k']}|seed={r['seed']}", seeds=[r["seed"]], wall_time_s=timer.seconds,
                protocol={**protocol, **{k: v for k, v in r.items() if k not in ("metrics", "model")}}))
    summary = summarise_points(all_rows)
    fig = plots.kshot_curve(summary, zero_shot=zs_top1, title=f"k-shot linear probes vs zero-shot — {test.name}/test")
    saved = [_save(fig, P, _slug("04_few_shot", test.name), ", ".join(untrained_specs), bool(untrained_specs))]
    for rec in recs:
        rec["figures"] = saved
        records.append_record(rec)
    shown = summary.astype(object)
    shown.loc[shown["model"].isin(untrained_specs), ["mean", "ci_low", "ci_high"]] = "untrained"
    return Outcome(recs, shown, {"kshot": fig}, {"summary": summary, "zero_shot_top1": zs_top1})


# --------------------------------------------------------------------- 05 ImageNet baselines
def _train_config(settings: dict, seed: int) -> training.TrainConfig:
    keys = training.TrainConfig.__dataclass_fields__
    unknown = sorted(set(settings) - set(keys) - {"batch_size", "label_smoothing"})
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; known: {sorted(keys)} + batch_size, label_smoothing")
    return training.TrainConfig(**{k: v for k, v in settings.items() if k in keys}, seed=seed)


def imagenet_baselines(P: Profile, splits: dict[str, Samples]) -> Outcome:
    """Each torchvision backbone: linear probes on frozen penultimate features (the probe code of 04),
    and full fine-tuning with the shared training loop for those listed under ``finetune``."""
    settings = P["baselines"]
    size, interp = int(settings["input_size"]), settings.get("interpolation", "bicubic")
    test = splits["test"]
    recs, figs, rows = [], {}, []
    for spec in settings["backbones"]:
        timer = records.Timer()
        bb = backbones.load_backbone(spec, seed=P.seed)
        tf, tcard = transforms.image_transform(size, interp)
        encoder = {"spec": spec, "weights_sha256": bb.weights_sha256, "output": "penultimate"}
        f = {s: features.encode_dataset(bb.model, encoder, splits[s], tf, tcard, device=config.device(),
                                        batch_size=int(P.get("batch_size", 64))) for s in ("train", "val", "test")}
        card = bb.card()
        protocol = {"input_size": size, "transform": tcard, "features": "penultimate layer, frozen",
                    "probe": "as notebook 04: sklearn LogisticRegression(lbfgs), C swept on val; k-shot fit on "
                             "the k-shot sample, all: refit on train+val"}
        for r in _kshot_rows(f["train"], f["val"], f["test"], test.num_classes, settings["probe_ks"],
                             list(P["few_shot"]["seeds"]), max_iter=int(P["few_shot"].get("max_iter", 1000))):
            regime = "linear probe" if r["k"] == "all" else f"{r['k']}-shot probe"
            rows.append({"model": spec, "regime": regime, "seed": r["seed"], "top1": r["metrics"]["top1"],
                         "untrained": not bb.trained})
            recs.append(records.make_record(
                "05_imagenet_baselines", r["metrics"], dataset=test.card(), model=card, profile=P.name,
                variant=f"{regime}|seed={r['seed']}", seeds=[r["seed"]], wall_time_s=timer.seconds,
                protocol={**protocol, "regime": regime, "C": r["C"], "k": r["k"], "n_train": r["n_train"]}))
        if spec in settings.get("finetune", []):
            timer = records.Timer()
            cfg = _train_config(settings["train"], P.seed)
            batch = int(settings["train"].get("batch_size", 64))
            train_tf, train_card = transforms.image_transform(size, interp, train=True,
                                                              aerial=bool(settings.get("aerial", True)))
            net = backbones.load_backbone(spec, seed=P.seed).classifier(test.num_classes)
            run_card = {"spec": spec, "weights": bb.weights_sha256, "data": splits["train"].fingerprint(),
                        "transform": train_card}
            ft = finetune.train_classifier(net, splits, train_tf, tf, cfg, batch, run_card,
                                           label_smoothing=float(settings["train"].get("label_smoothing", 0.0)))
            status = "fine-tuned" if bb.trained else "trained from scratch"
            ft_card = {**card, "status": status, "initial_weights": bb.status, "trainable_params": ft.trainable}
            curve = training.curves_figure(ft.result.history, title=f"{spec} ({status}) on {test.name}")
            cm = plots.confusion_matrix(metrics.confusion(ft.test_logits, test.labels, test.num_classes),
                                        test.classnames, title=f"{spec} {status}: test confusion")
            stem = _slug("05_baseline", test.name, spec)
            saved = [_save(curve, P, f"{stem}-curves", spec, False), _save(cm, P, f"{stem}-confusion", spec, False)]
            figs[f"{spec} curves"], figs[f"{spec} confusion"] = curve, cm
            rows.append({"model": spec, "regime": status, "seed": P.seed, "top1": ft.test_metrics["top1"],
                         "untrained": False})
            recs.append(records.make_record(
                "05_imagenet_baselines", {**ft.test_metrics, "best_val_top1": ft.result.best_metric},
                dataset=test.card(), model=ft_card, profile=P.name, variant="fine-tuned", seeds=[P.seed],
                wall_time_s=timer.seconds, figures=saved,
                protocol={**protocol, "regime": status, "train": cfg.card(), "batch_size": batch,
                          "train_transform": train_card, "epochs_run": len(ft.result.history),
                          "best_epoch": ft.result.best_epoch, "stopped": ft.result.stopped,
                          "resumed_from_epoch": ft.result.resumed_from, "train_seconds": ft.result.seconds,
                          "history": ft.result.history}))
    for rec in recs:
        records.append_record(rec)
    table = pd.DataFrame(rows)
    shown = table.groupby(["model", "regime"], sort=False).agg(
        top1=("top1", "mean"), seeds=("seed", "count"), untrained=("untrained", "first")).reset_index()
    shown["top1"] = shown["top1"].astype(object)
    shown.loc[shown["untrained"], "top1"] = "untrained"
    return Outcome(recs, shown.drop(columns="untrained"), figs)
