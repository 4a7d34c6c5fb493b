"""Notebook 06 as calls: fine-tune CLIP on the target dataset with each objective, then measure what
changed — zero-shot before vs after on the target and on held-out datasets (forgetting), WiSE-FT
weight interpolation, and retrieval before vs after fine-tuning on captions.

Every fine-tuned model is saved in its own library's format (OpenAI state dict -> ``file:``, open_clip
hub-layout folder -> ``open_clip:local-dir:``, transformers ``save_pretrained`` folder -> ``hf:``) and read
back through that spec, so what is measured after training is exactly what the rest of the suite (and
notebook 07) loads.
The same functions run under ``torchrun`` (``scripts/finetune_clip.py``); only rank 0 writes.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers import data, models
from helpers.core import config, distributed, storage
from helpers.data import Samples, prompts, synthetic, transforms
from helpers.eval import features, metrics, probes, zeroshot
from helpers.experiments import Experiment
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
from helpers.profiles import Profile
from helpers.results import plots, records
from helpers.train import clip_objectives as cf
from helpers.train import loop, supervised

EXPERIMENT = Experiment(
    "06_clip_finetune", "06 — CLIP fine-tuning, WiSE-FT and retrieval", section="clip_finetune",
    comparison=lambda rec: "fine-tuned" if records.facets(rec).get("stage") == "fine-tuned"
    or records.facets(rec).get("label1") == "fine-tuned" else None,
    comparison_columns=("fine-tuned",), headline=lambda path: path.endswith("-wise-ft.png"))


def held_out_tests(P: Profile, names) -> list[Samples]:
    """Test splits of the held-out datasets named in the parameters: ``synthetic``, ``eurosat`` or an
    image folder (``<root>/<class>/*`` or with train/test subfolders)."""
    out = []
    for item in names or []:
        if item == "synthetic":
            out.append(synthetic.load_synthetic(seed=P.seed)["test"])
        elif item == "eurosat":
            out.append(data.load_eurosat(val_fraction=0, seed=P.seed)["test"])
        else:
            out.append(data.load_image_folder(item, seed=P.seed)["test"])
    return out


def zero_shot_metrics(P: Profile, loaded: models.LoadedModel, samples: Samples, templates) -> dict:
    feats = encode(P, loaded, samples)
    return zeroshot.evaluate(loaded, feats.features, feats.labels, samples.classnames, templates)["metrics"]


def in_memory(like: models.LoadedModel, spec: str, model: torch.nn.Module, status: str, meta: dict | None = None
              ) -> models.LoadedModel:
    """A model that exists only in memory (e.g. WiSE-FT weights) with the tokenizer and preprocessing of
    ``like``, named by its weights' hash so the feature cache keys it correctly."""
    sha = storage.sha256_state_dict(model.state_dict())
    return dataclasses.replace(like, spec=spec, model=model.float().eval(), weights_sha256=sha, status=status,
                               source_file=None, meta=meta or {})


@dataclass(frozen=True)
class ModelCard:
    """What a record needs of a model, its card, without holding its weights (WiSE-FT makes one model per
    alpha; keeping them all would hold 11 copies of the CLIP)."""

    card_: dict

    def card(self) -> dict:
        return self.card_


@dataclass
class FineTuneRun:
    """One objective's fine-tuning. The model is held only while its objective is measured
    (:meth:`release` drops it); afterwards ``loaded`` reads the checkpoint back from disk, so a run over
    several objectives holds one fine-tuned model at a time. ``tuned`` is None for an objective whose
    results were already recorded (resumed: nothing was trained or measured)."""

    objective: str
    tuned: supervised.Finetuned | None
    spec: str  # the saved checkpoint's spec (file:<path>, open_clip:local-dir:..., hf:...)
    freeze: dict
    checkpoint: str
    train_card: dict
    trained_sha256: str  # this process's weights after training (ranks of a DDP run must agree)
    initial_sha256: str
    held: models.LoadedModel | None = field(default=None, repr=False)

    @property
    def loaded(self) -> models.LoadedModel:
        """The fine-tuned model: the one held, else read back through its spec (not kept)."""
        return self.held if self.held is not None else models.load_model(self.spec)

    def release(self) -> None:
        """Off the device, references dropped, collected: memory goes back before the next objective."""
        if self.held is not None:
            self.held.model.to("cpu")
            self.held = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _head_init(P: Profile, objective: str, loaded0: models.LoadedModel, splits, s: dict):
    """Starting weights of the linear head: LP-FT -> a logistic-regression probe on frozen features;
    ML -> the zero-shot classifier x logit scale (or random when ``head_init: random``)."""
    classnames = splits["test"].classnames
    if objective == "LP-FT":
        f = {k: encode(P, loaded0, splits[k]) for k in ("train", "val")}
        fit = probes.fit_logistic(f["train"].features, f["train"].labels, f["val"].features, f["val"].labels,
                                  refit_on_val=False, max_iter=int(s.get("probe_max_iter", 1000)),
                                  backend=P["few_shot"]["probe_backend"])
        return (torch.as_tensor(fit.model.coef_, dtype=torch.float32),
                torch.as_tensor(fit.model.intercept_, dtype=torch.float32), {"probe_C": fit.C})
    if objective == "ML" and s.get("head_init", "zero-shot") == "zero-shot":
        w = zeroshot.text_classifier(loaded0, classnames, s["templates"]) * zeroshot.logit_scale(loaded0)
        return w, None, {"head_init": "zero-shot classifier x logit scale"}
    return None, None, {"head_init": "random"}


def fine_tune(P: Profile, splits: dict[str, Samples], objective: str, s: dict, progress: bool = True) -> FineTuneRun:
    """Fine-tune the profile's CLIP with one objective; the best epoch (val top-1) is saved in the model
    library's own format and loaded back through the spec that names it."""
    spec, classnames = s["model"], splits["test"].classnames
    loaded0 = models.load_model(spec)
    head_w, head_b, head_card = _head_init(P, objective, loaded0, splits, s)
    model = copy.deepcopy(loaded0.model)
    freeze = cf.apply_freeze(model, s.get("freeze", "unfreeze"), bool(s.get("freeze_text", False)))
    tuner = cf.FineTuner(model, objective, classnames, s.get("train_templates") or s["templates"],
                         seed=P.seed, head_init=head_w, head_bias=head_b, eval_templates=s["templates"],
                         tokenize=loaded0.tokenize, embed_dim=loaded0.embed_dim)
    freeze["trainable"], freeze["total"] = loop.count_trainable(tuner)
    if progress and distributed.is_main():
        print(f"{objective}: {freeze['trainable']:,} of {freeze['total']:,} parameters trainable ({freeze['strategy']}"
              f"{', text tower frozen' if s.get('freeze_text') else ''})")
    res, interp = loaded0.resolution, s.get("interpolation", "bicubic")
    train_tf, train_tcard = transforms.image_transform(res, interp, *loaded0.normalization,
                                                       train=True, aerial=bool(s.get("aerial", True)),
                                                       color_jitter=float(s.get("color_jitter", 0.0)))
    eval_tf, _ = loaded0.transform(interp)
    cfg = train_config(s["train"], P.seed)
    batch = int(s["train"].get("batch_size", 64))
    train_card = {"objective": objective, "spec": spec, "weights": loaded0.weights_sha256, "freeze": freeze,
                  "data": splits["train"].fingerprint(), "transform": train_tcard, **head_card,
                  "train_templates": prompts.templates(s.get("train_templates") or s["templates"]),
                  "eval_templates": prompts.templates(s["templates"]), "world_size": distributed.world_size()}
    dev = config.device()
    tuned = supervised.train_classifier(tuner, splits, train_tf, eval_tf, cfg, batch, train_card, progress=progress,
                                      loss_fn=lambda m, b: m(b[0].to(dev), b[1]), classify=tuner.classify)
    run_key = storage.sha256_json({"run": train_card, "cfg": cfg.card(), "batch": batch})[:10]  # a new run never overwrites
    stem = config.cache_dir() / "models" / P.name / f"{slug(EXPERIMENT.id, objective, spec)}-{run_key}"
    meta = {"trained": True, "by": EXPERIMENT.id, "objective": objective, "initial": loaded0.card(),
            "dataset": splits["train"].card(), "test_top1": tuned.test_metrics["top1"],
            "best_epoch": tuned.result.best_epoch, "train": cfg.card()}
    saved = models.save_finetuned(loaded0, tuner.clip, stem, meta) if distributed.is_main() else None
    saved = distributed.broadcast_object(saved)
    loaded = models.load_model(saved)
    return FineTuneRun(objective, tuned, loaded.spec, freeze, loaded.source_file or saved, train_card,
                       storage.sha256_state_dict(tuner.clip.state_dict()), loaded0.weights_sha256, held=loaded)


def checkpoint_reference(P, spec: str) -> tuple[str, str]:
    """``06:<objective>[:<model spec>]`` -> (objective, starting model; default ``clip_finetune.model``)."""
    _, objective, *model = spec.split(":", 2)
    return objective, model[0] if model else P["clip_finetune"]["model"]


def recorded_checkpoint(P, splits, spec: str) -> dict | None:
    """The newest notebook-06 record of the checkpoint ``06:<objective>[:<model spec>]`` names in this
    profile (that objective, that starting model, this dataset) whose weights are still on disk
    unchanged; None when there is none."""
    objective, model = checkpoint_reference(P, spec)
    found = [r for r in records.read_records(profile=P.name)
             if r["experiment"] == EXPERIMENT.id and r["variant"] == f"{objective}|fine-tuned"
             and r["protocol"].get("train_card", {}).get("spec") == model
             and r["dataset"].get("name") == splits["test"].name]
    for rec in sorted(found, key=lambda r: r["created"], reverse=True):
        if checkpoint_unchanged(rec["model"]["spec"], rec["model"]["weights_sha256"]):
            return rec
    return None


def checkpoint_spec(P, splits, spec: str, progress: bool = True) -> str:
    """A model spec; ``06:<objective>[:<model spec>]`` names the checkpoint notebook 06 recorded (see
    :func:`recorded_checkpoint`). When there is none, it is trained now with notebook 06's code and
    settings (notebook 07 trains its expert with its own, stated settings instead)."""
    if not spec.startswith("06:"):
        return spec
    rec = recorded_checkpoint(P, splits, spec)
    if rec is not None:
        return rec["model"]["spec"]
    objective, model = checkpoint_reference(P, spec)
    if progress:
        print(f"no {objective} checkpoint of {model} from notebook 06 in profile {P.name}: "
              "training it now with notebook 06's code and settings")
    run = fine_tune(P, splits, objective, dict(P["clip_finetune"], model=model), progress=progress)
    run.release()
    return run.spec


def checkpoint_unchanged(spec: str, sha256: str) -> bool:
    """The checkpoint a record names is still on disk with the weights that record measured."""
    if spec.startswith("file:"):
        path = Path(spec[len("file:"):])
        return path.is_file() and storage.sha256_file(path) == sha256
    try:
        return not models.missing_weights(spec) and models.load_model(spec, device="cpu").weights_sha256 == sha256
    except (models.ModelSpecError, models.WeightsNotFoundError, OSError):
        return False


def wise_ft(P: Profile, loaded0: models.LoadedModel, run: FineTuneRun, tests: list[Samples], alphas, templates
            ) -> list[dict]:
    """Zero-shot accuracy of theta = (1 - alpha) theta_0 + alpha theta_ft on each test split.

    Each alpha is a model of its own weights, so each test split is encoded once per alpha (11 alphas:
    11 encodes per objective) through the feature cache, keyed by the interpolated weights' sha256: a
    rerun hashes and reads, it does not encode again. Only one interpolated model exists at a time;
    a row keeps its card, not the model."""
    rows = []
    start, end = loaded0.model.state_dict(), run.loaded.model.state_dict()
    for alpha in alphas:
        model = copy.deepcopy(loaded0.model)
        model.load_state_dict(cf.interpolate(start, end, float(alpha)))
        status = loaded0.status if alpha == 0 else ("trained" if alpha == 1 else "interpolated")
        loaded = in_memory(loaded0, f"{run.loaded.spec}|wise-ft alpha={alpha:g}", model, status,
                           {"alpha": float(alpha), "zero_shot": loaded0.spec, "fine_tuned": run.checkpoint})
        for t in tests:
            m = zero_shot_metrics(P, loaded, t, templates)
            rows.append({"alpha": float(alpha), "dataset": t.name, "top1": m["top1"], "metrics": m,
                         "loaded": ModelCard(loaded.card()), "samples": t, "untrained": not loaded.trained})
        del model, loaded
    return rows


def wise_ft_figure(rows: list[dict], title: str):
    fig, ax = plots.plt.subplots(figsize=(5.5, 3.6))
    frame = pd.DataFrame([{k: r[k] for k in ("alpha", "dataset", "top1")} for r in rows])
    for name, g in frame.groupby("dataset", sort=False):
        ax.plot(g["alpha"], g["top1"], "o-", label=name)
    ax.set_xlabel("alpha (0 = zero-shot weights, 1 = fine-tuned)")
    ax.set_ylabel("zero-shot top-1 (prompt matching)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def run(P: Profile, splits: dict[str, Samples], progress: bool = True) -> Outcome:
    """Every objective of the profile: train, save, read back; zero-shot before/after on the target
    and held-out tests; WiSE-FT for the prompt objectives. Records for every number."""
    s = P["clip_finetune"]
    test, templates = splits["test"], s["templates"]
    tests = [test, *[t for t in held_out_tests(P, s.get("held_out")) if t.name != test.name]]
    loaded0 = models.load_model(s["model"])
    recs, rows, figs, extra = [], [], {}, {"runs": {}}

    def record(variant, m, samples, loaded, protocol, wall, figures=(), predictions=None, **facets):
        """Each result is written the moment it exists: a run stopped later (memory, time, Ctrl-C)
        keeps every objective finished before it."""
        rec = records.make_record(EXPERIMENT.id, m, dataset=samples.card(), model=loaded.card(), profile=P.name,
                                  variant=variant, seeds=[P.seed], wall_time_s=wall, figures=figures,
                                  protocol={"templates": prompts.templates(templates), **protocol}, facets=facets,
                                  predictions=predictions, labels=None if predictions is None else samples.labels)
        recs.append(rec)
        if distributed.is_main():
            records.append_record(rec)

    timer = records.Timer()
    before = {t.name: zero_shot_metrics(P, loaded0, t, templates) for t in tests}
    for t in tests:
        record(f"zero-shot before|{t.name}", before[t.name], t, loaded0, {"stage": "before fine-tuning"}, timer.seconds,
               head="zero-shot", stage="zero-shot before")
        rows.append({"objective": "-", "stage": "zero-shot before", "dataset": t.name,
                     "top1": before[t.name]["top1"], "untrained": not loaded0.trained})

    for objective in s["objectives"]:
        timer = records.Timer()
        resume = fingerprint(objective=objective, settings={k: v for k, v in s.items() if k not in ("objectives", "retrieval")},
                             seed=P.seed, start=loaded0.weights_sha256, tests=[t.fingerprint() for t in tests],
                             data={k: splits[k].fingerprint() for k in ("train", "val", "test")},
                             autocast=config.dtype_name(config.autocast_dtype()))
        done = _recorded_objective(P, objective, resume, tests, s)
        if done is not None:  # every result of this objective exists for this protocol: nothing to train or encode
            say_skipped(EXPERIMENT.id, f"{objective} of {s['model']}", done)
            tuned_rec = done[f"{objective}|fine-tuned"]
            p = tuned_rec["protocol"]
            extra["runs"][objective] = FineTuneRun(objective, None, tuned_rec["model"]["spec"], p["freeze"], p["checkpoint"],
                                                   p["train_card"], tuned_rec["model"]["weights_sha256"],
                                                   p["train_card"]["weights"])
            _table_rows(objective, list(done.values()), rows, extra)
            recs.extend(done.values())
            continue
        first = len(recs)
        run = fine_tune(P, splits, objective, s, progress=progress)
        extra["runs"][objective] = run
        tuned, status = run.tuned, "fine-tuned" if loaded0.trained else "trained from scratch"
        stem = slug("06", test.name, objective, s["model"])
        curve = loop.curves_figure(tuned.result.history, title=f"{s['model']} {objective} ({status})")
        cm = plots.confusion_matrix(metrics.confusion(tuned.test_logits, test.labels, test.num_classes),
                                    test.classnames, title=f"{objective} {status}: test confusion")
        saved = [save_stamped(curve, P, f"{stem}-curves", s["model"], False), save_stamped(cm, P, f"{stem}-confusion", s["model"], False)]
        figs[f"{objective} curves"], figs[f"{objective} confusion"] = curve, cm
        head = "linear head" if tuned_has_head(objective) else "prompt matching (all templates, averaged)"
        protocol = {"stage": status, "objective": objective, "classifier": head, "freeze": run.freeze,
                    "train": train_config(s["train"], P.seed).card(),
                    "batch_size": int(s["train"].get("batch_size", 64)), "train_card": run.train_card,
                    "epochs_run": len(tuned.result.history), "best_epoch": tuned.result.best_epoch,
                    "stopped": tuned.result.stopped, "train_seconds": tuned.result.seconds,
                    "resumed_from_epoch": tuned.result.resumed_from, "checkpoint": run.checkpoint,
                    "history": tuned.result.history, "autocast": config.dtype_name(config.autocast_dtype()),
                    "resume": resume, "training": tuned.result.training_card(f"06 {objective} fine-tuning of {s['model']}")}
        record(f"{objective}|fine-tuned", {**tuned.test_metrics, "best_val_top1": tuned.result.best_metric},
               test, run.loaded, protocol, timer.seconds, saved, predictions=tuned.test_logits, head=head,
               objective=objective, stage="fine-tuned")
        for t in tests:
            m = zero_shot_metrics(P, run.loaded, t, templates)
            record(f"{objective}|zero-shot after|{t.name}", m, t, run.loaded,
                   {"stage": f"zero-shot after {objective} fine-tuning", "checkpoint": run.checkpoint, "resume": resume},
                   timer.seconds, head="zero-shot", objective=objective, stage="zero-shot after")
        if s.get("wise_ft") and not tuned_has_head(objective):
            wrows = wise_ft(P, loaded0, run, tests, s["wise_ft"]["alphas"], templates)
            fig = wise_ft_figure(wrows, f"WiSE-FT: {s['model']} {objective}")
            if not loaded0.trained:
                fig.axes[0].annotate("alpha=0: untrained weights", (0, 0), xycoords="axes fraction",
                                     xytext=(4, 4), textcoords="offset points", fontsize=7, color="gray")
            wsaved = [save_stamped(fig, P, f"{stem}-wise-ft", s["model"], False)]
            figs[f"{objective} WiSE-FT"] = fig
            for r in wrows:
                record(f"{objective}|wise-ft alpha={r['alpha']:g}|{r['dataset']}", r["metrics"], r["samples"],
                       r["loaded"], {"stage": "WiSE-FT", "alpha": r["alpha"], "zero_shot": s["model"],
                                     "fine_tuned": run.checkpoint, "resume": resume}, timer.seconds, wsaved,
                       head="zero-shot", objective=objective, stage="WiSE-FT", alpha=r["alpha"])
            del wrows
        _table_rows(objective, recs[first:], rows, extra)
        run.release()  # the next objective starts with this one's model off the device and collected
    return Outcome(recs, records.mask_untrained(pd.DataFrame(rows), ["top1"]), figs, extra)


def _recorded_objective(P: Profile, objective: str, resume: str, tests: list[Samples], s: dict) -> dict | None:
    """Every record of ``objective`` written for this protocol (fine-tuned, zero-shot after on each test,
    WiSE-FT per alpha), with its checkpoint still on disk unchanged; else None. Rank 0 decides."""
    variants = [f"{objective}|fine-tuned", *(f"{objective}|zero-shot after|{t.name}" for t in tests)]
    if s.get("wise_ft") and not tuned_has_head(objective):
        variants += [f"{objective}|wise-ft alpha={float(a):g}|{t.name}" for a in s["wise_ft"]["alphas"] for t in tests]
    done = recorded(P, EXPERIMENT.id, resume, variants) if distributed.is_main() else None
    if done is not None:
        model = done[f"{objective}|fine-tuned"]["model"]
        done = done if checkpoint_unchanged(model["spec"], model["weights_sha256"]) else None
    return distributed.broadcast_object(done)


def _table_rows(objective: str, recs: list[dict], rows: list[dict], extra: dict) -> None:
    """The notebook's table rows (and WiSE-FT table) of one objective, from its records: the same whether
    they were measured now or read back on a rerun."""
    wise = []
    for r in recs:
        stage, top1 = r["protocol"].get("stage"), r["metrics"]["top1"]
        if stage == "WiSE-FT":
            wise.append({"alpha": r["protocol"]["alpha"], "dataset": r["dataset"]["name"], "top1": top1,
                         "untrained": r["untrained"]})
        elif r["variant"].startswith(f"{objective}|"):
            rows.append({"objective": objective, "stage": "zero-shot after" if "zero-shot after" in r["variant"] else stage,
                         "dataset": r["dataset"]["name"], "top1": top1, "untrained": False})
    if wise:
        extra.setdefault("wise_ft", {})[objective] = pd.DataFrame(wise)


def tuned_has_head(objective: str) -> bool:
    return objective in ("ML", "LP-FT")


# ------------------------------------------------------------------------------------- retrieval
class CaptionPairs(torch.utils.data.Dataset):
    """Every (image, caption) pair of a caption set; the image index groups the pairs of one image."""

    def __init__(self, captions: data.CaptionSet, image_ids: np.ndarray, transform):
        keep = np.isin(captions.caption_image, image_ids)
        self.pairs = [(int(i), c) for i, c, k in zip(captions.caption_image, captions.captions, keep, strict=True) if k]
        self.images, self.transform = captions.images, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        img, caption = self.pairs[i]
        return self.transform(data.load_rgb(self.images[img])), caption, img


def split_captions(captions: data.CaptionSet, test_fraction: float, val_fraction: float, seed: int
                   ) -> dict[str, np.ndarray]:
    """{"train", "val", "test"} image ids: a seeded split by image, so no image has captions in two splits."""
    ids = np.random.default_rng(seed).permutation(len(captions))
    n_test, n_val = max(1, round(test_fraction * len(ids))), max(1, round(val_fraction * len(ids)))
    if n_test + n_val >= len(ids):
        raise data.DatasetError(f"{captions.name}: {len(ids)} images are too few for a train/val/test split")
    return {"test": np.sort(ids[:n_test]), "val": np.sort(ids[n_test:n_test + n_val]),
            "train": np.sort(ids[n_test + n_val:])}


def recall(P: Profile, loaded: models.LoadedModel, captions: data.CaptionSet, image_ids: np.ndarray) -> dict:
    sub = captions.image_samples().subset(image_ids, selection="retrieval test images")
    img = encode(P, loaded, sub).features
    keep = np.isin(captions.caption_image, image_ids)
    txt = features.text_features(loaded, [c for c, k in zip(captions.captions, keep, strict=True) if k])
    owner = np.searchsorted(image_ids, captions.caption_image[keep])
    return metrics.retrieval_recall(img, txt, owner)


def load_caption_set(item: str, images: str | None = None) -> data.CaptionSet:
    """``synthetic`` or a captions file (.csv or Karpathy-style .json); ``images``: the folder holding
    its images when they are neither beside the file nor in an ``images/`` folder beside it."""
    if item == "synthetic":
        return synthetic.load_synthetic_captions()
    return data.load_captions(item, images)


def retrieval(P: Profile, start_spec: str | None = None, progress: bool = True) -> Outcome:
    """Recall@1/5/10 both ways on held-out images of a caption set, before and after fine-tuning on
    the other images' captions with CLIP's contrastive loss (``start_spec``: the model to start from)."""
    s = P["clip_finetune"]["retrieval"]
    captions = load_caption_set(s["captions"], s.get("images"))
    ids = split_captions(captions, float(s.get("test_fraction", 0.4)), float(s.get("val_fraction", 0.2)), P.seed)
    train_ids, test_ids = ids["train"], ids["test"]
    spec = start_spec or P["clip_finetune"]["model"]
    timer = records.Timer()
    loaded0 = models.load_model(spec)
    before = recall(P, loaded0, captions, test_ids)
    model = copy.deepcopy(loaded0.model)
    freeze = cf.apply_freeze(model, s.get("freeze", "unfreeze"))
    tuner = cf.FineTuner(model, "captions", seed=P.seed, tokenize=loaded0.tokenize, embed_dim=loaded0.embed_dim)
    res = loaded0.resolution
    train_tf, train_tcard = transforms.image_transform(res, "bicubic", *loaded0.normalization,
                                                       train=True, aerial=bool(s.get("aerial", False)))
    cfg = train_config(s["train"], P.seed)
    batch = int(s["train"].get("batch_size", 32))
    loader = loop.train_loader(CaptionPairs(captions, train_ids, train_tf), batch, cfg.seed)
    dev = config.device()

    def evaluate(m):
        current = in_memory(loaded0, f"{spec}|captions", copy.deepcopy(tuner.clip), "trained")
        return {"mean_recall": recall(P, current, captions, ids["val"])["mean_recall"]}

    cfg.metric = "mean_recall"
    card = {"spec": spec, "weights": loaded0.weights_sha256, "captions": captions.card(), "train_ids": len(train_ids)}
    ckpt = config.cache_dir() / "checkpoints" / storage.sha256_json({"run": card, "cfg": cfg.card(), "batch": batch})[:20]
    result = loop.train(tuner, loader, lambda m, b: m(b[0].to(dev), b[1], torch.as_tensor(b[2])), evaluate,
                            cfg, ckpt, run_card=card, progress=progress)
    after_model = in_memory(loaded0, f"{spec}|caption fine-tuned", tuner.clip, "trained",
                            {"objective": "contrastive on captions", "initial": spec})
    after = recall(P, after_model, captions, test_ids)
    sub = captions.image_samples().subset(test_ids, selection="retrieval test images")
    recs = []
    for stage, loaded, m in (("before", loaded0, before), ("after caption fine-tuning", after_model, after)):
        recs.append(records.make_record(
            EXPERIMENT.id, m, dataset={**sub.card(), "captions": captions.card()}, model=loaded.card(), profile=P.name,
            variant=f"retrieval|{stage}", seeds=[P.seed], wall_time_s=timer.seconds,
            protocol={"task": "retrieval", "stage": stage, "split": f"{len(train_ids)} train / {len(ids['val'])} val / "
                      f"{len(test_ids)} test images (seeded split by image, seed {P.seed})", "freeze": freeze,
                      "train": cfg.card(), "batch_size": batch, "train_transform": train_tcard,
                      "epochs_run": len(result.history), "best_epoch": result.best_epoch,
                      "selection": "best epoch by mean recall on the val images"},
            facets={"task": "retrieval", "stage": stage}))
    recs[-1]["protocol"]["training"] = result.training_card(f"06 caption fine-tuning of {spec}")
    if distributed.is_main():
        for rec in recs:
            records.append_record(rec)
    table = pd.DataFrame([{"stage": r["protocol"]["stage"], **{k: v for k, v in r["metrics"].items()},
                           "untrained": r["untrained"]} for r in recs])
    shown = records.mask_untrained(table, [c for c in table.columns if "R@" in c or c == "mean_recall"])
    return Outcome(recs, shown, {}, {"before": before, "after": after})
