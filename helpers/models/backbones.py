"""ImageNet baselines from torchvision, named by a spec like CLIP models: ``torchvision:<arch>[@WEIGHTS]``.

- ``torchvision:resnet18`` -- random weights (``weights=None``): trained from scratch, never a
  pretrained result;
- ``torchvision:resnet50@DEFAULT`` -- torchvision's best ImageNet weights for the architecture,
  downloaded to ``<CLIPLAB_CACHE>/torch/hub/checkpoints``; offline and missing, the error names the
  file and the folder.

A backbone gives penultimate features (for linear probes through the shared feature cache) and a
classifier with a fresh head (for fine-tuning with :mod:`helpers.training`).
"""

from __future__ import annotations

import pickle
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from helpers.core import config, storage
from helpers.core.errors import ModelSpecError, WeightsNotFoundError
from helpers.models import registry

ARCHS = ("resnet18", "resnet50", "efficientnet_b0")


def hub_dir() -> Path:
    return config.cache_dir() / "torch" / "hub"


def parse(spec: str) -> tuple[str, str | None]:
    kind, _, body = spec.partition(":")
    arch, at, weights = body.partition("@")
    if kind != "torchvision" or arch not in ARCHS or (at and not weights):
        raise ModelSpecError(f"backbone spec {spec!r}: use torchvision:<arch>[@DEFAULT] with arch in {ARCHS}")
    if weights and weights not in torchvision.models.get_model_weights(arch).__members__:  # not hasattr: enum methods
        raise ModelSpecError(f"{spec}: {arch} has no weights {weights!r}")
    return arch, (weights or None)


def weights_enum(arch: str, weights: str | None):
    if weights is None:
        return None
    enum = torchvision.models.get_model_weights(arch)
    return enum.DEFAULT if weights == "DEFAULT" else enum[weights]


def weights_file(spec: str) -> Path | None:
    """Where torchvision keeps the spec's weights file (None for random weights)."""
    arch, weights = parse(spec)
    w = weights_enum(arch, weights)
    return None if w is None else hub_dir() / "checkpoints" / Path(w.url).name


def missing_weights(spec: str) -> str | None:
    path = weights_file(spec)
    if path is None or path.is_file():
        return None
    arch, weights = parse(spec)
    url = weights_enum(arch, weights).url
    return (f"{spec} needs the weights file {path.name} in {path.parent}. Download it from {url} on a "
            f"machine with network and copy it there, or set CLIPLAB_CACHE to a folder whose "
            f"torch/hub/checkpoints/ holds it.")


@dataclass
class Backbone:
    spec: str
    model: torch.nn.Module  # classifier head replaced by Identity: outputs penultimate features
    feature_dim: int
    weights_sha256: str
    status: str  # "pretrained" | "untrained"

    @property
    def trained(self) -> bool:
        return self.status != "untrained"

    def card(self) -> dict:
        return {"spec": self.spec, "status": self.status, "weights_sha256": self.weights_sha256,
                "feature_dim": self.feature_dim, "n_params": sum(p.numel() for p in self.model.parameters())}

    def classifier(self, num_classes: int) -> torch.nn.Sequential:
        """Backbone + a new linear head, for fine-tuning (shares the backbone's parameters)."""
        return torch.nn.Sequential(self.model, torch.nn.Linear(self.feature_dim, num_classes))


def load_backbone(spec: str, seed: int = 0, device: torch.device | None = None) -> Backbone:
    """Build the architecture, with torchvision's weights for ``@WEIGHTS`` specs (fp32, eval mode)."""
    arch, weights = parse(spec)
    w = weights_enum(arch, weights)
    torch.hub.set_dir(str(hub_dir()))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = torchvision.models.get_model(arch, weights=w)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise WeightsNotFoundError(f"{spec}: download failed ({e}). {missing_weights(spec) or ''}") from e
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # a cached file that is not this arch's weights
        raise ModelSpecError(f"{spec}: {weights_file(spec)} does not fit {arch}: {e}") from e
    if arch.startswith("resnet"):
        dim = model.fc.in_features
        model.fc = torch.nn.Identity()
    else:
        dim = model.classifier[-1].in_features
        model.classifier[-1] = torch.nn.Identity()
    sha = storage.sha256_file(weights_file(spec)) if w is not None else storage.sha256_state_dict(model.state_dict())
    model = model.float().eval().to(device or config.device())
    return Backbone(spec, model, dim, sha, "pretrained" if w is not None else "untrained")


def _url(spec: str) -> str | None:
    arch, weights = parse(spec)
    return weights_enum(arch, weights).url if weights else None


registry.register(registry.ModelKind(
    "torchvision", f"torchvision:<arch>[@DEFAULT|@<weights>] (ImageNet backbones: {', '.join(ARCHS)})",
    lambda body: parse(f"torchvision:{body}"), missing=missing_weights, url=_url))
