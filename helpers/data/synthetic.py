"""A deterministic synthetic dataset made by code, for the smoke profile and tests.

Classes differ by colour, shape and texture; each has a class name and captions. Images are
written once as PNG files in the train/test folder layout (plus ``captions.csv``), so the suite
reads them exactly like real data: same decoding, fingerprinting and feature cache.
"""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from helpers.core import config, storage
from helpers.data import Samples, load_captions_csv, load_image_folder

# folder name -> (class name, colour RGB, shape, texture)
CLASSES = {
    "red_circle": ("red circle", (220, 40, 40), "circle", "plain"),
    "green_square": ("green square", (40, 180, 60), "square", "plain"),
    "blue_triangle": ("blue triangle", (50, 80, 220), "triangle", "plain"),
    "yellow_stripes": ("yellow stripes", (230, 210, 40), "stripes", "striped"),
    "purple_checks": ("purple checkerboard", (150, 60, 190), "checks", "checked"),
    "orange_ring": ("orange ring", (240, 140, 30), "ring", "plain"),
    "cyan_cross": ("cyan cross", (40, 200, 210), "cross", "plain"),
    "white_dots": ("white dots", (235, 235, 235), "dots", "dotted"),
}
CLASSNAMES = {k: v[0] for k, v in CLASSES.items()}
GENERATOR_VERSION = 1


def _draw(shape: str, colour, size: int, rng: np.random.Generator) -> Image.Image:
    bg = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(img)
    jitter = rng.integers(-25, 26, size=3)
    col = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter, strict=True))
    r = int(size * rng.uniform(0.22, 0.38))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=col)
    elif shape == "square":
        d.rectangle(box, fill=col)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
    elif shape == "ring":
        d.ellipse(box, outline=col, width=max(2, r // 3))
    elif shape == "cross":
        w = max(2, r // 3)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=col)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=col)
    elif shape == "stripes":
        step = int(rng.integers(5, 9))
        for x in range(int(rng.integers(0, step)), size, step):
            d.rectangle((x, 0, x + step // 2 - 1, size), fill=col)
    elif shape == "checks":
        step = int(rng.integers(6, 11))
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2 == 0:
                    d.rectangle((x, y, x + step - 1, y + step - 1), fill=col)
    elif shape == "dots":
        for _ in range(int(rng.integers(8, 16))):
            x, y = (int(v) for v in rng.integers(2, size - 2, size=2))
            d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=col)
    return img


def _captions(name: str, shape: str, rng: np.random.Generator) -> list[str]:
    colour, _, rest = name.partition(" ")
    return [f"a {name} on a dark background", f"a synthetic image of {rest or shape} in {colour}",
            f"{colour} {rest or shape}, computer generated"][: int(rng.integers(2, 4))]


def make_synthetic(root: Path | str | None = None, n_train: int = 24, n_test: int = 12, size: int = 64,
                   seed: int = 0) -> Path:
    """Write the dataset (once per parameter set) and return its folder; rewriting is atomic."""
    params = {"n_train": n_train, "n_test": n_test, "size": size, "seed": seed, "version": GENERATOR_VERSION}
    root = Path(root) if root else config.cache_dir() / "synthetic" / storage.sha256_json(params)[:12]
    if (root / "COMPLETE").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with storage.file_lock(root.parent / f".{root.name}"):  # several processes (DDP ranks) may ask at once
        if (root / "COMPLETE").is_file():
            return root
        return _write(root, params, n_train, n_test, size, seed)


def _write(root: Path, params: dict, n_train: int, n_test: int, size: int, seed: int) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    rows = []
    for ci, (folder, (name, colour, shape, _)) in enumerate(CLASSES.items()):
        for split, n in (("train", n_train), ("test", n_test)):
            (tmp / split / folder).mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng([seed, ci, 0 if split == "train" else 1, i])
                rel = f"{split}/{folder}/{folder}_{i:04d}.png"
                buf = io.BytesIO()
                _draw(shape, colour, size, rng).save(buf, format="PNG")
                (tmp / rel).write_bytes(buf.getvalue())
                if split == "test":
                    rows += [(rel, c) for c in _captions(name, shape, rng)]
    with open(tmp / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    (tmp / "COMPLETE").write_text(str(params))
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return root


def load_synthetic(val_fraction: float = 0.25, seed: int = 0, classnames=None, **kwargs) -> dict[str, Samples]:
    """The synthetic dataset as {"train","val","test"} :class:`Samples` with class names (its own
    readable names unless ``classnames`` says otherwise)."""
    root = make_synthetic(**kwargs)
    return load_image_folder(root, name="synthetic", classnames=classnames, default_names=CLASSNAMES,
                             val_fraction=val_fraction, seed=seed)


def load_synthetic_captions(**kwargs):
    """The synthetic test images with 2-3 captions each, for retrieval."""
    root = make_synthetic(**kwargs)
    return load_captions_csv(root / "captions.csv", root, name="synthetic-captions")
