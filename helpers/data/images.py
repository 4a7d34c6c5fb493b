"""Decoding image files, always to RGB. Bad-image policy (one policy, everywhere): an image that
cannot be decoded (corrupt, truncated, missing, or so large that decoding it could exhaust memory: PIL's
decompression-bomb limit) raises :class:`BadImageError` naming the file; nothing is skipped silently.
``find_bad_images`` lists every such file up front for a user who wants to clean a folder first.

Which directory entries are images at all is decided here and only here (:func:`skip_reason`): a
layout reads a file as an image by its extension; hidden entries, broken symlinks, other file kinds and
other extensions are skipped and every one of them is named (the dataset card lists them)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from helpers.core.errors import BadImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a grey half-image

# what PIL decodes without plugins; .jfif and .jpe are JPEG under other names (cameras, browsers save them)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def skip_reason(path: Path | str, top: Path | str | None = None) -> str | None:
    """Why ``path`` is not read as an image, or None when it is one. The one rule every layout uses:
    hidden (its name, or a folder between ``top`` and it, starts with '.'), a broken symlink, not a
    regular file, or an extension that is not an image format's (the reason names the extension)."""
    path = Path(path)
    parts = path.relative_to(top).parts if top is not None else (path.name,)
    if any(part.startswith(".") for part in parts):
        return "hidden (name starts with '.')"
    if path.is_symlink() and not path.exists():
        return "broken symlink"
    if not path.is_file():
        return "not a regular file"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image extension ({path.suffix.lower() or 'none'})"
    return None


def is_image_file(path: Path | str) -> bool:
    return skip_reason(path) is None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit and float are rescaled, transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        else:
            arr = arr / hi * 255.0
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: Path | str) -> Image.Image:
    """Decode ``path`` fully and return it as RGB, or raise :class:`BadImageError` naming the file."""
    try:
        with Image.open(path) as img:
            if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
                # PIL's own warning does not say which file; decoding goes on (up to twice the limit)
                warnings.warn(f"image {path} is {img.width}x{img.height} pixels, over PIL's decompression-bomb "
                              f"limit of {Image.MAX_IMAGE_PIXELS:,}: decoding it anyway; downscale it if it is "
                              "genuine", Image.DecompressionBombWarning, stacklevel=2)
            img.load()
            return to_rgb(img)
    except FileNotFoundError as e:
        raise BadImageError(f"image file is missing: {path}") from e
    except Image.DecompressionBombError as e:
        raise BadImageError(f"image {path} is too large to decode safely ({e}) Remove or downscale the file; if it "
                            "is genuine, raise PIL.Image.MAX_IMAGE_PIXELS before loading.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImageError(f"cannot decode image {path}: {e}. Remove or replace the file and run again.") from e
    except Exception as e:  # a decoder's own failure on a malformed file (struct.error, IndexError, ...)
        raise BadImageError(f"cannot decode image {path}: {type(e).__name__}: {e}. Remove or replace the file "
                            "and run again.") from e


def find_bad_images(paths) -> list[tuple[str, str]]:
    """(path, reason) for every file that does not decode (corrupt, missing, over the decompression-bomb
    limit, ...); for cleaning a folder before a long run. Never stops at a bad file."""
    bad = []
    for p in paths:
        try:
            load_rgb(p)
        except BadImageError as e:
            bad.append((str(p), str(e.__cause__ or e)))
    return bad
