"""Image upsamplers behind one interface: a batch of images in (uint8 [N,3,h,w], or float in [0, 1]),
a float batch in [0, 1] at the exact target size out.

- interpolation, named with its implementation: ``pil-nearest|bilinear|bicubic|lanczos`` (PIL, per
  image, what torchvision's Resize does on PIL images) and ``torch-nearest|bilinear|bicubic``
  (``F.interpolate`` on the whole batch, GPU when present);
- ``srgan-x2|x4|x8``: SRGAN generators from a local weights file (checked against an expected sha256,
  loaded with ``strict=True``), then a bicubic resize to the exact target size when needed;
- ``learned-x<s>``: an ESPCN-style network trained on the dataset itself (train images downscaled and
  restored, L1 loss), so it needs no external weights and works on any domain offline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from helpers.core import config, storage
from helpers.core.errors import WeightsMismatchError  # noqa: F401 (re-exported)

PIL_MODES = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
TORCH_MODES = ("nearest", "bilinear", "bicubic")


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    return batch.float().div(255) if batch.dtype == torch.uint8 else batch.float()


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    return batch.clamp(0, 1).mul(255).round().to(torch.uint8)


def downscale(batch: torch.Tensor, factor: int) -> torch.Tensor:
    """The low-resolution inputs of the restoration protocol: PIL bicubic (antialiased) by ``factor``."""
    n, _, h, w = batch.shape
    if h % factor or w % factor:
        raise ValueError(f"{h}x{w} images do not divide by the scale factor {factor}")
    return Interpolation("pil", "bicubic")(batch, (h // factor, w // factor))


@dataclass
class Interpolation:
    backend: str  # pil | torch
    mode: str
    training = None  # nothing is trained (NetworkUpsampler.training: the learned SR's)

    def __post_init__(self):
        if self.backend == "pil" and self.mode not in PIL_MODES or self.backend == "torch" and self.mode not in TORCH_MODES:
            raise ValueError(f"no {self.backend} {self.mode} interpolation; PIL: {sorted(PIL_MODES)}, torch: {TORCH_MODES}")

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.mode}"

    def card(self) -> dict:
        return {"name": self.name, "kind": "interpolation", "backend": self.backend, "mode": self.mode}

    def __call__(self, batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.backend == "torch":
            x = to_float(batch).to(config.device())
            kwargs = {} if self.mode == "nearest" else {"align_corners": False, "antialias": True}
            return F.interpolate(x, size=size, mode=self.mode, **kwargs).clamp(0, 1).cpu()
        u8 = batch if batch.dtype == torch.uint8 else to_uint8(batch)
        out = [np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize(size[::-1], PIL_MODES[self.mode]))
               for img in u8]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255)


# ------------------------------------------------------------------------------------------ SRGAN
class _Residual(torch.nn.Module):
    def __init__(self, ch: int = 64):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(ch, ch, 3, padding=1), torch.nn.BatchNorm2d(ch)
        self.prelu = torch.nn.PReLU()
        self.conv2, self.bn2 = torch.nn.Conv2d(ch, ch, 3, padding=1), torch.nn.BatchNorm2d(ch)

    def forward(self, x):
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class _UpsampleStage(torch.nn.Module):
    def __init__(self, ch: int = 64):
        super().__init__()
        self.conv = torch.nn.Conv2d(ch, ch * 4, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(2)
        self.prelu = torch.nn.PReLU()

    def forward(self, x):
        return self.prelu(self.shuffle(self.conv(x)))


class SRGANGenerator(torch.nn.Module):
    """SRGAN's generator (Ledig et al. 2017) in the layout of the released x2/x4/x8 state dicts:
    input RGB in [0, 1], output (tanh + 1) / 2."""

    def __init__(self, scale: int):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"SRGAN scale {scale}: use 2, 4 or 8")
        self.scale = scale
        self.block1 = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 9, padding=4), torch.nn.PReLU())
        for i in range(2, 7):
            setattr(self, f"block{i}", _Residual())
        self.block7 = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.PReLU())
        stages = [_UpsampleStage() for _ in range(int(math.log2(scale)))]
        self.block8 = torch.nn.Sequential(*stages, torch.nn.Conv2d(64, 3, 9, padding=4))

    def forward(self, x):
        b1 = self.block1(x)
        b = b1
        for i in range(2, 7):
            b = getattr(self, f"block{i}")(b)
        return (torch.tanh(self.block8(b1 + self.block7(b))) + 1) / 2


def network_scale(settings: dict) -> int:
    """The scale SR networks run at: the restoration ``factor``, or ``network_scale`` when it is 1."""
    return int(settings["factor"]) if int(settings["factor"]) > 1 else int(settings.get("network_scale", 4))


def srgan_file(srgan_dir: str, scale: int) -> Path:
    """``<srgan_dir>/netG_x<scale>.pth``; the folder may use environment variables, and a relative
    folder is under the cache folder."""
    folder = config.expand(srgan_dir)
    return (folder if folder.is_absolute() else config.cache_dir() / folder) / f"netG_x{scale}.pth"


def load_srgan(path: Path | str, scale: int, sha256: str | None = None) -> SRGANGenerator:
    """The generator from a local state dict; a missing file, a wrong sha256 or a state dict of another
    shape is a clear error, never a silently different model."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"SRGAN x{scale} weights not found: place netG_x{scale}.pth at {path} "
                                "(or set the upsampling.srgan_dir parameter)")
    if sha256:
        got = storage.sha256_file(path)
        if got != sha256:
            raise WeightsMismatchError(f"{path}: sha256 {got[:16]}... differs from the expected {sha256[:16]}...; "
                                       "the file is damaged or not the expected release")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsMismatchError(f"{path} is not a readable state dict ({type(e).__name__}: {e})") from e
    net = SRGANGenerator(scale)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsMismatchError(f"{path} does not fit SRGAN x{scale}: {str(e)[:300]}") from e
    return net.eval()


@dataclass
class NetworkUpsampler:
    """A network that multiplies the size by ``scale``, then a bicubic resize to the exact target."""

    name: str
    net: torch.nn.Module
    scale: int
    info: dict = field(default_factory=dict)
    batch_size: int = 64
    training: dict | None = None  # ``protocol.training`` of the run that trained it here (learned SR)

    def card(self) -> dict:
        return {"name": self.name, "kind": "network", "scale": self.scale,
                "weights_sha256": storage.sha256_state_dict(self.net.state_dict()), **self.info}

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        dev = config.device()
        net = self.net.to(dev).eval()
        from helpers.core import compiled

        out = []
        with compiled.Encoder(net, len(batch), name=self.name) as run, config.autocast(dev):  # the profile's encode.compile
            for x in to_float(batch).split(self.batch_size):
                out.append(run(x.to(dev, non_blocking=True)).float().clamp(0, 1))
        y = torch.cat(out).cpu().contiguous()  # a conv net ran channels-last
        if tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return y


# --------------------------------------------------------------------------- learned SR (ESPCN)
class ESPCN(torch.nn.Module):
    """ESPCN (Shi et al. 2016) predicting the residual over bicubic upsampling: the network only has to
    learn the detail bicubic misses, which trains in minutes on a CPU."""

    def __init__(self, scale: int, width: int = 64):
        super().__init__()
        self.scale = scale
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 5, padding=2), torch.nn.Tanh(),
            torch.nn.Conv2d(width, width // 2, 3, padding=1), torch.nn.Tanh(),
            torch.nn.Conv2d(width // 2, 3 * scale * scale, 3, padding=1), torch.nn.PixelShuffle(scale))
        torch.nn.init.zeros_(self.body[4].weight)  # starts as exactly bicubic; training adds detail
        torch.nn.init.zeros_(self.body[4].bias)

    def forward(self, x):
        base = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + self.body(x)
