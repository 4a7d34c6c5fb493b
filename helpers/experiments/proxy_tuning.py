"""Proxy tuning for CLIP (notebook 07): steer a large, untouched base model with the difference
between a small fine-tuned expert and the same small model before tuning (the anti-expert),

    logits = base + alpha * (expert - anti_expert)

(Liu et al. 2024, "Tuning Language Models by Proxy"). The three roles classify over the same
class-prompt set, so their logits align class by class. Each role's logits come from cached image
features, so each image is encoded once per role; the sweep over alpha costs nothing. alpha is chosen
on validation and only then read on test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from helpers import models
from helpers.core import storage
from helpers.data import prompts
from helpers.eval import metrics, zeroshot
from helpers.experiments import Experiment, clip_finetune
from helpers.experiments.common import Outcome, encode, save_stamped, slug
from helpers.results import plots, records

SPACES = ("logits", "logprobs")


@dataclass
class RoleScores:
    """One role's class scores on val and test, and its logit scale (temperature)."""

    spec: str
    loaded: models.LoadedModel
    val: np.ndarray
    test: np.ndarray
    scale: float
    seconds: float = 0.0


def combine(base, expert, anti, alpha: float, space: str = "logits", scales: tuple[float, float, float] | None = None
            ) -> np.ndarray:
    """``base + alpha * (expert - anti)`` in logit or log-probability space.

    ``scales`` = (base, expert, anti) logit scales: when given, each role is first brought to the base's
    temperature (its logits x base_scale / own_scale), so a sharper expert does not dominate just by
    its temperature. Log-probabilities differ from logits by one constant per row and role, so the
    softmax of the combination (predictions, calibration) is the same in both spaces.
    """
    if space not in SPACES:
        raise ValueError(f"space {space!r}: use one of {SPACES}")
    b, e, a = (np.asarray(x, dtype=np.float64) for x in (base, expert, anti))
    if scales is not None:
        sb, se, sa = scales
        e, a = e * (sb / se), a * (sb / sa)
    if space == "logprobs":
        b, e, a = (torch.log_softmax(torch.from_numpy(x), dim=-1).numpy() for x in (b, e, a))
    return b + float(alpha) * (e - a)


def role_scores(loaded: models.LoadedModel, feats: dict, classnames: list[str], templates) -> RoleScores:
    """scale x cosine logits of ``feats`` ({"val", "test"}: features) against the role's prompt classifier."""
    classifier = zeroshot.text_classifier(loaded, classnames, templates)
    scale = zeroshot.logit_scale(loaded)
    out = {k: zeroshot.logits(f.features, classifier, scale).numpy() for k, f in feats.items()}
    return RoleScores(loaded.spec, loaded, out["val"], out["test"], scale)


def sweep(base: RoleScores, expert: RoleScores, anti: RoleScores, alphas, val_labels, test_labels,
          num_classes: int, space: str = "logits", match_temperature: bool = False) -> list[dict]:
    """Every alpha: val and test metrics of the combination."""
    scales = (base.scale, expert.scale, anti.scale) if match_temperature else None
    rows = []
    for alpha in alphas:
        row = {"alpha": float(alpha), "space": space, "match_temperature": match_temperature}
        for split, labels in (("val", val_labels), ("test", test_labels)):
            scores = combine(getattr(base, split), getattr(expert, split), getattr(anti, split), alpha, space, scales)
            row[split] = metrics.classification_metrics(scores, labels, num_classes)
        rows.append(row)
    return rows


def choose_alpha(rows: list[dict], metric: str = "top1") -> dict:
    """The row with the best validation ``metric``; ties go to the smallest alpha (the least steering)."""
    if not rows:
        raise ValueError("no alpha was evaluated")
    best = max(rows, key=lambda r: (r["val"][metric], -r["alpha"]))
    return best


# ----------------------------------------------------------------------------- notebook 07
def check_roles(expert: models.LoadedModel, anti_expert: models.LoadedModel) -> None:
    """The anti-expert must be the expert before tuning: same architecture, and the recorded starting
    weights when the expert's checkpoint says what they were."""
    if expert.model.state_dict().keys() != anti_expert.model.state_dict().keys():
        raise ValueError(f"anti-expert {anti_expert.spec} and expert {expert.spec} differ in architecture; "
                         "the anti-expert must be the expert's model before tuning")
    initial = expert.meta.get("initial", {})
    same = (anti_expert.weights_sha256, storage.sha256_state_dict(anti_expert.model.state_dict()))
    if initial.get("weights_sha256") and initial["weights_sha256"] not in same:
        raise ValueError(f"expert {expert.spec} was tuned from {initial.get('spec')} "
                         f"(sha256 {initial['weights_sha256'][:12]}), not from the anti-expert {anti_expert.spec}")


def run(P, splits, progress: bool = True):
    """Notebook 07: scores of the three roles from cached features, the alpha sweep for every option
    (logits / log-probabilities, with / without temperature matching), alpha chosen on val, test read
    once; a table in the shape anti-expert / expert / base / proxy-tuned, figures, and records."""
    s = P["proxy"]
    val, test = splits["val"], splits["test"]
    specs = {"anti-expert": s["anti_expert"], "base": s["base"],
             "expert": clip_finetune.checkpoint_spec(P, splits, s["expert"], progress)}
    roles: dict[str, RoleScores] = {}
    for role, spec in specs.items():
        timer = records.Timer()
        loaded = models.load_model(spec)
        feats = {"val": encode(P, loaded, val), "test": encode(P, loaded, test)}
        roles[role] = role_scores(loaded, feats, test.classnames, s["templates"])
        roles[role].seconds = timer.seconds
    check_roles(roles["expert"].loaded, roles["anti-expert"].loaded)
    alphas = [float(a) for a in s["alphas"]]
    options = [(space, bool(match)) for space in s.get("spaces", ["logits"]) for match in s.get("match_temperature", [False])]
    sweeps = {opt: sweep(roles["base"], roles["expert"], roles["anti-expert"], alphas, val.labels, test.labels,
                         test.num_classes, *opt) for opt in options}
    chosen = {opt: choose_alpha(rows) for opt, rows in sweeps.items()}
    main_opt = options[0]

    recs = []
    protocol = {"templates": prompts.templates(s["templates"]), "roles": specs,
                "alpha_grid": alphas, "alpha_selection": "best val top-1 (ties: smallest alpha); test read after"}
    rows = []
    for role in ("anti-expert", "expert", "base"):
        r = roles[role]
        m = metrics.classification_metrics(r.test, test.labels, test.num_classes)
        recs.append(records.make_record(EXPERIMENT.id, m, dataset=test.card(), model=r.loaded.card(),
                                        profile=P.name, variant=f"role={role}", seeds=[P.seed],
                                        wall_time_s=r.seconds, protocol={**protocol, "role": role, "logit_scale": r.scale},
                                        facets={"head": "zero-shot", "role": role},
                                        predictions=r.test, labels=test.labels))
        rows.append({"model": role, "spec": r.spec, "alpha": None, "top1": m["top1"], "balanced_acc": m["balanced_accuracy"],
                     "ece": m["ece"], "untrained": not r.loaded.trained})
    proxy_card = {"spec": f"proxy[base={specs['base']}, expert={specs['expert']}, anti={specs['anti-expert']}]",
                  # the steering carries the result: trained when the expert is, whatever the base's status
                  "status": "proxy-tuned" if roles["expert"].loaded.trained else "untrained",
                  "roles": {role: r.loaded.card() for role, r in roles.items()}}
    for (space, match), rows_ in sweeps.items():
        best = chosen[(space, match)]
        opt_name = f"{space}{', temperature-matched' if match else ''}"
        for r in rows_:
            recs.append(records.make_record(
                EXPERIMENT.id, {**r["test"], "val_top1": r["val"]["top1"]}, dataset=test.card(),
                model=proxy_card, profile=P.name, seeds=[P.seed],
                variant=f"proxy|{space}|match={match}|alpha={r['alpha']:g}",
                protocol={**protocol, "space": space, "match_temperature": match, "alpha": r["alpha"],
                          "chosen": r is best, "val_split": val.card()},
                facets={"head": "proxy-tuned", "space": space, "match_temperature": match, "alpha": r["alpha"],
                        "chosen_on_val": r is best}))
        rows.append({"model": f"proxy-tuned ({opt_name})", "spec": specs["base"], "alpha": best["alpha"],
                     "top1": best["test"]["top1"], "balanced_acc": best["test"]["balanced_accuracy"],
                     "ece": best["test"]["ece"], "untrained": not roles["expert"].loaded.trained})
    table = records.mask_untrained(pd.DataFrame(rows), ["top1", "balanced_acc", "ece"])

    stem = slug("07_proxy", test.name, specs["base"])
    curve = alpha_figure(sweeps[main_opt], chosen[main_opt]["alpha"], f"proxy tuning ({main_opt[0]})")
    best_main = chosen[main_opt]
    base_recall = np.asarray(metrics.classification_metrics(roles["base"].test, test.labels, test.num_classes)["per_class_recall"])
    gains = np.asarray(best_main["test"]["per_class_recall"]) - base_recall
    bars = plots.per_class_delta(test.classnames, gains, title=f"per-class recall: proxy-tuned (alpha={best_main['alpha']:g}) - base")
    untrained_base = not roles["base"].loaded.trained
    saved = [save_stamped(curve, P, f"{stem}-alpha", specs["base"], False),
             save_stamped(bars, P, f"{stem}-per-class", specs["base"], untrained_base)]
    for rec in recs:
        rec["figures"] = saved
        records.append_record(rec)
    frame = pd.DataFrame([{"space": r["space"], "match_temperature": r["match_temperature"], "alpha": r["alpha"],
                           "val_top1": r["val"]["top1"], "test_top1": r["test"]["top1"]} for rows_ in sweeps.values() for r in rows_])
    return Outcome(recs, table, {"alpha": curve, "per_class": bars},
                   {"sweep": frame, "chosen": {f"{k[0]}|match={k[1]}": v["alpha"] for k, v in chosen.items()},
                    "roles": roles})


def alpha_figure(rows: list[dict], chosen: float, title: str):
    fig, ax = plots.plt.subplots(figsize=(5.5, 3.6))
    a = [r["alpha"] for r in rows]
    ax.plot(a, [r["val"]["top1"] for r in rows], "o-", label="val top-1")
    ax.plot(a, [r["test"]["top1"] for r in rows], "s--", label="test top-1")
    ax.axvline(chosen, color="gray", lw=0.8, ls=":", label=f"chosen on val: {chosen:g}")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("alpha (0 = base alone)")
    ax.set_ylabel("top-1")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def summarise(recs: list[dict]) -> pd.DataFrame:
    """Seed 000's shape: anti-expert, expert, base, then proxy-tuned per option at the alpha chosen on val."""
    rows = []
    for r in recs:
        p, f = r.get("protocol", {}), records.facets(r)
        if f.get("role") or str(f.get("label", "")).startswith("role="):
            label, alpha = p.get("role"), ""
        elif p.get("chosen"):
            label, alpha = f"proxy-tuned ({p['space']}{', temperature-matched' if p['match_temperature'] else ''})", p["alpha"]
        else:
            continue
        m = r["metrics"]
        rows.append({"model": label, "alpha (chosen on val)": alpha, "top1": round(m["top1"], 4),
                     "balanced_acc": round(m["balanced_accuracy"], 4), "ece": round(m["ece"], 4),
                     "untrained": bool(r.get("untrained"))})
    order = {"anti-expert": 0, "expert": 1, "base": 2}
    table = pd.DataFrame(sorted(rows, key=lambda row: order.get(row["model"], 3)))
    return records.mask_untrained(table, ["top1", "balanced_acc", "ece"])


EXPERIMENT = Experiment("07_proxy_tuning", "07 — Proxy tuning (alpha chosen on val)", section="proxy",
                        summarise=summarise)
