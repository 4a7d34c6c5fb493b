"""05 ImageNet baselines: torchvision backbones as frozen feature extractors (linear probes) and
fine-tuned end to end with the shared training loop."""

from __future__ import annotations

import pandas as pd

from helpers.core import config
from helpers.data import transforms
from helpers.data.samples import Samples
from helpers.eval import features, metrics
from helpers.eval.probes import kshot_rows
from helpers.experiments import Experiment, Pivot
from helpers.experiments.common import Outcome, save_stamped, slug, train_config
from helpers.models import backbones
from helpers.profiles import Profile
from helpers.results import plots, records, tables
from helpers.train import loop, supervised


def _comparison(rec: dict) -> str | None:
    f = records.facets(rec)
    regime = f.get("regime") or f.get("label")  # records from before facets carry it as the variant's label
    if f.get("head") == "fine-tuned" or regime in ("fine-tuned", "trained from scratch"):
        return "fine-tuned"
    return regime if regime in ("16-shot probe", "linear probe") else None


EXPERIMENT = Experiment(
    "05_imagenet_baselines", "05 — ImageNet baselines: linear probes and fine-tuning", section="baselines",
    summarise=tables.seed_summary, comparison=_comparison,
    comparison_columns=("16-shot probe", "linear probe", "fine-tuned"), pivot=Pivot(rows=("model",), columns=("regime",)))


def run(P: Profile, splits: dict[str, Samples]) -> Outcome:
    """Each torchvision backbone: linear probes on frozen penultimate features (the probe code of 04),
    and full fine-tuning with the shared training loop for those listed under ``finetune``. Each record is
    written the moment its result exists (a run that dies at the third backbone keeps the first two's)."""
    settings = P["baselines"]
    size, interp = int(settings["input_size"]), settings.get("interpolation", "bicubic")
    test = splits["test"]
    recs, figs, rows = [], {}, []

    def emit(rec: dict) -> None:
        recs.append(rec)
        records.append_record(rec)

    for spec in settings["backbones"]:
        timer = records.Timer()
        bb = backbones.load_backbone(spec, seed=P.seed)
        tf, tcard = transforms.image_transform(size, interp, bb.mean, bb.std)
        encoder = {"spec": spec, "weights_sha256": bb.weights_sha256, "output": "penultimate"}
        f = {s: features.encode_dataset(bb.model, encoder, splits[s], tf, tcard, device=config.device(),
                                        batch_size=int(P.get("batch_size", 64))) for s in ("train", "val", "test")}
        card = bb.card()
        protocol = {"input_size": size, "transform": tcard, "features": "penultimate layer, frozen",
                    "probe": "as notebook 04: multinomial logistic regression (L-BFGS), C swept on val; k-shot fit on "
                             "the k-shot sample, all: refit on train+val"}
        notes: list[str] = []
        for r in kshot_rows(f["train"], f["val"], f["test"], test.num_classes, settings["probe_ks"],
                            list(P["few_shot"]["seeds"]), max_iter=int(P["few_shot"].get("max_iter", 1000)),
                            notes=notes, backend=P["few_shot"]["probe_backend"]):
            regime = "linear probe" if r["k"] == "all" else f"{r['k']}-shot probe"
            rows.append({"model": spec, "regime": regime, "seed": r["seed"], "top1": r["metrics"]["top1"],
                         "untrained": not bb.trained})
            emit(records.make_record(
                "05_imagenet_baselines", r["metrics"], dataset=test.card(), model=card, profile=P.name,
                variant=f"{regime}|seed={r['seed']}", seeds=[r["seed"]], wall_time_s=timer.seconds,
                protocol={**protocol, "regime": regime, "C": r["C"], "k": r["k"], "n_train": r["n_train"],
                          "probe_backend": r["probe_backend"], "probe_threads": r["probe_threads"],
                          "skipped_ks": notes},
                facets={"head": "linear probe", "regime": regime, "k": r["k"], "seed": r["seed"]},
                predictions=r["predictions"], labels=f["test"].labels))
        if spec in settings.get("finetune", []):
            timer = records.Timer()
            cfg = train_config(settings["train"], P.seed)
            batch = int(settings["train"].get("batch_size", 64))
            train_tf, train_card = transforms.image_transform(size, interp, bb.mean, bb.std, train=True,
                                                              aerial=bool(settings.get("aerial", True)))
            net = backbones.load_backbone(spec, seed=P.seed).classifier(test.num_classes, seed=P.seed)
            run_card = {"spec": spec, "weights": bb.weights_sha256, "data": splits["train"].fingerprint(),
                        "transform": train_card}
            ft = supervised.train_classifier(net, splits, train_tf, tf, cfg, batch, run_card,
                                           label_smoothing=float(settings["train"].get("label_smoothing", 0.0)))
            status = "fine-tuned" if bb.trained else "trained from scratch"
            ft_card = {**card, "status": status, "initial_weights": bb.status, "trainable_params": ft.trainable}
            curve = loop.curves_figure(ft.result.history, title=f"{spec} ({status}) on {test.name}")
            cm = plots.confusion_matrix(metrics.confusion(ft.test_logits, test.labels, test.num_classes),
                                        test.classnames, title=f"{spec} {status}: test confusion")
            stem = slug("05_baseline", test.name, spec)
            saved = [save_stamped(curve, P, f"{stem}-curves", spec, False), save_stamped(cm, P, f"{stem}-confusion", spec, False)]
            figs[f"{spec} curves"], figs[f"{spec} confusion"] = curve, cm
            rows.append({"model": spec, "regime": status, "seed": P.seed, "top1": ft.test_metrics["top1"],
                         "untrained": False})
            emit(records.make_record(
                "05_imagenet_baselines", {**ft.test_metrics, "best_val_top1": ft.result.best_metric},
                dataset=test.card(), model=ft_card, profile=P.name, variant="fine-tuned", seeds=[P.seed],
                wall_time_s=timer.seconds, figures=saved,
                protocol={**protocol, "regime": status, "train": cfg.card(), "batch_size": batch,
                          "train_transform": train_card, "epochs_run": len(ft.result.history),
                          "best_epoch": ft.result.best_epoch, "stopped": ft.result.stopped,
                          "resumed_from_epoch": ft.result.resumed_from, "train_seconds": ft.result.seconds,
                          "history": ft.result.history,
                          "training": ft.result.training_card(f"05 {spec} {status}")},
                facets={"head": "fine-tuned", "regime": status}, predictions=ft.test_logits, labels=test.labels))
    table = pd.DataFrame(rows)
    shown = table.groupby(["model", "regime"], sort=False).agg(
        top1=("top1", "mean"), seeds=("seed", "count"), untrained=("untrained", "first")).reset_index()
    return Outcome(recs, records.mask_untrained(shown, ["top1"]), figs)
