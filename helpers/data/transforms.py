"""Image preprocessing, described by a card so the feature cache and every record know exactly what ran."""

from __future__ import annotations

import numpy as np
import torch
from torchvision import transforms as T

from helpers.data import augment

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "lanczos": T.InterpolationMode.LANCZOS,
}


class ToNormalizedTensor(torch.nn.Module):
    """``ToTensor()`` + ``Normalize(mean, std)`` in one pass over the pixels: x / (255 std) - mean / std.

    Same values to within 3e-7, computed in numpy: single-threaded, so decode threads running beside
    the model's forward do not each start OpenMP regions that fight torch's threads for the cores.
    The uint8 pixels are read through a CHW view and scaled straight into the float output (one write
    pass instead of convert, subtract, scale and a transposing copy): 0.16 ms instead of 0.84 ms per
    224x224 image, which matters once the forward is compiled (bench/bench_encode.py). ``out``: write
    into that float32 CHW tensor instead of a new one (a batch buffer reused across batches: fresh pages
    for every image cost more than the arithmetic, see :func:`apply_into`).
    """

    def __init__(self, mean, std):
        super().__init__()
        mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        self.mean = mean * 255
        self.scale = (1.0 / (std * 255))[:, None, None]
        self.shift = (mean / std)[:, None, None].astype(np.float32)

    def forward(self, img, out: torch.Tensor | None = None) -> torch.Tensor:
        x = np.asarray(img)
        x = x[..., None] if x.ndim == 2 else x
        shape = (x.shape[2], *x.shape[:2])
        if out is None:
            out = torch.empty(shape, dtype=torch.float32)
        elif tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 tensor of shape {shape}, not {tuple(out.shape)}")
        y = out.numpy()
        np.multiply(x.transpose(2, 0, 1), self.scale, out=y, casting="unsafe")
        y -= self.shift
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={(self.mean / 255).round(8).tolist()})"


def apply_into(transform, img, out: torch.Tensor) -> None:
    """``out[...] = transform(img)``, the last step writing straight into ``out`` when it is a
    :class:`ToNormalizedTensor` (every transform of this module): no tensor allocated per image. On this
    VM first-touching fresh memory runs at ~230 MB/s, so a new 600 kB image tensor per item and a
    stacked copy per batch cost ~2 ms per 224 px image, more than decoding it."""
    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    if isinstance(steps[-1], ToNormalizedTensor):
        for step in steps[:-1]:
            img = step(img)
        steps[-1](img, out=out)
    else:
        out.copy_(transform(img))


def clip_transform(resolution: int, interpolation: str = "bicubic", mean=CLIP_MEAN, std=CLIP_STD,
                   crop: int | None = None, squash: bool = False):
    """CLIP's preprocessing (resize shorter side, centre crop, normalise) on an RGB PIL image.

    Returns (transform, card). Identical to ``clip.load``'s own transform when interpolation is
    bicubic; images are already RGB because :func:`helpers.data.load_rgb` converts every mode.
    ``crop``: a centre crop smaller than the resize (Hugging Face processors); ``squash``: resize both
    sides to ``resolution`` without cropping (open_clip's ``resize_mode: squash``).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r}: use one of {sorted(INTERPOLATIONS)}")
    crop = crop or resolution
    resize = T.Resize((resolution, resolution) if squash else resolution, interpolation=INTERPOLATIONS[interpolation])
    transform = T.Compose([resize, T.CenterCrop(crop), ToNormalizedTensor(mean, std)])
    card = {"resize": resolution, "interpolation": f"PIL {interpolation}", "crop": f"center {crop}",
            "mean": list(mean), "std": list(std), **({"resize_mode": "squash"} if squash else {})}
    return transform, card


def image_transform(size: int, interpolation: str = "bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    train: bool = False, aerial: bool = True, color_jitter: float = 0.0):
    """(transform, card): resize to ``size`` x ``size`` and normalise (ImageNet statistics by default).
    With ``train``, a :class:`helpers.data.augment.TrainTransform`: the same resize, to uint8, then a
    random-resized crop (0.7-1 of the area), flips, for aerial images 90-degree rotations, and colour
    jitter of strength ``color_jitter``, applied on tensors (per batch in classifier training)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r}: use one of {sorted(INTERPOLATIONS)}")
    card = {"resize": size, "interpolation": f"PIL {interpolation}", "mean": list(mean), "std": list(std)}
    if train:
        aug = augment.BatchAugment(mean, std, interpolation, aerial=aerial, color_jitter=color_jitter)
        card["augment"] = aug.description()
        return augment.TrainTransform(augment.Decode(size, INTERPOLATIONS[interpolation]), aug), card
    return T.Compose([T.Resize((size, size), interpolation=INTERPOLATIONS[interpolation]),
                      ToNormalizedTensor(mean, std)]), card
