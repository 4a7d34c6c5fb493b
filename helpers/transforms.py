"""Image preprocessing, described by a card so the feature cache and every record know exactly what ran."""

from __future__ import annotations

from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

INTERPOLATIONS = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "lanczos": T.InterpolationMode.LANCZOS,
}


def clip_transform(resolution: int, interpolation: str = "bicubic", mean=CLIP_MEAN, std=CLIP_STD):
    """CLIP's preprocessing (resize shorter side, centre crop, normalise) on an RGB PIL image.

    Returns (transform, card). Identical to ``clip.load``'s own transform when interpolation is
    bicubic; images are already RGB because :func:`helpers.data.load_rgb` converts every mode.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r}: use one of {sorted(INTERPOLATIONS)}")
    transform = T.Compose([
        T.Resize(resolution, interpolation=INTERPOLATIONS[interpolation]),
        T.CenterCrop(resolution),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    card = {"resize": resolution, "interpolation": f"PIL {interpolation}", "crop": f"center {resolution}",
            "mean": list(mean), "std": list(std)}
    return transform, card
