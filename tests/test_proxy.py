"""Proxy tuning (notebook 07): the combination against hand-computed cases, alpha = 0 is the base, the
alpha chosen on val is the one reported, and the pretrained setting's path with file: checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import models, profiles
from helpers.experiments import clip_finetune
from helpers.experiments import proxy_tuning as px


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (see conftest.one_thread)."""


def test_combination_matches_a_hand_computed_case():
    base, expert, anti = np.array([[1.0, 2.0, 0.0]]), np.array([[3.0, 0.0, 1.0]]), np.array([[1.0, 1.0, 1.0]])
    assert np.allclose(px.combine(base, expert, anti, 2.0), [[5.0, 0.0, 0.0]])
    # log-probabilities: log_softmax of each role, then the same arithmetic
    lsm = lambda x: x - np.log(np.exp(x).sum(axis=1, keepdims=True))  # noqa: E731
    assert np.allclose(px.combine(base, expert, anti, 0.5, space="logprobs"),
                       lsm(base) + 0.5 * (lsm(expert) - lsm(anti)))
    # temperature matching: expert and anti brought to the base's scale before the difference
    out = px.combine(base, expert, anti, 1.0, scales=(10.0, 20.0, 5.0))
    assert np.allclose(out, base + (expert * 0.5 - anti * 2.0))
    with pytest.raises(ValueError, match="space"):
        px.combine(base, expert, anti, 1.0, space="probs")


def test_log_probabilities_give_the_same_softmax_as_logits():
    rng = np.random.default_rng(3)
    base, expert, anti = (rng.normal(size=(9, 5)) * 4 for _ in range(3))
    for alpha in (0.5, 2.0):
        a = torch.softmax(torch.from_numpy(px.combine(base, expert, anti, alpha)), -1)
        b = torch.softmax(torch.from_numpy(px.combine(base, expert, anti, alpha, space="logprobs")), -1)
        assert torch.allclose(a, b, atol=1e-9)


def test_alpha_zero_is_the_base():
    rng = np.random.default_rng(0)
    base, expert, anti = (rng.normal(size=(7, 4)) for _ in range(3))
    assert np.array_equal(px.combine(base, expert, anti, 0.0), base)
    lp = px.combine(base, expert, anti, 0.0, space="logprobs")
    assert np.array_equal(lp.argmax(1), base.argmax(1))


def test_choose_alpha_takes_the_best_val_and_the_smallest_on_ties():
    rows = [{"alpha": a, "val": {"top1": v}} for a, v in ((0, 0.5), (1, 0.8), (2, 0.8), (4, 0.7))]
    assert px.choose_alpha(rows)["alpha"] == 1


def test_run_reports_the_alpha_chosen_on_val_and_records_every_point():
    P = profiles.load("smoke")
    out = px.run(P, P.dataset(), progress=False)
    sweep = out.extra["sweep"]
    for (space, match), g in sweep.groupby(["space", "match_temperature"]):
        best = g.sort_values(["val_top1", "alpha"], ascending=[False, True]).iloc[0]
        assert out.extra["chosen"][f"{space}|match={match}"] == best["alpha"]
        chosen = [r for r in out.records if r["variant"] == f"proxy|{space}|match={match}|alpha={best['alpha']:g}"]
        assert len(chosen) == 1 and chosen[0]["protocol"]["chosen"]
        assert chosen[0]["metrics"]["top1"] == pytest.approx(best["test_top1"])
    n_points = len(P["proxy"]["alphas"]) * len(P["proxy"]["spaces"]) * len(P["proxy"]["match_temperature"])
    assert len([r for r in out.records if r["variant"].startswith("proxy|")]) == n_points
    assert list(out.table["model"][:3]) == ["anti-expert", "expert", "base"]
    assert (out.table.loc[out.table["model"] == "base", "top1"] == "untrained").all()
    # alpha = 0 reproduces the base's test accuracy exactly (logit space)
    zero = [r for r in out.records if r["variant"] == "proxy|logits|match=False|alpha=0"][0]
    base = [r for r in out.records if r["variant"] == "role=base"][0]
    assert zero["metrics"]["top1"] == base["metrics"]["top1"]


def test_the_expert_comes_from_notebook_06_records_when_they_exist():
    P = profiles.load("smoke", clip_finetune={"objectives": ["CS"], "train": {"epochs": 1}, "wise_ft": False,
                                              "retrieval": False})
    splits = P.dataset()
    run = clip_finetune.run(P, splits, progress=False).extra["runs"]["CS"]
    assert clip_finetune.checkpoint_spec(P, splits, "06:CS", progress=False) == run.loaded.spec


def test_pretrained_setting_path_with_file_checkpoints_in_openai_format(tmp_path):
    """Expert = a fine-tuned RN checkpoint, anti-expert = its starting weights, base = a ViT; all three
    as file: state dicts in OpenAI's format (the paper profile's roles, minus the real weights)."""
    start = models.load_model("scratch:tiny-rn", device="cpu")
    tuned = models.load_model("scratch:tiny-rn", device="cpu").model
    with torch.no_grad():
        for p in tuned.visual.parameters():
            p.add_(0.01 * torch.randn_like(p))
    paths = {"anti": tmp_path / "rn.pt", "expert": tmp_path / "rn-eurosat.pt", "base": tmp_path / "vit.pt"}
    models.save_openai_state_dict(start.model, paths["anti"])
    models.save_openai_state_dict(tuned, paths["expert"], {"trained": True, "initial": start.card()})
    models.save_openai_state_dict(models.load_model("scratch:tiny-vit", device="cpu").model, paths["base"])
    P = profiles.load("smoke", proxy={"expert": f"file:{paths['expert']}", "anti_expert": f"file:{paths['anti']}",
                                      "base": f"file:{paths['base']}", "spaces": ["logits"], "match_temperature": [True]})
    with pytest.raises(ValueError, match="not from the anti-expert"):  # fp16 round trip changed the start's hash
        px.run(P, P.dataset(), progress=False)
    models.save_openai_state_dict(start.model, paths["anti"], half=False)
    out = px.run(P, P.dataset(), progress=False)
    assert out.table["spec"].iloc[1] == f"file:{paths['expert']}"
    assert len(out.extra["sweep"]) == len(P["proxy"]["alphas"])
