"""Resume at result granularity (issue 19): a rerun skips every result already recorded for the same
protocol. Notebook 06 killed after its first objective keeps that objective's records, and the rerun
neither trains nor encodes for it; 03 skips each recorded (model, upsampler). And 06 releases the model
of a finished objective: the weakref to it is dead before the next objective starts.

Memory is checked by weakref, not RSS: the allocator keeps freed pages, so RSS after ``gc.collect()``
says little; ``tracemalloc`` does not see torch's C++ allocations either."""

from __future__ import annotations

import gc
import weakref

import pytest

from helpers import models, profiles
from helpers.core import config
from helpers.experiments import clip_finetune
from helpers.experiments import upsampling as UP
from helpers.results import records

TWO = {"clip_finetune.objectives": ["CS", "FLYP"], "clip_finetune.train.epochs": 1,
       "clip_finetune.wise_ft": {"alphas": [0, 1]}}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (see conftest.one_thread)."""


def test_a_rerun_of_06_skips_the_recorded_objective_and_finished_models_are_released(monkeypatch, capsys):
    P = profiles.load("smoke", TWO)
    splits = P.dataset()
    real_fine_tune, real_save, real_encode = clip_finetune.fine_tune, models.save_finetuned, clip_finetune.encode
    alive = {}

    def save(loaded0, model, stem, meta):  # the module trained, as it is handed over to be saved
        alive.setdefault(meta["objective"], []).append(weakref.ref(model))
        return real_save(loaded0, model, stem, meta)

    def dies_on_flyp(P_, splits_, objective, s, progress=True):
        if objective == "FLYP":  # CS is finished: its trained module and the read-back one are gone
            gc.collect()
            assert alive["CS"] and all(ref() is None for ref in alive["CS"])
            raise MemoryError("killed for memory (simulated)")
        run = real_fine_tune(P_, splits_, objective, s, progress)
        alive[objective].append(weakref.ref(run.held.model))
        return run

    monkeypatch.setattr(models, "save_finetuned", save)
    monkeypatch.setattr(clip_finetune, "fine_tune", dies_on_flyp)
    with pytest.raises(MemoryError):
        clip_finetune.run(P, splits, progress=False)
    first = {r["variant"]: r for r in records.read_records(profile=P.name)}
    cs_spec = first["CS|fine-tuned"]["model"]["spec"]
    assert {"CS|fine-tuned", "CS|zero-shot after|synthetic", "CS|wise-ft alpha=1|synthetic"} <= set(first)
    capsys.readouterr()

    trained, encoded = [], []

    def fine_tune(P_, splits_, objective, s, progress=True):
        trained.append(objective)
        return real_fine_tune(P_, splits_, objective, s, progress)

    def encode(P_, loaded, samples):
        encoded.append(loaded.spec)
        return real_encode(P_, loaded, samples)

    monkeypatch.setattr(clip_finetune, "fine_tune", fine_tune)
    monkeypatch.setattr(clip_finetune, "encode", encode)
    out = clip_finetune.run(P, splits, progress=False)
    said = capsys.readouterr().out
    assert trained == ["FLYP"] and not any(spec.startswith(cs_spec) for spec in encoded)
    assert said.count("already recorded for this protocol") == 1 and "CS of scratch:tiny-rn" in said
    variants = [r["variant"] for r in records.read_records(profile=P.name)]
    assert variants.count("CS|fine-tuned") == 1 and variants.count("FLYP|fine-tuned") == 1
    assert out.extra["runs"]["CS"].spec == cs_spec and out.extra["runs"]["CS"].tuned is None
    assert set(out.table["objective"]) == {"-", "CS", "FLYP"} and set(out.extra["wise_ft"]) == {"CS", "FLYP"}
    assert out.extra["wise_ft"]["CS"]["top1"].tolist() == [first[f"CS|wise-ft alpha={a}|synthetic"]["metrics"]["top1"]
                                                          for a in (0, 1)]


def test_a_rerun_of_03_skips_each_recorded_model_and_upsampler(monkeypatch, capsys):
    P = profiles.load("smoke", {"upsampling.upsamplers": ["pil-nearest", "pil-bicubic"], "upsampling.classifier": None,
                                "upsampling.n_quality": 8})
    splits = P.dataset()
    first = UP.run(P, splits, progress=False)
    restores = []
    real = UP.restored
    monkeypatch.setattr(UP, "restored", lambda *a, **k: restores.append(a[1].name) or real(*a, **k))
    capsys.readouterr()
    again = UP.run(P, splits, progress=False)
    assert not restores and capsys.readouterr().out.count("already recorded for this protocol") == 2
    assert again.extra["downstream"].equals(first.extra["downstream"])
    downstream = [r for r in records.read_records(profile=P.name) if not r["variant"].startswith("quality")]
    assert len(downstream) == 4  # 2 heads x 2 upsamplers, once: the rerun wrote none again
    assert {r["figures"][0] for r in downstream} == {first.records[-1]["figures"][0]}
    assert (config.output_root() / first.records[-1]["figures"][0]).is_file()  # the figure they name exists
