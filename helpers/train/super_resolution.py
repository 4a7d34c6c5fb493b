"""Training the learned super-resolution model of notebook 03 (ESPCN, residual over bicubic) on the
dataset's own train images with the shared loop; the epoch with the best val PSNR is kept."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers.core import config, storage
from helpers.eval import metrics
from helpers.models.upsamplers import ESPCN, NetworkUpsampler, downscale, to_float
from helpers.train import loop


class PairDataset(torch.utils.data.Dataset):
    """(low-res, high-res) float pairs from uint8 high-res images, with random flips/90° rotations."""

    def __init__(self, high: torch.Tensor, factor: int, augment: bool = True):
        self.high, self.low, self.augment = high, downscale(high, factor), augment

    def __len__(self) -> int:
        return len(self.high)

    def __getitem__(self, i):
        lo, hi = to_float(self.low[i]), to_float(self.high[i])
        if self.augment:
            k = int(torch.randint(4, ()))
            lo, hi = torch.rot90(lo, k, (1, 2)), torch.rot90(hi, k, (1, 2))
            if torch.rand(()) < 0.5:
                lo, hi = lo.flip(2), hi.flip(2)
        return lo, hi


def train_learned(train_high: torch.Tensor, val_high: torch.Tensor, factor: int, cfg, batch_size: int = 64,
                  progress: bool = True, seed: int = 0) -> NetworkUpsampler:
    """Train ESPCN on the dataset's own train images (downscaled by ``factor``, restored; L1 loss) with
    the shared training loop; the epoch with the best val PSNR is kept."""
    torch.manual_seed(seed)
    net = ESPCN(factor)
    loader = loop.train_loader(PairDataset(train_high, factor), batch_size, cfg.seed, workers=0)
    val = PairDataset(val_high, factor, augment=False)

    def loss_fn(model, batch):
        lo, hi = batch
        dev = next(model.parameters()).device
        return F.l1_loss(model(lo.to(dev)), hi.to(dev))

    def evaluate(model):
        up = NetworkUpsampler("learned", model, factor)
        pred = up(val.low, tuple(val.high.shape[-2:]))
        return {"psnr": float(metrics.psnr(pred, to_float(val.high)).mean())}

    cfg.metric = "psnr"
    card = {"task": "learned-sr", "factor": factor, "n_train": len(train_high),
            "train": storage.sha256_bytes(train_high[:: max(1, len(train_high) // 256)].numpy().tobytes())}
    ckpt = config.cache_dir() / "checkpoints" / storage.sha256_json({"run": card, "cfg": cfg.card(), "batch": batch_size})[:20]
    result = loop.train(net, loader, loss_fn, evaluate, cfg, ckpt, run_card=card, progress=progress)
    return NetworkUpsampler(f"learned-x{factor}", net.eval(), factor,
                            {"architecture": "ESPCN (residual over bicubic)", "trained_on": "the dataset's train split",
                             "loss": "L1", "epochs_run": len(result.history), "best_epoch": result.best_epoch,
                             "best_val_psnr": result.best_metric, "train_seconds": result.seconds},
                            training=result.training_card(f"03 learned SR (ESPCN x{factor}) on the train split"))
