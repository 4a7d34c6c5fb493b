"""Issue 18, training speed: the optimised step (channels-last conv towers, fused AdamW, compile with
its eager fallback) computes what the eager step computes; the step loop reads the device once per
epoch; each epoch records the share of time spent waiting for data. Small scratch CLIPs, fp32."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
import torch.nn.functional as F

from helpers import models
from helpers.core import layout
from helpers.train import clip_objectives, loop

CPU = torch.device("cpu")
NAMES = ["red circle", "green square", "blue triangle"]
TEMPLATES = ["a photo of {}.", "art of {}.", "a {}."]
RN18_SMALL = "scratch:rn18-small,width=16,embed=64,text_width=64,text_layers=2"  # the offline CLIP, narrower


@pytest.fixture(autouse=True)
def fp32(monkeypatch):
    monkeypatch.setenv("CLIPLAB_AUTOCAST", "fp32")
    monkeypatch.setenv("CLIPLAB_WORKERS", "0")


def eager(monkeypatch):
    """The loop with its optimisations off: contiguous weights and inputs, the per-tensor AdamW."""
    monkeypatch.setattr(layout, "is_convolutional", lambda model: False)
    monkeypatch.setattr(loop, "adamw", lambda groups, lr, betas, device: torch.optim.AdamW(groups, lr=lr, betas=betas))


def cs_run(spec: str, size: int, steps: int = 3, batch: int = 8, **cfg):
    """``steps`` CS steps of a scratch CLIP through the loop: (per-step losses, result, tuner)."""
    torch.manual_seed(0)
    x, y = torch.randn(steps * batch, 3, size, size), torch.arange(steps * batch) % 3
    tuner = clip_objectives.FineTuner(models.load_model(spec, device="cpu").model, "CS", NAMES, TEMPLATES, seed=0)
    losses = []

    def loss_fn(m, b):
        loss = m(b[0], b[1])
        losses.append(loss.item())  # a test may sync: it is the loop that must not
        return loss

    res = loop.train(tuner, loop.train_loader(torch.utils.data.TensorDataset(x, y), batch, seed=0, workers=0),
                     loss_fn, lambda m: {"top1": 0.0},
                     loop.TrainConfig(epochs=1, lr=1e-3, warmup_epochs=0, schedule="constant", seed=0, **cfg),
                     None, progress=False, device=CPU)
    return losses, res, tuner


def test_optimised_cs_steps_match_eager_at_fp32(monkeypatch):
    """rn18-small's structure (ResNet-18 stages, attention pool, 64 px) at a test-sized width, 3 CS
    steps: channels-last + fused AdamW give the eager loss trajectory within 1e-3."""
    fast, res, tuner = cs_run(RN18_SMALL, 64)
    assert res.extra["channels_last"] and res.extra["fused_adamw"] and not res.extra["compiled"]
    with monkeypatch.context() as m:
        eager(m)
        slow, res_eager, _ = cs_run(RN18_SMALL, 64)
    assert not res_eager.extra["channels_last"] and not res_eager.extra["fused_adamw"]
    assert len(fast) == len(slow) == 3
    assert fast == pytest.approx(slow, abs=1e-3)
    # the trained model leaves in the layout it came in, and so do the kept best weights
    assert all(p.is_contiguous() for p in tuner.parameters())
    assert all(v.is_contiguous() for v in res.best_state.values() if torch.is_tensor(v))


def test_compiled_tower_matches_and_a_failing_compiler_falls_back_to_the_same_eager_run(monkeypatch, capsys):
    """compile=true: the image tower runs compiled during steps (dynamo's tracing-only backend here, to
    stay fast), off afterwards; a compiler that fails prints one note and the run equals the eager one
    bit for bit (the failed step's random draws, prompts included, are replayed)."""
    ref, res, _ = cs_run("scratch:tiny-rn", 32)
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    compiled, res_c, tuner = cs_run("scratch:tiny-rn", 32, compile=True)
    assert res_c.extra["compiled"] and compiled == pytest.approx(ref, abs=1e-5)
    assert "forward" not in tuner.clip.visual.__dict__  # eager again after training

    def broken(gm, inputs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(loop, "COMPILE_BACKEND", broken)
    torch._dynamo.reset()
    fallback, res_f, tuner = cs_run("scratch:tiny-rn", 32, compile=True)
    assert not res_f.extra["compiled"] and "forward" not in tuner.clip.visual.__dict__
    assert fallback == ref and res_f.history[0]["train_loss"] == res.history[0]["train_loss"]
    out = capsys.readouterr()
    assert (out.out + out.err).count("torch.compile failed") == 1


def test_compile_setting_and_targets():
    assert loop.wants_compile("auto", torch.device("cuda")) and not loop.wants_compile("auto", CPU)
    assert loop.wants_compile(True, CPU) and not loop.wants_compile(False, torch.device("cuda"))
    with pytest.raises(ValueError, match="auto, true or false"):
        loop.wants_compile("yes", CPU)
    clip_model = models.load_model("scratch:tiny-rn", device="cpu").model
    tuner = clip_objectives.FineTuner(clip_model, "CS", NAMES, TEMPLATES)
    assert loop.compile_target(tuner) is clip_model.visual and loop.compile_target(clip_model) is clip_model.visual
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3))
    assert loop.compile_target(net) is net
    assert "compile" not in loop.TrainConfig(compile=True).card()  # how it runs never changes a run's key


def test_channels_last_only_for_conv_nets_and_only_images_move():
    assert layout.is_convolutional(models.load_model("scratch:tiny-rn", device="cpu").model)
    assert not layout.is_convolutional(models.load_model("scratch:tiny-vit", device="cpu").model)  # one patch conv
    images, labels = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    moved = loop.to_device([images, labels, ["a", "b"]], CPU, channels_last=True)
    assert moved[0].is_contiguous(memory_format=torch.channels_last) and torch.equal(moved[0], images)
    assert moved[1] is labels and moved[2] == ["a", "b"]


def test_fused_adamw_where_supported_else_the_loop(monkeypatch):
    groups = loop.param_groups(torch.nn.Linear(3, 2), 0.1)
    assert loop.adamw(groups, 1e-3, (0.9, 0.999), CPU).defaults["fused"]  # this torch has fused AdamW on CPU
    import torch.utils._foreach_utils as fu

    monkeypatch.setattr(fu, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    assert not loop.adamw(groups, 1e-3, (0.9, 0.999), CPU).defaults["fused"]


class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 24

    def __getitem__(self, i):
        time.sleep(0.01)
        return torch.randn(4), i % 2


def test_data_wait_share_is_recorded_per_epoch():
    """A loader slower than the step: most of the epoch is spent in next(loader), and the history says so."""
    res = loop.train(torch.nn.Linear(4, 2), loop.train_loader(Slow(), 4, seed=0, workers=0),
                     lambda m, b: F.cross_entropy(m(b[0]), b[1]), lambda m: {"top1": 0.0},
                     loop.TrainConfig(epochs=2, lr=0.01), None, progress=False, device=CPU)
    assert [0.5 < h["data_wait"] <= 1 for h in res.history] == [True, True]
    assert all(h["grad_norm"] > 0 for h in res.history)  # clip_grad on: the mean pre-clip norm, read per epoch
    assert set(loop.TIMING_KEYS) <= set(res.history[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU path needs CUDA")
def test_cuda_fp16_steps_do_not_sync_and_use_fused_adamw_with_the_scaler(monkeypatch):
    """fp16 autocast + GradScaler + fused AdamW on a conv net: the step loop syncs once per epoch (the
    epoch's sums), never per batch."""
    monkeypatch.setenv("CLIPLAB_AUTOCAST", "fp16")
    dev = torch.device("cuda")
    x, y = torch.randn(64, 3, 16, 16), torch.arange(64) % 3
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))

    def loss_fn(m, b):
        torch.cuda.set_sync_debug_mode("warn")  # from the first step of the epoch ...
        return F.cross_entropy(m(b[0]), b[1].to(dev, non_blocking=True))

    def evaluate(m):
        torch.cuda.set_sync_debug_mode(0)  # ... to its evaluation
        return {"top1": 0.0}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = loop.train(net, loop.train_loader(torch.utils.data.TensorDataset(x, y), 8, seed=0, workers=0),
                         loss_fn, evaluate, loop.TrainConfig(epochs=2, lr=1e-3, compile=False), None,
                         progress=False, device=dev)
    torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 2 * len(res.history), [str(w.message) for w in syncs]
    assert res.extra["fused_adamw"] and res.extra["channels_last"]
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in res.history)
