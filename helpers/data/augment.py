"""Training augmentation on whole batches of decoded images, in one resample per batch.

Why: augmenting one PIL image at a time in a DataLoader worker takes one of a small machine's cores
from the training step (on 2 cores a ResNet-18 epoch ran 25 % below its bare step speed). Here an
image is decoded once to a fixed-size uint8 tensor (:class:`Decode`, deterministic, so it can be kept
in memory: :func:`helpers.data.in_memory.materialise`), and the random part runs on the batch, in the
training process, on the training device: random-resized crop, flips and 90-degree rotations are one
affine map per image, applied by a single ``grid_sample`` call; colour jitter and normalisation are
tensor arithmetic. The draws come from a generator seeded by (seed, epoch, rank)
(:class:`AugmentedBatches`), so a resumed run sees the same augmented batches as an uninterrupted one,
whether the decoded images come from memory or from loader workers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

RESAMPLE_MODES = ("nearest", "bilinear", "bicubic")  # what grid_sample interpolates with
_ROT90 = torch.tensor([[0.0, -1.0], [1.0, 0.0]])


class Decode(torch.nn.Module):
    """PIL RGB image -> uint8 CHW tensor of ``size`` x ``size`` (PIL resize, antialiased): the
    deterministic first stage of training images, the same resize as the evaluation transform."""

    def __init__(self, size: int, interpolation: T.InterpolationMode):
        super().__init__()
        self.resize = T.Resize((size, size), interpolation=interpolation)

    def forward(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(self.resize(img)).transpose(2, 0, 1)))


class BatchAugment(torch.nn.Module):
    """uint8 [B, 3, S, S] -> normalised float32 [B, 3, S, S]: per image a random-resized crop (area
    ``scale`` of the image, aspect ratio log-uniform in ``ratio``, clamped to the image), a horizontal
    flip, and for aerial images a vertical flip and a rotation by a random multiple of 90 degrees, all composed
    into one affine map sampled with ``mode``; then colour jitter (brightness, contrast, saturation, each
    a factor uniform in [1 - j, 1 + j], in that order) and (x / 255 - mean) / std."""

    def __init__(self, mean, std, mode: str = "bicubic", aerial: bool = True, color_jitter: float = 0.0,
                 scale=(0.7, 1.0), ratio=(0.9, 1.1), flips: bool = True):
        super().__init__()
        if mode not in RESAMPLE_MODES:
            raise ValueError(f"training augmentation resamples with one of {RESAMPLE_MODES}, not {mode!r}")
        self.mode, self.aerial, self.color_jitter, self.flips = mode, aerial, float(color_jitter), flips
        self.area, self.log_ratio = tuple(scale), (math.log(ratio[0]), math.log(ratio[1]))
        mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        # (x / 255 - mean) / std as one gain and shift, applied in place (fresh memory is slow on small VMs)
        self.register_buffer("gain", (1 / (255 * std)).float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (mean / std).float().view(1, 3, 1, 1), persistent=False)

    def description(self) -> str:
        lo, hi = self.area
        flips = (" + h/v flips" if self.aerial else " + h flips") if self.flips else ""
        text = f"random-resized-crop({lo:g}-{hi:g})" + flips
        text += (" + 90° rotations" if self.aerial else "") + f", one {self.mode} resample per image on tensors"
        return text + (f" + colour jitter {self.color_jitter:g}" if self.color_jitter else "")

    def affine(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[n, 2, 3] maps from output to input coordinates (``affine_grid``'s convention, in [-1, 1])."""
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
        area = self.area[0] + (self.area[1] - self.area[0]) * u[:, 0]
        aspect = torch.exp(self.log_ratio[0] + (self.log_ratio[1] - self.log_ratio[0]) * u[:, 1])
        w, h = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)  # fractions of a side
        cx, cy = (1 - w) * (2 * u[:, 2] - 1), (1 - h) * (2 * u[:, 3] - 1)  # crop centre, inside the image
        flip = torch.ones(n, 2, dtype=torch.float64)
        if self.flips:  # horizontal always; vertical only for aerial images (upside-down birds are not birds)
            flip[:, :1 + self.aerial] = (torch.randint(2, (n, 1 + self.aerial), generator=generator) * 2 - 1).double()
        turns = torch.randint(4, (n,), generator=generator) if self.aerial else torch.zeros(n, dtype=torch.long)
        rot = torch.stack([torch.linalg.matrix_power(_ROT90.double(), int(k)) for k in range(4)])[turns]
        linear = torch.diag_embed(torch.stack([w, h], 1) * flip) @ rot
        return torch.cat([linear, torch.stack([cx, cy], 1)[:, :, None]], 2).float()

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"BatchAugment takes uint8 [B, 3, H, W] images, not {images.dtype} {tuple(images.shape)}")
        n = images.shape[0]
        theta = self.affine(n, generator).to(images.device)
        x = images.float()
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False).clamp_(0, 255)
        if self.color_jitter:
            x = self._jitter(x, torch.rand(n, 3, generator=generator).to(images.device))
        return x.mul_(self.gain.to(x.device)).sub_(self.shift.to(x.device))

    def _jitter(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        j = self.color_jitter
        f = (1 - j + 2 * j * u).view(-1, 3, 1, 1, 1).unbind(1)  # brightness, contrast, saturation factors
        x = x.mul_(f[0]).clamp_(0, 255)
        x = x.mul_(f[1]).add_((1 - f[1]) * TF.rgb_to_grayscale(x).mean((2, 3), keepdim=True)).clamp_(0, 255)
        return x.mul_(f[2]).add_((1 - f[2]) * TF.rgb_to_grayscale(x)).clamp_(0, 255)


class TrainTransform(torch.nn.Module):
    """The training transform of one image (decode + augment as a batch of one, drawing from torch's
    global generator): for datasets that yield more than an image (caption pairs). Classifier training
    uses its two stages apart, decoding once and augmenting whole batches (:class:`AugmentedBatches`)."""

    def __init__(self, decode: Decode, augment: BatchAugment):
        super().__init__()
        self.decode, self.augment = decode, augment

    def forward(self, img: Image.Image) -> torch.Tensor:
        return self.augment(self.decode(img)[None])[0]


class AugmentedBatches:
    """A training loader of (uint8 images, labels, ...) whose images leave augmented (on ``device``,
    moved there before augmenting so an accelerator does the work). Its draws come from a generator
    seeded by (seed, the sampler's epoch, rank). ``sampler`` and ``len`` are the loader's, so the
    training loop drives it like the loader itself. (Augmenting the next batch in a helper thread while
    the step runs was measured slower on 2 cores: 216 s against 187 s for a ResNet-18 epoch.)"""

    def __init__(self, loader, augment: BatchAugment, seed: int, device: torch.device | None = None):
        from helpers.core import distributed

        self.loader, self.augment, self.seed = loader, augment, seed
        self.device, self.rank = device or torch.device("cpu"), distributed.rank()
        self.sampler, self.dataset = loader.sampler, loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        epoch = int(getattr(self.sampler, "epoch", 0))
        g = torch.Generator().manual_seed((self.seed * 1_000_033 + epoch) * 1_009 + self.rank)
        for images, *rest in self.loader:
            yield (self.augment(images.to(self.device, non_blocking=True), g), *rest)
