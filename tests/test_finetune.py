"""Supervised fine-tuning with the shared loop: a torchvision resnet18 on the synthetic dataset at 32 px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.data import synthetic, transforms
from helpers.models import backbones
from helpers.train import loop, supervised


@pytest.fixture(autouse=True)
def fp32(monkeypatch):
    monkeypatch.setenv("CLIPLAB_AUTOCAST", "fp32")
    monkeypatch.setenv("CLIPLAB_WORKERS", "0")
    monkeypatch.setenv("CLIPLAB_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (see conftest.one_thread)."""


def _train(splits, cfg):
    net = backbones.load_backbone("torchvision:resnet18", seed=0).classifier(splits["test"].num_classes)
    train_tf, train_card = transforms.image_transform(32, train=True)
    eval_tf, _ = transforms.image_transform(32)
    run_card = {"spec": "torchvision:resnet18", "data": splits["train"].fingerprint(), "transform": train_card}
    return supervised.train_classifier(net, splits, train_tf, eval_tf, cfg, batch_size=32, run_card=run_card,
                                     progress=False)


def test_train_classifier_then_resume_does_no_extra_epochs(synthetic_root, monkeypatch):
    splits = synthetic.load_synthetic(root=synthetic_root)
    assert len(splits["train"]) == 144  # 4 batches of 32 per epoch (the last partial batch is dropped)
    n_test, n_classes = len(splits["test"]), splits["test"].num_classes
    cfg = loop.TrainConfig(epochs=2, lr=1e-3, warmup_epochs=0.5, seed=0)

    ft = _train(splits, cfg)
    assert 0.0 <= ft.test_metrics["top1"] <= 1.0 and ft.test_metrics["n"] == n_test
    assert ft.test_logits.shape == (n_test, n_classes)
    res = ft.result
    assert len(res.history) == 2 and res.resumed_from is None and res.stopped == "epochs"
    assert res.steps == 2 * (len(splits["train"]) // 32)
    assert all({"val_top1", "val_loss", "train_loss", "lr"} <= set(h) for h in res.history)
    assert res.best_metric == max(h["val_top1"] for h in res.history)
    assert ft.trainable == ft.total > 11_000_000  # every parameter of resnet18 + head is trained
    ckpt = Path(ft.checkpoint_dir)
    assert sorted(p.name for p in ckpt.iterdir()) == ["done.pt"]  # the completed run's compact checkpoint
    state = torch.load(ckpt / "done.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and len(state["history"]) == 2

    # an identical second call finds the finished run and trains nothing
    def no_training(label_smoothing=0.0):
        def loss_fn(model, batch):
            raise AssertionError("a finished run must not train again")
        return loss_fn

    monkeypatch.setattr(supervised, "classification_loss", no_training)
    again = _train(splits, cfg)
    assert again.checkpoint_dir == ft.checkpoint_dir
    assert again.result.resumed_from == 2 and len(again.result.history) == 2
    assert again.result.history == res.history and again.result.steps == res.steps
    assert again.result.best_epoch == res.best_epoch
    np.testing.assert_array_equal(again.test_logits, ft.test_logits)  # the same (best) weights are tested
    assert again.test_metrics["top1"] == ft.test_metrics["top1"]


def test_training_from_memory_equals_training_from_the_loader(synthetic_root, monkeypatch, tmp_path):
    """Decoded images kept in memory or decoded again each epoch: the same batches, the same run."""
    from helpers.data import in_memory

    splits = synthetic.load_synthetic(root=synthetic_root)
    cfg = loop.TrainConfig(epochs=1, lr=1e-3, warmup_epochs=0.5, seed=0)
    kept = _train(splits, cfg)
    monkeypatch.setattr(in_memory, "MEMORY_SHARE", 0.0)  # nothing fits: the loader decodes every epoch
    monkeypatch.setenv("CLIPLAB_CACHE", str(tmp_path / "other-cache"))  # a fresh run, not a resume
    streamed = _train(splits, cfg)
    assert streamed.checkpoint_dir != kept.checkpoint_dir and streamed.result.resumed_from is None
    drop = set(loop.TIMING_KEYS)
    assert [{k: v for k, v in h.items() if k not in drop} for h in streamed.result.history] == \
        [{k: v for k, v in h.items() if k not in drop} for h in kept.result.history]
    np.testing.assert_array_equal(streamed.test_logits, kept.test_logits)
