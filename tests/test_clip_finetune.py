"""CLIP fine-tuning building blocks: freezing strategies, losses, text augmentation, WiSE-FT."""

from __future__ import annotations

import pytest
import torch

from helpers import models
from helpers.train import clip_objectives as cf


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (see conftest.one_thread)."""


@pytest.fixture(params=["tiny-vit", "tiny-rn"])
def tiny(request):
    return models.load_model(f"scratch:{request.param}", device="cpu").model


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_unfreeze_trains_everything_and_freeze_text_freezes_the_text_tower(tiny):
    info = cf.apply_freeze(tiny, "unfreeze")
    assert info["trainable"] == info["total"]
    info = cf.apply_freeze(tiny, "unfreeze", freeze_text=True)
    names = _trainable(tiny)
    assert not any(n.startswith(("transformer.", "token_embedding", "ln_final")) for n in names)
    assert "text_projection" not in names and "positional_embedding" not in names
    assert any(n.startswith("visual.") for n in names) and info["trainable"] < info["total"]


def test_vision_freeze_n_freezes_the_stem_and_first_n_blocks(tiny):
    cf.apply_freeze(tiny, "vision-freeze 1")
    names = _trainable(tiny)
    assert "visual.conv1.weight" not in names
    if hasattr(tiny.visual, "transformer"):
        assert not any(n.startswith("visual.transformer.resblocks.0.") for n in names)
        assert any(n.startswith("visual.transformer.resblocks.1.") for n in names)
        assert "visual.class_embedding" not in names
    else:
        assert not any(n.startswith("visual.layer1.") for n in names)
        assert any(n.startswith("visual.layer2.") for n in names)
    assert any(n.startswith("transformer.") for n in names)  # text tower untouched
    with pytest.raises(ValueError, match="blocks after its stem"):
        cf.apply_freeze(tiny, "vision-freeze 99")
    with pytest.raises(ValueError, match="vision-freeze N"):
        cf.apply_freeze(tiny, "vision-freeze")


def test_mix_freeze_trains_projections_last_blocks_and_logit_scale_only(tiny):
    info = cf.apply_freeze(tiny, "mix-freeze")
    names = _trainable(tiny)
    assert "logit_scale" in names and "text_projection" in names and "ln_final.weight" in names
    last_text = len(tiny.transformer.resblocks) - 1
    assert any(n.startswith(f"transformer.resblocks.{last_text}.") for n in names)
    assert not any(n.startswith("transformer.resblocks.0.") for n in names) or last_text == 0
    assert "token_embedding.weight" not in names and "visual.conv1.weight" not in names
    assert 0 < info["trainable"] < info["total"]
    with pytest.raises(ValueError, match="freeze strategy"):
        cf.apply_freeze(tiny, "freeze-everything")


def test_prompt_sampler_is_seeded_and_uses_synonyms_and_templates():
    names = ["brushland or shrubland", "river"]
    a = cf.PromptSampler(names, "openai-eurosat", seed=3)
    b = cf.PromptSampler(names, "openai-eurosat", seed=3)
    drawn = [a.for_classes([0, 1]) for _ in range(30)]
    assert drawn == [b.for_classes([0, 1]) for _ in range(30)]
    firsts = {d[0] for d in drawn}
    assert any("brushland" in p for p in firsts) and any("shrubland" in p for p in firsts)
    assert all(p.startswith("a centered satellite photo of") for d in drawn for p in d)
    assert all(d[1].endswith("river.") for d in drawn)


def test_ml_head_initialised_from_the_zero_shot_classifier_gives_its_logits():
    model = models.load_model("scratch:tiny-vit", device="cpu").model.eval()
    names = ["red circle", "green square"]
    classifier = cf.prompt_classifier(model, names, "{}")
    tuner = cf.FineTuner(model, "ML", names, "{}", head_init=classifier * 50.0).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = 50.0 * torch.nn.functional.normalize(model.encode_image(x), dim=-1) @ classifier.T
        assert torch.allclose(tuner.classify(x), expected, atol=1e-4)


def test_wise_ft_interpolation_endpoints_and_midpoint():
    a = models.load_model("scratch:tiny-vit@0", device="cpu").model.state_dict()
    b = models.load_model("scratch:tiny-vit@1", device="cpu").model.state_dict()
    assert all(torch.equal(v, a[k]) for k, v in cf.interpolate(a, b, 0.0).items())
    assert all(torch.equal(v, b[k]) for k, v in cf.interpolate(a, b, 1.0).items())
    mid = cf.interpolate(a, b, 0.5)
    k = "visual.conv1.weight"
    assert torch.allclose(mid[k], (a[k] + b[k]) / 2, atol=1e-6)
    other = models.load_model("scratch:tiny-rn", device="cpu").model.state_dict()
    with pytest.raises(ValueError, match="one architecture"):
        cf.interpolate(a, other, 0.5)


# ------------------------------------------------------------------ the FineTuner module (06)
@pytest.mark.parametrize("objective", ["CS", "FLYP", "ML", "LP-FT", "captions"])
def test_fine_tuner_forward_is_the_loss_and_its_gradients_reach_the_right_towers(objective):
    model = models.load_model("scratch:tiny-rn", device="cpu").model.train()
    names = ["red circle", "green square", "blue triangle"]
    tuner = cf.FineTuner(model, objective, None if objective == "captions" else names, "{}", seed=0)
    images = torch.randn(6, 3, 32, 32)
    targets = ["a red thing", "a red thing", "green", "blue", "a green square", "x"] if objective == "captions" \
        else torch.tensor([0, 1, 2, 0, 1, 2])
    loss = tuner(images, targets, torch.tensor([0, 0, 1, 2, 1, 3]) if objective == "captions" else None)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.visual.conv1.weight.grad.abs().sum() > 0
    text_grad = model.token_embedding.weight.grad
    if objective in ("ML", "LP-FT"):  # the head objectives freeze the text tower and the temperature
        assert text_grad is None and not model.logit_scale.requires_grad
        assert tuner.head.weight.grad.abs().sum() > 0
    else:
        assert text_grad.abs().sum() > 0


def test_fine_tuner_classify_matches_prompt_matching_and_refreshes_after_a_step():
    model = models.load_model("scratch:tiny-vit", device="cpu").model
    names = ["red circle", "green square"]
    tuner = cf.FineTuner(model, "CS", names, ["a photo of {}.", "art of {}."], seed=0).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = cf.logits_with(model, model.encode_image(x), names, ["a photo of {}.", "art of {}."])
        assert torch.allclose(tuner.classify(x), torch.from_numpy(expected), atol=1e-4)
    tuner.train()
    tuner(x, torch.tensor([0, 1, 0])).backward()
    torch.optim.SGD(tuner.parameters(), lr=1.0).step()
    tuner.eval()
    with torch.no_grad():  # the cached text classifier must not survive a weight update
        fresh = cf.logits_with(model, model.encode_image(x), names, ["a photo of {}.", "art of {}."])
        assert torch.allclose(tuner.classify(x), torch.from_numpy(fresh), atol=1e-4)


def test_unknown_objective_is_refused():
    model = models.load_model("scratch:tiny-rn", device="cpu").model
    with pytest.raises(ValueError, match="objective"):
        cf.FineTuner(model, "SGD", ["a"])


@pytest.mark.parametrize("change", ["optimizer step", "load_state_dict", "in-place edit"])
def test_cached_prompt_classifier_is_rebuilt_whenever_the_weights_change(change):
    """Issue 20: derived state must never outlive the weights it came from (the stale-classifier bug
    paired the best epoch's image tower with the last epoch's text classifier)."""
    model = models.load_model("scratch:tiny-vit", device="cpu").model
    names, tmpl = ["red circle", "green square"], ["a photo of {}."]
    tuner = cf.FineTuner(model, "CS", names, tmpl, seed=0).eval()
    best = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tuner.classify(x)  # builds and caches the classifier of the current weights
    tuner.train()
    tuner(x, torch.tensor([0, 1, 0])).backward()
    torch.optim.AdamW(tuner.parameters(), lr=0.5).step()  # the weights now differ from ``best``
    tuner.eval()
    with torch.no_grad():
        tuner.classify(x)  # cache of the stepped weights
        if change == "load_state_dict":
            model.load_state_dict(best)
        elif change == "in-place edit":
            model.text_projection.mul_(-1.0)
        else:
            tuner.train()
    if change == "optimizer step":
        tuner(x, torch.tensor([1, 0, 1])).backward()
        torch.optim.SGD(tuner.parameters(), lr=1.0).step()
        tuner.eval()
    with torch.no_grad():
        fresh = cf.logits_with(model, model.encode_image(x), names, tmpl)
        assert torch.allclose(tuner.classify(x), torch.from_numpy(fresh), atol=1e-4)


def test_validation_and_test_use_the_evaluation_templates_not_the_training_ones():
    model = models.load_model("scratch:tiny-vit", device="cpu").model
    names = ["red circle", "green square"]
    train_tmpl, eval_tmpl = ["art of {}.", "a sketch of {}."], ["a photo of {}."]
    tuner = cf.FineTuner(model, "CS", names, train_tmpl, seed=0, eval_templates=eval_tmpl).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = cf.logits_with(model, model.encode_image(x), names, eval_tmpl)
        assert torch.allclose(tuner.classify(x), torch.from_numpy(want), atol=1e-4)
    assert tuner.sampler.templates == train_tmpl  # training still samples the training templates
