"""Notebook 03's restored-image cache (issue 19): lossless WebP written on a thread pool gives exactly the
pixels of the PNG path it replaces; a manifest of sizes and sha256 is checked on load and a truncated,
tampered or missing file is rebuilt with a warning (only its chunk); a lost manifest rebuilds all."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers import data, profiles
from helpers.core.errors import StaleCacheWarning
from helpers.experiments import upsampling as UP
from helpers.models import upsamplers as U


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (see conftest.one_thread)."""


def _png_path(samples, up, factor: int, target: int) -> np.ndarray:
    """The previous method: each restored image saved as a PNG (compress_level 1) and decoded back."""
    high = UP.load_pixels(samples)
    out = U.to_uint8(up(U.downscale(high, factor), (target, target))).permute(0, 2, 3, 1).numpy()
    decoded = []
    for img in out:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
        decoded.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.stack(decoded)


def _pixels(samples) -> np.ndarray:
    return np.stack([np.asarray(data.load_rgb(p)) for p in samples.paths])


def test_restored_pixels_equal_the_png_path_and_damaged_files_are_rebuilt():
    test = profiles.load("smoke").dataset()["test"]
    up = U.Interpolation("pil", "bicubic")
    expected = _png_path(test, up, 4, 32)
    r = UP.restored(test, up, 4, 32, chunk=8, threads=2)
    assert [p.suffix for p in r.paths] == [".webp"] * len(test)
    assert np.array_equal(_pixels(r), expected)

    stamps = {p: p.stat().st_mtime_ns for p in r.paths}
    r.paths[3].write_bytes(r.paths[3].read_bytes()[:40])  # truncated
    raw = bytearray(r.paths[20].read_bytes())
    raw[-5] ^= 0xFF  # tampered, same size
    r.paths[20].write_bytes(bytes(raw))
    r.paths[30].unlink()  # gone
    with pytest.warns(StaleCacheWarning, match=r"3 file\(s\) truncated, changed or missing.*3 chunk\(s\) of 8"):
        again = UP.restored(test, up, 4, 32, chunk=8, threads=2)
    assert again.paths == r.paths and np.array_equal(_pixels(again), expected)
    untouched = [p for i, p in enumerate(r.paths) if i // 8 not in (0, 2, 3)]
    assert untouched and all(p.stat().st_mtime_ns == stamps[p] for p in untouched)  # other chunks are kept

    (r.root / "manifest.json").unlink()  # no manifest: the folder is built again from scratch
    assert np.array_equal(_pixels(UP.restored(test, up, 4, 32, chunk=8)), expected)
