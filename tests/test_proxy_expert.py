"""Notebook 07's expert (issue 19): when notebook 06 recorded no checkpoint for ``proxy.expert``, 07 trains
it with its own stated settings (``proxy.expert_train``), says so before it starts, records them, the
suite's summary lists the training, and a rerun reads the recorded results back; or, switched off, it
stops naming what to run first."""

from __future__ import annotations

import datetime

import pytest

from helpers import profiles, suite
from helpers.core.errors import ConfigError, MissingCheckpointError
from helpers.experiments import clip_finetune
from helpers.experiments import proxy_tuning as px

EXPERT = {"proxy.expert_train.train": {"epochs": 1, "lr": 0.003, "batch_size": 32, "warmup_epochs": 0.5},
          "proxy.alphas": [0, 1]}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (see conftest.one_thread)."""


def test_a_missing_expert_is_trained_with_proxy_settings_announced_recorded_and_listed(monkeypatch, capsys):
    P = profiles.load("smoke", EXPERT)
    splits = P.dataset()
    real, seen = clip_finetune.fine_tune, []

    def fine_tune(P_, splits_, objective, s, progress=True):
        seen.append((objective, s, capsys.readouterr().out))  # what was printed before training began
        return real(P_, splits_, objective, s, progress)

    monkeypatch.setattr(clip_finetune, "fine_tune", fine_tune)
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out = px.run(P, splits, progress=False)
    [(objective, s, before)] = seen
    assert objective == "CS" and s["model"] == P["clip_finetune"]["model"]
    assert s["train"]["lr"] == 0.003 and s["train"]["epochs"] == 1  # 07's settings, not clip_finetune's
    assert s["train"]["lr"] != P["clip_finetune"]["train"]["lr"]
    assert "no CS checkpoint of scratch:tiny-rn" in before and "proxy.expert_train (1 epochs, lr 0.003" in before
    expert = out.records[0]["protocol"]["expert"]
    assert expert["source"].startswith("trained by notebook 07") and expert["train"]["epochs"] == 1
    assert expert["training"]["ran"] and expert["training"]["epochs_trained"] == 1
    assert expert["settings"]["freeze"] == "unfreeze" and expert["checkpoint"]
    assert all(r["protocol"]["expert"] == expert for r in out.records)
    assert out.table["spec"].iloc[1] == f"file:{expert['checkpoint']}"
    listed = suite.trainings(P.name, since)
    assert "07 expert: CS fine-tuning of scratch:tiny-rn: 1 epoch(s)" in listed

    seen.clear()  # a rerun: every result is recorded for this protocol, nothing is trained or measured
    again = px.run(P, splits, progress=False)
    assert not seen and "already recorded for this protocol" in capsys.readouterr().out
    assert again.table.equals(out.table) and again.extra["chosen"] == out.extra["chosen"]
    assert {r["key"] for r in again.records} == {r["key"] for r in out.records}


def test_training_the_expert_can_be_forbidden_with_a_message_naming_the_run_to_do_first():
    P = profiles.load("smoke", {**EXPERT, "proxy.train_missing_expert": False, "proxy.expert": "06:FLYP"})
    with pytest.raises(MissingCheckpointError, match=r"--only 06 -p clip_finetune.model=scratch:tiny-rn "
                                                     r"-p 'clip_finetune.objectives=\[FLYP\]'"):
        px.run(P, P.dataset(), progress=False)


def test_expert_train_settings_are_typed():
    with pytest.raises(ConfigError, match="proxy.expert_train.train.epochs"):
        profiles.load("smoke", {"proxy.expert_train.train.epochs": 0})
    with pytest.raises(ConfigError, match="proxy.expert_train.freeze"):
        profiles.load("smoke", {"proxy.expert_train.freeze": "half"})
