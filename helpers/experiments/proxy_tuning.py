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
from helpers.core import config, storage
from helpers.core.errors import MissingCheckpointError
from helpers.data import prompts
from helpers.eval import metrics, zeroshot
from helpers.experiments import Experiment, clip_finetune
from helpers.experiments.common import (
    Outcome,
    encode,
    fingerprint,
    recorded,
    save_stamped,
    say_skipped,
    slug,
    train_config,
)
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


def find_expert(P, splits) -> tuple[str | None, dict]:
    """(spec, provenance) of ``proxy.expert``: a ``06:`` reference resolves to the checkpoint notebook
    06 recorded; spec None when there is none (it must be trained: :func:`train_expert`)."""
    spec = P["proxy"]["expert"]
    if not spec.startswith("06:"):
        return spec, {"source": "proxy.expert", "requested": spec}
    rec = clip_finetune.recorded_checkpoint(P, splits, spec)
    if rec is None:
        return None, {"source": "none recorded", "requested": spec}
    return rec["model"]["spec"], {"source": "notebook 06 record", "requested": spec, "record_key": rec["key"],
                                  "recorded": rec["created"], "weights_sha256": rec["model"]["weights_sha256"]}


def train_expert(P, splits, progress: bool = True) -> tuple[str, dict]:
    """Fine-tune the expert ``06:<objective>[:<model>]`` names with notebook 06's code and the settings of
    ``proxy.expert_train``, saying so before it starts; or, with ``proxy.train_missing_expert: false``,
    stop and say which notebook-06 run makes it. Returns (checkpoint spec, what the records state)."""
    s = P["proxy"]
    objective, model = clip_finetune.checkpoint_reference(P, s["expert"])
    where = f"on {splits['test'].name} in profile {P.name}"
    if not s["train_missing_expert"]:
        raise MissingCheckpointError(
            f"proxy.expert {s['expert']}: notebook 06 recorded no {objective} checkpoint of {model} {where}, and "
            f"proxy.train_missing_expert is false. Run notebook 06 first: python -m helpers.suite --profile {P.name} "
            f"--only 06 -p clip_finetune.model={model} -p 'clip_finetune.objectives=[{objective}]' "
            "(or set proxy.train_missing_expert=true to train it here with proxy.expert_train)")
    recipe = {**s["expert_train"], "model": model, "templates": s["templates"]}
    t = recipe["train"]
    accumulate = f" x {t['accumulate']} accumulated" if t["accumulate"] > 1 else ""
    print(f"07: notebook 06 recorded no {objective} checkpoint of {model} {where}: training it now with "
          f"proxy.expert_train ({t['epochs']} epochs, lr {t['lr']:g}, batch {t['batch_size']}{accumulate}, "
          f"weight decay {t['weight_decay']:g}, "
          f"freeze {recipe['freeze']}, color jitter {recipe['color_jitter']:g}); "
          "proxy.train_missing_expert=false stops instead")
    run = clip_finetune.fine_tune(P, splits, objective, recipe, progress=progress)
    card = {"source": "trained by notebook 07 (notebook 06 recorded no checkpoint)", "requested": s["expert"],
            "objective": objective, "start": model, "settings": {k: v for k, v in recipe.items() if k != "train"},
            "train": train_config(t, P.seed).card(), "batch_size": t["batch_size"], "checkpoint": run.checkpoint,
            "best_epoch": run.tuned.result.best_epoch, "test_top1": run.tuned.test_metrics["top1"],
            "training": run.tuned.result.training_card(f"07 expert: {objective} fine-tuning of {model}")}
    run.release()
    return run.spec, card


def _weights_id(spec: str) -> str:
    """A file's sha256 (its content can change under the same name), any other spec as it is."""
    return storage.sha256_file(spec[len("file:"):]) if spec.startswith("file:") else spec


def _variants(s: dict) -> list[str]:
    return [*(f"role={r}" for r in ("anti-expert", "expert", "base")),
            *(f"proxy|{space}|match={bool(m)}|alpha={float(a):g}" for space in s["spaces"]
              for m in s["match_temperature"] for a in s["alphas"])]


def run(P, splits, progress: bool = True):
    """Notebook 07: scores of the three roles from cached features, the alpha sweep for every option
    (logits / log-probabilities, with / without temperature matching), alpha chosen on val, test read
    once; a table in the shape anti-expert / expert / base / proxy-tuned, figures, and records.

    A rerun whose every record exists for the same protocol (settings, role weights, val/test
    fingerprints, seed) reads them back instead of measuring again."""
    s = P["proxy"]
    val, test = splits["val"], splits["test"]
    expert, provenance = find_expert(P, splits)
    resume = fingerprint(proxy=s, expert=expert, expert_sha=provenance.get("weights_sha256"),
                         roles={k: _weights_id(s[k]) for k in ("anti_expert", "base")}, seed=P.seed,
                         val=val.fingerprint(), test=test.fingerprint(), autocast=config.dtype_name(config.autocast_dtype()))
    done = recorded(P, EXPERIMENT.id, resume, _variants(s))
    if done is not None:
        tuned = done["role=expert"]["model"]
        if clip_finetune.checkpoint_unchanged(tuned["spec"], tuned["weights_sha256"]):
            say_skipped(EXPERIMENT.id, f"proxy tuning of {s['base']} by {tuned['spec']}", done)
            return _outcome(P, s, test, [done[v] for v in _variants(s)], save=False)
    if expert is None:
        expert, provenance = train_expert(P, splits, progress)
    specs = {"anti-expert": s["anti_expert"], "base": s["base"], "expert": expert}
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

    recs = []
    protocol = {"templates": prompts.templates(s["templates"]), "roles": specs, "expert": provenance, "resume": resume,
                "alpha_grid": alphas, "alpha_selection": "best val top-1 (ties: smallest alpha); test read after"}
    for role in ("anti-expert", "expert", "base"):
        r = roles[role]
        m = metrics.classification_metrics(r.test, test.labels, test.num_classes)
        recs.append(records.make_record(EXPERIMENT.id, m, dataset=test.card(), model=r.loaded.card(),
                                        profile=P.name, variant=f"role={role}", seeds=[P.seed],
                                        wall_time_s=r.seconds, protocol={**protocol, "role": role, "logit_scale": r.scale},
                                        facets={"head": "zero-shot", "role": role},
                                        predictions=r.test, labels=test.labels))
    proxy_card = {"spec": f"proxy[base={specs['base']}, expert={specs['expert']}, anti={specs['anti-expert']}]",
                  # the steering carries the result: trained when the expert is, whatever the base's status
                  "status": "proxy-tuned" if roles["expert"].loaded.trained else "untrained",
                  "roles": {role: r.loaded.card() for role, r in roles.items()}}
    for (space, match), rows_ in sweeps.items():
        best = chosen[(space, match)]
        for r in rows_:
            recs.append(records.make_record(
                EXPERIMENT.id, {**r["test"], "val_top1": r["val"]["top1"]}, dataset=test.card(),
                model=proxy_card, profile=P.name, seeds=[P.seed],
                variant=f"proxy|{space}|match={match}|alpha={r['alpha']:g}",
                protocol={**protocol, "space": space, "match_temperature": match, "alpha": r["alpha"],
                          "chosen": r is best, "val_split": val.card()},
                facets={"head": "proxy-tuned", "space": space, "match_temperature": match, "alpha": r["alpha"],
                        "chosen_on_val": r is best}))
    outcome = _outcome(P, s, test, recs, save=True)
    for rec in recs:
        records.append_record(rec)
    outcome.extra["roles"] = roles
    return outcome


def _outcome(P, s: dict, test, recs: list[dict], save: bool) -> Outcome:
    """Table, sweep, chosen alphas and figures from the records alone, so a run that measured them and
    a rerun that read them back show the same; ``save`` writes the figures and names them in the records."""
    by_variant = {r["variant"]: r for r in recs}
    rows = [{"model": role, "spec": rec["model"]["spec"], "alpha": None, "top1": rec["metrics"]["top1"],
             "balanced_acc": rec["metrics"]["balanced_accuracy"], "ece": rec["metrics"]["ece"],
             "untrained": rec["untrained"]} for role in ("anti-expert", "expert", "base")
            for rec in [by_variant[f"role={role}"]]]
    points = [r for r in recs if r["variant"].startswith("proxy|")]
    frame = pd.DataFrame([{"space": r["protocol"]["space"], "match_temperature": r["protocol"]["match_temperature"],
                           "alpha": r["protocol"]["alpha"], "val_top1": r["metrics"]["val_top1"],
                           "test_top1": r["metrics"]["top1"]} for r in points])
    chosen = {}
    for r in points:
        if r["protocol"]["chosen"]:
            p = r["protocol"]
            chosen[f"{p['space']}|match={p['match_temperature']}"] = p["alpha"]
            rows.append({"model": f"proxy-tuned ({p['space']}{', temperature-matched' if p['match_temperature'] else ''})",
                         "spec": s["base"], "alpha": p["alpha"], "top1": r["metrics"]["top1"],
                         "balanced_acc": r["metrics"]["balanced_accuracy"], "ece": r["metrics"]["ece"],
                         "untrained": r["untrained"]})
    table = records.mask_untrained(pd.DataFrame(rows), ["top1", "balanced_acc", "ece"])

    space, match = s["spaces"][0], bool(s["match_temperature"][0])  # the main option
    main = frame[(frame["space"] == space) & (frame["match_temperature"] == match)]
    best = by_variant[f"proxy|{space}|match={match}|alpha={chosen[f'{space}|match={match}']:g}"]
    curve = alpha_figure(main, best["protocol"]["alpha"], f"proxy tuning ({space})")
    base = by_variant["role=base"]
    gains = np.asarray(best["metrics"]["per_class_recall"]) - np.asarray(base["metrics"]["per_class_recall"])
    bars = plots.per_class_delta(test.classnames, gains,
                                 title=f"per-class recall: proxy-tuned (alpha={best['protocol']['alpha']:g}) - base")
    if save:
        stem = slug("07_proxy", test.name, s["base"])
        saved = [save_stamped(curve, P, f"{stem}-alpha", s["base"], False),
                 save_stamped(bars, P, f"{stem}-per-class", s["base"], base["untrained"])]
        for rec in recs:
            rec["figures"] = saved
    elif base["untrained"]:
        plots.mark_untrained(bars, s["base"])
    return Outcome(recs, table, {"alpha": curve, "per_class": bars}, {"sweep": frame, "chosen": chosen})


def alpha_figure(sweep: pd.DataFrame, chosen: float, title: str):
    """Val and test top-1 of one option against alpha (``sweep``: its alpha, val_top1, test_top1)."""
    fig, ax = plots.plt.subplots(figsize=(5.5, 3.6))
    a = list(sweep["alpha"])
    ax.plot(a, list(sweep["val_top1"]), "o-", label="val top-1")
    ax.plot(a, list(sweep["test_top1"]), "s--", label="test top-1")
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


def _comparison(rec: dict) -> str | None:
    """The summary's proxy-tuned cell: logit arithmetic as Liu et al. (2024) define it, alpha chosen on val."""
    f = records.facets(rec)
    chosen = f.get("head") == "proxy-tuned" and f.get("chosen_on_val") is True
    return "proxy-tuned" if chosen and f.get("space") == "logits" and not f.get("match_temperature") else None


EXPERIMENT = Experiment("07_proxy_tuning", "07 — Proxy tuning (alpha chosen on val)", section="proxy",
                        summarise=summarise, comparison=_comparison, comparison_columns=("proxy-tuned",),
                        headline=lambda path: path.endswith("-alpha.png"))
