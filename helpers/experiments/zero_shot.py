"""01 zero-shot: each model's text classifier from class names x templates on the test split, with
top-k, balanced accuracy, per-class recall, calibration and a prediction grid."""

from __future__ import annotations

import pandas as pd

from helpers import models
from helpers.data import prompts
from helpers.data.samples import Samples
from helpers.eval import metrics, zeroshot
from helpers.experiments import Experiment
from helpers.experiments.common import Outcome, encode, save_stamped, slug
from helpers.profiles import Profile
from helpers.results import plots, records

EXPERIMENT = Experiment(
    "01_zero_shot", "01 — Zero-shot classification", section="templates",
    comparison=lambda rec: "zero-shot", comparison_columns=("zero-shot",), needs=("test",))


def run(P: Profile, spec: str, samples: Samples, templates=None, grid_images: int | None = None) -> Outcome:
    """Zero-shot top-k / balanced accuracy / per-class recall / ECE of one model on one split, with figures."""
    timer = records.Timer()
    templates = templates or P["templates"]
    loaded = models.load_model(spec)
    feats = encode(P, loaded, samples)
    result = zeroshot.evaluate(loaded, feats.features, feats.labels, samples.classnames, templates)
    m, untrained = result["metrics"], not loaded.trained
    pred = metrics.predictions(result["logits"])
    stem = slug("01_zero_shot", samples.name, samples.split, spec)
    label = f"{spec} on {samples.name}/{samples.split}"
    figs = {
        "confusion": plots.confusion_matrix(metrics.confusion(pred, feats.labels, samples.num_classes),
                                            samples.classnames, title=f"zero-shot confusion: {label}"),
        "reliability": plots.reliability_diagram(metrics.calibration(result["logits"], feats.labels),
                                                 title=f"{spec}", show_ece=not untrained),
        "grid": plots.prediction_grid(samples.paths, feats.labels, pred, samples.classnames,
                                      n=grid_images or int(P.get("grid_images", 8)), seed=P.seed,
                                      title=f"Predicted (True) — {label}"),
    }
    saved = [save_stamped(f, P, f"{stem}-{k}", spec, untrained) for k, f in figs.items()]
    _, transform_card = loaded.transform()
    rec = records.make_record(
        "01_zero_shot", m, dataset=samples.card(), model=loaded.card(), profile=P.name,
        protocol={"head": "zero-shot text classifier (mean of normalised prompt embeddings)",
                  "templates": prompts.templates(templates), "logit_scale": zeroshot.logit_scale(loaded),
                  "transform": transform_card, "feature_cache": feats.key[:16],
                  "features_from_cache": feats.from_cache,
                  "encoded_with": feats.encoded_with, "batch_size": int(P.get("batch_size", 64))},
        seeds=[P.seed], wall_time_s=timer.seconds, figures=saved, facets={"head": "zero-shot"},
        predictions=result["logits"], labels=feats.labels)
    records.append_record(rec)
    return Outcome([rec], records.results_frame([rec]), figs,
                   {"per_class": per_class_table(samples.classnames, m["per_class_recall"], untrained)})


def per_class_table(classnames: list[str], recall, untrained: bool) -> pd.DataFrame:
    table = pd.DataFrame({"class": classnames, "recall": [round(float(r), 4) for r in recall], "untrained": untrained})
    return records.mask_untrained(table, ["recall"])
