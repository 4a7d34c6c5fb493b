"""Notebook 06's experiment on the smoke profile: every objective trains, the checkpoint saved in
OpenAI's format is what gets measured, WiSE-FT endpoints are the two models, retrieval runs; and a
2-process DDP run (gloo, CPU) ends with identical weights on both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import models, profiles
from helpers.core import storage
from helpers.experiments import clip_finetune
from helpers.results import records

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (see conftest.one_thread)."""


def test_every_objective_trains_saves_in_openai_format_and_is_measured_from_the_file():
    P = profiles.load("smoke", clip_finetune={"train": {"epochs": 1}, "wise_ft": {"alphas": [0, 1]}})
    out = clip_finetune.run(P, P.dataset(), progress=False)
    runs = out.extra["runs"]
    assert set(runs) == {"ML", "CS", "FLYP", "LP-FT"}
    for objective, run in runs.items():
        assert run.loaded.spec == f"file:{run.checkpoint}" and run.loaded.status == "trained"
        # the file holds exactly the trained weights, in fp32 (no half-precision round trip)
        assert storage.sha256_state_dict(run.loaded.model.state_dict()) == run.trained_sha256
        sd = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
        assert "text_projection" in sd and "visual.attnpool.c_proj.weight" in sd
        assert run.freeze["trainable"] < run.freeze["total"] if objective in ("ML", "LP-FT") else \
            run.freeze["trainable"] == run.freeze["total"]
    recs = records.read_records(profile="smoke")
    variants = {r["variant"] for r in recs}
    assert {"CS|fine-tuned", "ML|fine-tuned", "FLYP|zero-shot after|synthetic", "zero-shot before|synthetic"} <= variants
    before = [r for r in recs if r["variant"].startswith("zero-shot before")]
    assert before and all(r["untrained"] for r in before)  # the starting weights are untrained: masked
    assert (out.table.loc[out.table["stage"] == "zero-shot before", "top1"] == "untrained").all()
    tuned = [r for r in recs if r["variant"] == "CS|fine-tuned"][0]
    assert not tuned["untrained"] and tuned["protocol"]["epochs_run"] == 1
    assert tuned["model"]["weights_sha256"] == storage.sha256_file(runs["CS"].checkpoint)
    # WiSE-FT at alpha=1 is the fine-tuned model and at alpha=0 the starting one
    wise = {r["variant"]: r for r in recs if "wise-ft" in r["variant"]}
    after = [r for r in recs if r["variant"] == "CS|zero-shot after|synthetic"][0]
    assert wise["CS|wise-ft alpha=1|synthetic"]["metrics"]["top1"] == pytest.approx(after["metrics"]["top1"])
    assert wise["CS|wise-ft alpha=0|synthetic"]["untrained"]
    assert "ML|wise-ft alpha=1|synthetic" not in wise  # WiSE-FT only for the prompt objectives


def test_lp_ft_starts_from_the_probe():
    P = profiles.load("smoke")
    splits = P.dataset()
    loaded0 = models.load_model(P["clip_finetune"]["model"])
    w, b, card = clip_finetune._head_init(P, "LP-FT", loaded0, splits, P["clip_finetune"])
    assert w.shape == (splits["test"].num_classes, loaded0.embed_dim) and b.shape == (splits["test"].num_classes,)
    assert "probe_C" in card


def test_retrieval_before_and_after_caption_fine_tuning_with_a_split_by_image():
    P = profiles.load("smoke", clip_finetune={"retrieval": {"train": {"epochs": 1}}})
    out = clip_finetune.retrieval(P, progress=False)
    assert list(out.table["stage"]) == ["before", "after caption fine-tuning"]
    assert out.table.iloc[0]["mean_recall"] == "untrained"  # scratch starting weights
    assert 0 <= out.extra["after"]["mean_recall"] <= 1
    caps = clip_finetune.load_caption_set("synthetic")
    ids = clip_finetune.split_captions(caps, 0.4, 0.2, seed=0)
    assert not set(ids["train"]) & set(ids["test"]) and not set(ids["val"]) & set(ids["test"])
    assert sorted(np.concatenate(list(ids.values()))) == list(range(len(caps)))


def test_two_ddp_ranks_on_gloo_end_with_identical_weights(tmp_path):
    env = {**os.environ, "CLIPLAB_CACHE": str(tmp_path / "cache"), "CLIPLAB_OUT": str(tmp_path / "out"),
           "OMP_NUM_THREADS": "1", "CLIPLAB_WORKERS": "0", "CLIPLAB_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts" / "finetune_clip.py"), "--profile", "smoke", "-p", "clip_finetune.objectives=[CS]",
           "-p", "clip_finetune.train.epochs=2", "-p", "clip_finetune.wise_ft=null", "-p", "clip_finetune.held_out=[]",
           "--weights-report", str(tmp_path / "rank{rank}.json")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    a, b = r0["runs"]["CS"], r1["runs"]["CS"]
    assert a["trained_sha256"] == b["trained_sha256"]
    assert a["trained_sha256"] != a["initial_sha256"] and a["steps"] > 0
    recs = records.read_records(folder=tmp_path / "out" / "supplementary" / "smoke" / "results")
    assert len([r for r in recs if r["variant"] == "CS|fine-tuned"]) == 1  # rank 0 alone writes


@pytest.mark.parametrize("objective", ["CS", "FLYP"])
def test_fine_tuned_number_equals_zero_shot_of_the_saved_checkpoint_when_best_epoch_is_not_last(
        objective, monkeypatch):
    """Issue 20: force the best validation epoch to be the first of three; the reported "fine-tuned"
    test top-1 must be the zero-shot top-1 of the saved (best) checkpoint with the recorded templates."""
    from helpers.train import loop

    real_train = loop.train

    def first_epoch_best(model, loader, loss_fn, evaluate, cfg, *args, **kwargs):
        epochs = iter(range(1, 1000))

        def ranked(m):
            out = evaluate(m)
            return {**out, "top1": -float(next(epochs))}  # every later epoch looks worse on val

        return real_train(model, loader, loss_fn, ranked, cfg, *args, **kwargs)

    monkeypatch.setattr(loop, "train", first_epoch_best)
    P = profiles.load("smoke", clip_finetune={"objectives": [objective], "train": {"epochs": 3, "lr": 0.02},
                                              "wise_ft": False})
    splits = P.dataset()
    out = clip_finetune.run(P, splits, progress=False)
    run = out.extra["runs"][objective]
    assert run.tuned.result.best_epoch == 1 and len(run.tuned.result.history) == 3
    recs = {r["variant"]: r for r in records.read_records(profile="smoke")}
    tuned, after = recs[f"{objective}|fine-tuned"], recs[f"{objective}|zero-shot after|{splits['test'].name}"]
    assert tuned["metrics"]["top1"] == pytest.approx(after["metrics"]["top1"], abs=1.5 / len(splits["test"]))
    # the templates the record states are the ones validation and test used
    stated = tuned["protocol"]["templates"]
    assert stated == after["protocol"]["templates"] == tuned["protocol"]["train_card"]["eval_templates"]
    assert stated != tuned["protocol"]["train_card"]["train_templates"]
    # the saved file holds the best epoch's weights, not the last one's
    assert run.tuned.result.best_state is not None
    saved = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    best = run.tuned.result.best_state
    assert saved.keys() == {k.removeprefix("clip.") for k in best if k.startswith("clip.")}
    assert all(torch.equal(v.float(), best[f"clip.{k}"].float()) for k, v in saved.items())


def test_each_objective_is_recorded_the_moment_it_is_done(monkeypatch):
    """Issue 19: a run that dies during the second objective keeps the first objective's records."""
    P = profiles.load("smoke", {"clip_finetune.objectives": ["CS", "FLYP"], "clip_finetune.train.epochs": 1,
                                "clip_finetune.wise_ft": None})
    real = clip_finetune.fine_tune

    def dies_on_flyp(P_, splits, objective, s, progress=True):
        if objective == "FLYP":
            raise MemoryError("killed for memory (simulated)")
        return real(P_, splits, objective, s, progress)

    monkeypatch.setattr(clip_finetune, "fine_tune", dies_on_flyp)
    with pytest.raises(MemoryError):
        clip_finetune.run(P, P.dataset(), progress=False)
    variants = {r["variant"] for r in records.read_records(profile="smoke")}
    assert "CS|fine-tuned" in variants and "CS|zero-shot after|synthetic" in variants
    assert not any(v.startswith("FLYP") for v in variants)
