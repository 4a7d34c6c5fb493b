"""Upsamplers (notebook 03): interpolation, SRGAN loading (strict, sha256-checked), the learned SR
model, quality metrics and the cache of restored images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from helpers import profiles
from helpers.core import storage
from helpers.data import synthetic
from helpers.eval import metrics
from helpers.experiments import upsampling as UP
from helpers.models import upsamplers as U
from helpers.train import super_resolution

SRGAN_SHA = {4: "f4c381640826a48d2440583e4920c6bb4041804f4e285c3c6d585f03961fe87c"}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (see conftest.one_thread)."""


@pytest.fixture
def images():
    return torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_interpolations_give_the_target_size_in_range_and_pil_matches_torchvision(images):
    for name in ("pil-nearest", "pil-bilinear", "pil-bicubic", "pil-lanczos", "torch-nearest", "torch-bilinear",
                 "torch-bicubic"):
        out = U.Interpolation(*name.split("-"))(images, (40, 40))
        assert out.shape == (3, 3, 40, 40) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    pil = U.Interpolation("pil", "bicubic")(images, (64, 64))
    ref = T.ToTensor()(T.Resize((64, 64), interpolation=T.InterpolationMode.BICUBIC)(
        Image.fromarray(images[0].permute(1, 2, 0).numpy())))
    assert torch.allclose(pil[0], ref, atol=1e-6)
    # nearest x2 replicates every pixel; uint8 and float inputs agree
    near = U.Interpolation("torch", "nearest")(images, (32, 32))
    assert torch.equal(near[:, :, ::2, ::2], images.float() / 255)
    assert torch.allclose(U.Interpolation("pil", "bilinear")(images.float() / 255, (20, 20)),
                          U.Interpolation("pil", "bilinear")(images, (20, 20)))
    with pytest.raises(ValueError, match="lanczos"):
        U.Interpolation("torch", "lanczos")


def test_psnr_and_ssim_on_hand_computed_cases():
    a = torch.zeros(1, 3, 8, 8)
    assert float(metrics.psnr(a + 0.1, a)) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 -> 20 dB
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert np.allclose(metrics.ssim(x, x), 1.0)
    assert (metrics.ssim(x, x.flip(-1)) < 0.5).all()


def _srgan_file(tmp_path: Path, scale: int = 4) -> Path:
    net = U.SRGANGenerator(scale)
    path = tmp_path / f"netG_x{scale}.pth"
    torch.save(net.state_dict(), path)
    return path


def test_srgan_loads_strictly_checks_sha256_and_names_missing_files(tmp_path):
    path = _srgan_file(tmp_path)
    net = U.load_srgan(path, 4, storage.sha256_file(path))
    out = U.NetworkUpsampler("srgan-x4", net, 4)(torch.rand(2, 3, 16, 16), (60, 60))
    assert out.shape == (2, 3, 60, 60) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(U.WeightsMismatchError, match="sha256"):
        U.load_srgan(path, 4, "0" * 64)
    sd = torch.load(path, weights_only=True)
    del sd["block7.0.bias"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(U.WeightsMismatchError, match="does not fit"):
        U.load_srgan(tmp_path / "broken.pth", 4)
    with pytest.raises(U.WeightsMismatchError, match="does not fit"):  # x4 weights are not x2's
        U.load_srgan(path, 2)
    with pytest.raises(FileNotFoundError, match="netG_x8.pth"):
        U.load_srgan(tmp_path / "netG_x8.pth", 8)


def test_the_released_srgan_x4_weights_load_and_beat_nearest(eurosat_root):
    path = Path(os.environ["CLIPLAB_DATA"]).expanduser() / ".." / "weights" / "srgan" / "netG_x4.pth"
    if not path.is_file():
        pytest.skip(f"real-weights test: no SRGAN weights at {path}")
    up = U.NetworkUpsampler("srgan-x4", U.load_srgan(path, 4, SRGAN_SHA[4]), 4)
    files = sorted((eurosat_root / "test" / "Industrial").glob("*.jpg"))[:16]  # textured (flat Forest favours blur)
    high = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in files])
    low = U.downscale(high, 4)
    ref = U.to_float(high)
    srgan = metrics.psnr(up(low, (64, 64)), ref).mean()
    nearest = metrics.psnr(U.Interpolation("pil", "nearest")(low, (64, 64)), ref).mean()
    assert srgan > nearest


def test_espcn_starts_as_bicubic_and_training_keeps_the_best_val_psnr():
    net = U.ESPCN(4)
    x = torch.rand(2, 3, 8, 8)
    bicubic = torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.equal(net(x), bicubic)
    root = synthetic.make_synthetic()
    from helpers import data
    from helpers.train import loop

    splits = data.load_image_folder(root, val_fraction=0.25, seed=0)
    high = {k: UP.load_pixels(splits[k]) for k in ("train", "val")}
    cfg = loop.TrainConfig(epochs=2, lr=1e-3, warmup_epochs=0.5)
    up = super_resolution.train_learned(high["train"], high["val"], 4, cfg, batch_size=32, progress=False)
    assert up.name == "learned-x4" and up.info["best_epoch"] in (1, 2) and np.isfinite(up.info["best_val_psnr"])
    assert up.training["ran"] and up.training["epochs_trained"] == 2  # what the suite's summary lists
    again = super_resolution.train_learned(high["train"], high["val"], 4, cfg, batch_size=32, progress=False)
    assert not again.training["ran"] and again.card() == up.card()  # the finished run reused, not a training


def test_restored_images_are_written_once_and_rebuilt_when_damaged():
    P = profiles.load("smoke")
    test = P.dataset()["test"]
    up = U.Interpolation("pil", "bicubic")
    r = UP.restored(test, up, 4, 32)
    assert len(r) == len(test) and all(p.is_file() for p in r.paths)
    assert Image.open(r.paths[0]).size == (32, 32) and r.split_protocol["restored"]["factor"] == 4
    stamp = r.paths[0].stat().st_mtime_ns
    again = UP.restored(test, up, 4, 32)
    assert again.paths == r.paths and r.paths[0].stat().st_mtime_ns == stamp  # from the cache
    r.paths[3].write_bytes(r.paths[3].read_bytes()[:50])  # a truncated PNG is noticed and rebuilt
    rebuilt = UP.restored(test, up, 4, 32)
    assert Image.open(rebuilt.paths[3]).size == (32, 32)
    assert UP.restored(test, up, 4, 24).root != r.root  # another size, another folder
