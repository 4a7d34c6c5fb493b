"""Supervised training of an image classifier with the shared loop (ImageNet baselines, classifiers on
upsampled images): cross-entropy on augmented train images, top-1 on val each epoch, best epoch on test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from helpers.core import compiled, config, storage
from helpers.data import Samples, augment, in_memory
from helpers.eval import metrics
from helpers.train import loop


@dataclass
class Finetuned:
    result: loop.TrainResult
    test_metrics: dict
    test_logits: np.ndarray
    checkpoint_dir: str
    trainable: int
    total: int


def predict(model: torch.nn.Module, dataset, batch_size: int = 256, workers: int | None = None,
            device: torch.device | None = None, progress: bool = False, classify=None) -> tuple[np.ndarray, np.ndarray]:
    """(logits float32 [N, C], labels) of ``model`` (or of ``classify(images)``) over ``dataset`` in
    order, batched under autocast. Logits stay on the device until the end, so an accelerator never
    waits for the host between batches. A conv net runs channels-last (:class:`compiled.Encoder`), not
    compiled: during training the weights change after every call."""
    device = device or config.device()
    workers = config.num_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         prefetch_factor=4 if workers else None, pin_memory=device.type == "cuda")
    out, labels = [], []
    model.eval()
    with compiled.Encoder(classify or model, len(dataset), False, name="predict") as run, torch.inference_mode(), \
            config.autocast(device):
        for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
            x, y = batch[0], batch[1]
            out.append(run(x.to(device, non_blocking=True)).float())
            labels.append(torch.as_tensor(y))
    return torch.cat(out).cpu().numpy(), torch.cat(labels).numpy()


def classification_loss(label_smoothing: float = 0.0):
    def loss_fn(model, batch):
        x, y = batch[0], batch[1]
        dev = next(model.parameters()).device  # the loop has put the images there; labels follow, not blocking
        return F.cross_entropy(model(x.to(dev)), torch.as_tensor(y).to(dev, non_blocking=True),
                               label_smoothing=label_smoothing)
    return loss_fn


def train_batches(train: Samples, transform, batch_size: int, seed: int, progress: bool):
    """The shuffled training batches: with a :class:`augment.TrainTransform`, images decoded once (kept in
    memory when they fit, else decoded by the loader's workers each epoch) and augmented per batch on
    the training device; any other transform runs per image in the loader."""
    if not isinstance(transform, augment.TrainTransform):
        return loop.train_loader(train.dataset(transform), batch_size, seed)
    decoded = in_memory.materialise(train.dataset(transform.decode), what="train images",
                                    progress=progress)
    kept = isinstance(decoded, in_memory.InMemory)
    loader = loop.train_loader(decoded, batch_size, seed, workers=0 if kept else None)
    return augment.AugmentedBatches(loader, transform.augment, seed, config.device())


def train_classifier(net: torch.nn.Module, splits: dict[str, Samples], train_transform, eval_transform,
                     cfg: loop.TrainConfig, batch_size: int, run_card: dict, label_smoothing: float = 0.0,
                     progress: bool = True, loss_fn=None, classify=None) -> Finetuned:
    """Train ``net`` on ``splits['train']`` (augmented), select on val top-1, report the best on test.

    By default ``net(images)`` gives class logits and the loss is cross-entropy; a task with its own
    objective passes ``loss_fn(model, batch)`` and ``classify(images) -> logits`` (CLIP fine-tuning).
    Checkpoints go to ``<cache>/checkpoints/<hash of run_card + cfg>/`` so an interrupted run resumes.
    """
    ckpt_dir = config.cache_dir() / "checkpoints" / storage.sha256_json({"run": run_card, "cfg": cfg.card(),
                                                                        "batch": batch_size})[:20]
    loader = train_batches(splits["train"], train_transform, batch_size, cfg.seed, progress)
    val_ds = in_memory.materialise(splits["val"].dataset(eval_transform), what="val images",
                                   progress=progress)
    val_workers = 0 if isinstance(val_ds, in_memory.InMemory) else None
    test_ds = splits["test"].dataset(eval_transform)

    def evaluate(model):
        logits, labels = predict(model, val_ds, batch_size=2 * batch_size, classify=classify, workers=val_workers)
        return {"top1": float((logits.argmax(1) == labels).mean()),
                "loss": float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))}

    trainable, total = loop.count_trainable(net)
    result = loop.train(net, loader, loss_fn or classification_loss(label_smoothing), evaluate, cfg, ckpt_dir,
                            run_card=run_card, progress=progress)
    logits, labels = predict(net, test_ds, batch_size=2 * batch_size, classify=classify)
    m = metrics.classification_metrics(logits, labels, splits["test"].num_classes)
    return Finetuned(result, m, logits, str(ckpt_dir), trainable, total)
