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
from helpers.data.transforms import IMAGENET_MEAN, IMAGENET_STD
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
    status: str  # "pretrained" | "checkpoint" | "untrained"
    mean: tuple = IMAGENET_MEAN  # the normalisation its weights expect (timm: the model's data config)
    std: tuple = IMAGENET_STD
    interpolation: str = "bicubic"

    @property
    def trained(self) -> bool:
        return self.status != "untrained"

    def card(self) -> dict:
        return {"spec": self.spec, "status": self.status, "weights_sha256": self.weights_sha256,
                "feature_dim": self.feature_dim, "n_params": sum(p.numel() for p in self.model.parameters()),
                "mean": list(self.mean), "std": list(self.std)}

    def classifier(self, num_classes: int, seed: int = 0) -> torch.nn.Sequential:
        """Backbone + a new linear head, for fine-tuning (shares the backbone's parameters). The head's
        initial weights come from ``seed`` alone, not from whatever drew from torch's generator before."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = torch.nn.Linear(self.feature_dim, num_classes)
        return torch.nn.Sequential(self.model, head)


def load_backbone(spec: str, seed: int = 0, device: torch.device | None = None) -> Backbone:
    """Build the architecture, with torchvision's weights for ``@WEIGHTS`` specs, or timm's model for
    ``timm:`` specs (fp32, eval mode)."""
    if spec.startswith("timm:"):
        return load_timm(spec, seed, device)
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
    status = _declared("pretrained", weights_file(spec)) if w is not None else "untrained"
    return Backbone(spec, model, dim, sha, status)


def _url(spec: str) -> str | None:
    arch, weights = parse(spec)
    return weights_enum(arch, weights).url if weights else None


registry.register(registry.ModelKind(
    "torchvision", f"torchvision:<arch>[@DEFAULT|@<weights>] (ImageNet backbones: {', '.join(ARCHS)})",
    lambda body: parse(f"torchvision:{body}"), missing=missing_weights, url=_url))


def _declared(status: str, path) -> str:
    """``status``, unless the weights file's provenance (``<file>.json``) declares otherwise (stand-ins)."""
    from helpers.models.clip_models import declared_status, read_provenance

    return declared_status(status, read_provenance(str(path)))


# ------------------------------------------------------------------------------------------- timm
def timm_cache() -> Path:
    return config.cache_dir() / "hf"


def parse_timm(body: str) -> tuple[str, str | None]:
    """``timm:<name>`` (random), ``timm:<name>@pretrained`` (timm's default tag), ``timm:<name>@<path>``."""
    import timm

    name, _, weights = body.partition("@")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
        raise ModelSpecError(f"timm:{body}: {name!r} is not a timm model" + (f" (e.g. {', '.join(close)})" if close else ""))
    return name, (weights or None)


def _timm_weights(spec: str) -> tuple[str, str | None]:
    return parse_timm(spec.partition(":")[2])


def timm_missing(spec: str) -> str | None:
    name, weights = _timm_weights(spec)
    if weights is None:
        return None
    if weights != "pretrained":
        path = config.expand(weights)
        return None if path.is_file() else f"{spec}: checkpoint file {path} does not exist; place the timm weights there"
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg else None
    if repo and any(isinstance(try_to_load_from_cache(repo, f, cache_dir=str(timm_cache())), str)
                    for f in ("model.safetensors", "pytorch_model.bin")):
        return None
    url = (f"https://huggingface.co/{repo}" if repo else getattr(cfg, "url", "")) or "timm's hub"
    return (f"{spec} needs timm's pretrained weights, not in {timm_cache()}. Download them on a machine with network "
            f"({url}), then use timm:{name}@<path of the weights file>, or copy the hub cache there.")


def load_timm(spec: str, seed: int = 0, device: torch.device | None = None) -> Backbone:
    import timm

    name, weights = _timm_weights(spec)
    kwargs: dict = {"num_classes": 0}
    if weights == "pretrained":
        kwargs.update(pretrained=True, cache_dir=str(timm_cache()))
    elif weights:
        path = config.expand(weights)
        if not path.is_file():
            raise WeightsNotFoundError(timm_missing(spec))
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})  # its classifier is dropped
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, **kwargs)
    except (OSError, ConnectionError, TimeoutError) as e:
        raise WeightsNotFoundError(f"{spec}: {type(e).__name__}: {e}. {timm_missing(spec) or ''}") from e
    except RuntimeError as e:  # a file that is not this architecture's weights
        raise ModelSpecError(f"{spec}: the weights do not fit timm {name}: {e}") from e
    data_cfg = timm.data.resolve_data_config({}, model=model)
    if weights and weights != "pretrained":
        sha, status = storage.sha256_file(config.expand(weights)), _declared("checkpoint", config.expand(weights))
    else:
        sha, status = storage.sha256_state_dict(model.state_dict()), "pretrained" if weights else "untrained"
    model = model.float().eval().to(device or config.device())
    return Backbone(spec, model, int(model.num_features), sha, status, tuple(data_cfg["mean"]), tuple(data_cfg["std"]),
                    data_cfg.get("interpolation", "bicubic"))


registry.register(registry.ModelKind(
    "timm", "timm:<name>[@pretrained|@<weights file>] (timm backbones, e.g. convnext_tiny, efficientnet_b0)",
    parse_timm, missing=timm_missing,
    url=lambda spec: f"https://huggingface.co/timm/{_timm_weights(spec)[0]}" if _timm_weights(spec)[1] == "pretrained" else None))
