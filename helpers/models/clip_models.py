"""One string names a CLIP model everywhere: ``openai:<name>``, ``file:<path>``, ``scratch:<config>``.

- ``openai:ViT-B/32`` -- ``clip.load`` with the download folder ``<CLIPLAB_CACHE>/clip``; offline
  and missing, the error names the file to place and the folder to place it in.
- ``file:path/to/x.pt`` -- a local checkpoint: OpenAI TorchScript archive or OpenAI state dict
  (what :func:`save_openai_state_dict` writes), loaded by ``clip.load`` itself.
- ``scratch:<config>[,key=value...][@seed]`` -- the architecture with random weights, e.g.
  ``scratch:ViT-B/32``, ``scratch:tiny-vit@1``, ``scratch:tiny-rn,res=64``. Never a result.

Weights are always fp32 (also on CUDA); speed comes from autocast in :mod:`helpers.features`.
"""

from __future__ import annotations

import json
import re
import urllib.error
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import clip
import torch
from clip.model import CLIP, build_model

from helpers.core import config, storage
from helpers.core.errors import ModelSpecError, WeightsNotFoundError  # noqa: F401 (re-exported)
from helpers.data.transforms import CLIP_MEAN, CLIP_STD, clip_transform
from helpers.models import registry

# CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
#      context_length, vocab_size, transformer_width, transformer_heads, transformer_layers)
# Head counts follow clip.model.build_model (width // 64) so saved checkpoints load back unchanged.
SCRATCH_CONFIGS: dict[str, dict] = {
    "ViT-B/32": dict(embed=512, res=224, layers=12, width=768, patch=32, ctx=77, text_width=512, text_layers=12),
    "ViT-B/16": dict(embed=512, res=224, layers=12, width=768, patch=16, ctx=77, text_width=512, text_layers=12),
    "RN50": dict(embed=1024, res=224, layers=(3, 4, 6, 3), width=64, patch=None, ctx=77, text_width=512, text_layers=12),
    "RN101": dict(embed=512, res=224, layers=(3, 4, 23, 3), width=64, patch=None, ctx=77, text_width=512, text_layers=12),
    # trainable from scratch on a CPU at EuroSAT's 64x64: a ResNet-18-sized image tower (2,2,2,2 stages)
    # with a small text transformer, and a ResNet-50-sized one (the "larger CLIP" of proxy tuning)
    "rn18-small": dict(embed=256, res=64, layers=(2, 2, 2, 2), width=32, patch=None, ctx=32, text_width=256, text_layers=4),
    "rn50-small": dict(embed=512, res=64, layers=(3, 4, 6, 3), width=64, patch=None, ctx=32, text_width=256, text_layers=4),
    # small enough for tests and the smoke profile (seconds on a laptop CPU)
    "tiny-vit": dict(embed=64, res=32, layers=2, width=64, patch=8, ctx=32, text_width=64, text_layers=2),
    "tiny-rn": dict(embed=64, res=32, layers=(1, 1, 1, 1), width=16, patch=None, ctx=32, text_width=64, text_layers=2),
}
VOCAB_SIZE = 49408  # clip's BPE tokenizer


def _build_scratch(cfg: dict) -> CLIP:
    layers = cfg["layers"]
    layers = tuple(layers) if isinstance(layers, (list, tuple)) else int(layers)
    if cfg["text_width"] % 64 or (not isinstance(layers, tuple) and cfg["width"] % 64):
        raise ModelSpecError("transformer widths must be multiples of 64 (clip derives heads as width // 64)")
    return CLIP(cfg["embed"], cfg["res"], layers, cfg["width"], cfg["patch"], cfg["ctx"], VOCAB_SIZE,
                cfg["text_width"], cfg["text_width"] // 64, cfg["text_layers"])


def parse_scratch(spec_body: str) -> tuple[dict, int]:
    """``tiny-vit,res=64,layers=4@3`` -> (config dict, seed)."""
    body, _, seed = spec_body.partition("@")
    name, *overrides = re.split(r",(?![^()\[\]]*[)\]])", body)  # commas inside (..) belong to a tuple
    if name not in SCRATCH_CONFIGS:
        raise ModelSpecError(f"scratch:{name} is not a known config; known: {sorted(SCRATCH_CONFIGS)}")
    cfg = dict(SCRATCH_CONFIGS[name])
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or key not in cfg:
            raise ModelSpecError(f"scratch override {item!r}: use key=value with key in {sorted(cfg)}")
        try:
            parsed = json.loads(value.replace("(", "[").replace(")", "]")) if value not in ("None", "none") else None
        except json.JSONDecodeError:
            parsed = float("nan")  # rejected just below
        if not (parsed is None or type(parsed) is int
                or (isinstance(parsed, list) and parsed and all(type(v) is int for v in parsed))):
            raise ModelSpecError(f"scratch override {item!r}: the value must be an integer, a tuple of "
                                 "integers like (3,4,6,3), or None")
        cfg[key] = parsed
    try:
        return cfg, int(seed or 0)
    except ValueError:
        raise ModelSpecError(f"scratch:{spec_body}: the seed after '@' must be an integer, got {seed!r}") from None


@dataclass
class LoadedModel:
    """A CLIP model ready to encode, with its preprocessing and the facts a record states about it."""

    spec: str
    model: CLIP
    weights_sha256: str
    status: str  # "pretrained" | "checkpoint" | "untrained"
    source_file: str | None = None
    meta: dict = field(default_factory=dict)
    # models of other libraries (open_clip, Hugging Face) bring their own tokenizer and preprocessing
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None
    preprocess: dict | None = None  # {"size", "mean", "std", "interpolation", "resize_mode"[, "crop"]}
    embed: int | None = None
    context: int | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def resolution(self) -> int:
        if self.preprocess:
            return int(self.preprocess.get("crop") or self.preprocess["size"])
        return int(self.model.visual.input_resolution)

    @property
    def normalization(self) -> tuple[tuple, tuple]:
        """(mean, std) the model was trained with (its library's preprocessing, else OpenAI CLIP's)."""
        if self.preprocess and self.preprocess.get("mean"):
            return tuple(self.preprocess["mean"]), tuple(self.preprocess["std"])
        return CLIP_MEAN, CLIP_STD

    @property
    def context_length(self) -> int:
        return int(self.context or self.model.context_length)

    @property
    def embed_dim(self) -> int:
        return int(self.embed or self.model.text_projection.shape[1])

    @property
    def trained(self) -> bool:
        return self.status != "untrained"

    def transform(self, interpolation: str | None = None):
        """(transform, card): the model's own preprocessing (resolution, mean/std, resize mode);
        ``interpolation`` overrides its resampling filter (notebook 03 compares them)."""
        if not self.preprocess:
            return clip_transform(self.resolution, interpolation or "bicubic")
        p = self.preprocess
        mode = p.get("resize_mode", "shortest")
        if mode not in ("shortest", "squash"):
            raise ModelSpecError(f"{self.spec}: resize mode {mode!r} is not supported (shortest, squash)")
        return clip_transform(int(p["size"]), interpolation or p.get("interpolation", "bicubic"), p["mean"], p["std"],
                              crop=p.get("crop"), squash=mode == "squash")

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if self.tokenizer is not None:
            return self.tokenizer(list(texts))
        return clip.tokenize(texts, context_length=self.context_length, truncate=True)

    def card(self) -> dict:
        visual = getattr(self.model, "visual", self.model)
        return {
            "spec": self.spec,
            "status": self.status,
            "weights_sha256": self.weights_sha256,
            "source_file": self.source_file,
            "image_tower": type(visual).__name__,
            "input_resolution": self.resolution,
            "embed_dim": self.embed_dim,
            "n_params": sum(p.numel() for p in self.model.parameters()),
            **({"preprocess": self.preprocess} if self.preprocess else {}),
            **({"meta": self.meta} if self.meta else {}),
        }


# OpenAI's published checkpoints: name -> (sha256 of the file, file name); the URL is built from both.
# Kept here rather than read from clip's private table, so the lab states what it expects to load.
OPENAI_URL = "https://openaipublic.azureedge.net/clip/models/{sha256}/{file}"
OPENAI_MODELS: dict[str, tuple[str, str]] = {
    "RN50": ("afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    "RN101": ("8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    "RN50x4": ("7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
    "RN50x16": ("52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt"),
    "RN50x64": ("be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt"),
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    "ViT-L/14@336px": ("3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", "ViT-L-14-336px.pt"),
}


def openai_weights_path(name: str) -> tuple[Path, str, str]:
    """(file path in the cache, expected sha256, download URL) of an OpenAI model."""
    if name not in OPENAI_MODELS:
        raise ModelSpecError(f"openai:{name} is not an OpenAI CLIP model; available: {list(OPENAI_MODELS)}")
    sha, file = OPENAI_MODELS[name]
    return config.cache_dir() / "clip" / file, sha, OPENAI_URL.format(sha256=sha, file=file)


def _openai_missing(spec: str) -> str | None:
    path, sha, url = openai_weights_path(spec.partition(":")[2])
    if not path.is_file() or storage.sha256_file(path) != sha:
        return _missing_message(spec, path, url)
    return None


def _file_missing(spec: str) -> str | None:
    path = config.expand(spec.partition(":")[2])
    if not path.is_file():
        return f"{spec}: checkpoint file {path} does not exist; place the .pt file there"
    return None


def _missing_message(spec: str, path: Path, url: str) -> str:
    return (f"{spec} needs the weights file {path.name} (sha256 in its URL) in {path.parent}. "
            f"Download it from {url} on a machine with network and copy it to {path}, "
            f"or set CLIPLAB_CACHE to a folder whose clip/ subfolder holds it.")


def load_model(spec: str, device: torch.device | str | None = None):
    """Load the model a spec names (any registered kind), in eval mode, fp32 weights, on ``device``."""
    kind, _ = registry.split(spec)
    if kind.load is None:
        raise ModelSpecError(f"{spec}: a {kind.name}: spec names a recorded result; resolve it first "
                             "(helpers.experiments.clip_finetune.checkpoint_spec)")
    return kind.load(spec, device)


def _load_openai_spec(spec: str, device=None) -> LoadedModel:
    body = spec.partition(":")[2]
    model = _load_openai(spec, body)
    path, sha, _ = openai_weights_path(body)
    return _loaded(spec, model, sha, "pretrained", str(path), device)


def _load_file_spec(spec: str, device=None) -> LoadedModel:
    path = config.expand(spec.partition(":")[2]).resolve()
    if not path.is_file():
        raise WeightsNotFoundError(_file_missing(spec))
    model = _load_checkpoint_file(path, spec)
    return _loaded(spec, model, storage.sha256_file(path), "checkpoint", str(path), device)


def _load_scratch_spec(spec: str, device=None) -> LoadedModel:
    cfg, seed = parse_scratch(spec.partition(":")[2])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = _build_scratch(cfg)
        except (TypeError, ZeroDivisionError, RuntimeError) as e:  # e.g. patch=None on a ViT
            raise ModelSpecError(f"{spec}: this config does not build a CLIP model ({type(e).__name__}: {e})") from e
    return _loaded(spec, model, storage.sha256_state_dict(model.state_dict()), "untrained", None, device)


def _loaded(spec, model, sha, status, source, device) -> LoadedModel:
    dev = torch.device(device) if device is not None else config.device()
    meta = read_provenance(source)
    return LoadedModel(spec, model.float().eval().to(dev), sha, declared_status(status, meta), source, meta)


def declared_status(status: str, provenance: dict) -> str:
    """The status a weights file's provenance declares over the one its kind implies: ``trained`` (by
    this suite), or ``untrained`` (random weights in a released format, e.g. scripts/paper_standins.py),
    so their accuracies are masked like any untrained model's."""
    if provenance.get("untrained"):
        return "untrained"
    return "trained" if provenance.get("trained") else status


def _parse_openai(body: str):
    openai_weights_path(body)
    return body


def _clip_load(name_or_path: str, spec: str, download_root: str | None = None) -> CLIP:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*torch.jit.*", category=FutureWarning)
            model, _ = clip.load(name_or_path, device="cpu", jit=False, download_root=download_root)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise WeightsNotFoundError(f"{spec}: download failed ({e}). " + (registry.missing_weights(spec) or "")) from e
    except (RuntimeError, KeyError, EOFError, ValueError, AssertionError) as e:
        raise ModelSpecError(f"{spec}: {name_or_path} is not a CLIP checkpoint clip.load can read ({e})") from e
    return model


def is_torchscript_archive(path: Path | str) -> bool:
    """OpenAI's released .pt files are TorchScript archives (a zip holding ``constants.pkl`` and ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _load_checkpoint_file(path: Path, spec: str) -> CLIP:
    """A TorchScript archive goes through ``clip.load``; a state dict through the same ``build_model``.

    ``clip.load`` cannot read state dicts with current torch: after ``torch.jit.load`` fails it calls
    ``torch.load`` on the already-consumed file handle (openai/CLIP#396), so we do that step ourselves.
    Accepted state dicts: OpenAI's, ours, a ``{"state_dict": ...}`` training checkpoint, DDP's ``module.``.
    """
    _check_zip_crc(path, spec)
    if is_torchscript_archive(path):
        return _clip_load(str(path), spec)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelSpecError(f"{spec}: {path} is corrupt or not a checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or "text_projection" not in {k.removeprefix("module.") for k in sd}:
        raise ModelSpecError(f"{spec}: {path} holds no CLIP state dict (no text_projection weight)")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    try:
        model = build_model(sd)  # casts to fp16 (OpenAI's layout); reload so fp32 checkpoints stay exact
        model.float().load_state_dict(sd)
        return model
    except (RuntimeError, KeyError, AssertionError) as e:
        raise ModelSpecError(f"{spec}: {path} does not fit a CLIP architecture: {e}") from e


def _check_zip_crc(path: Path, spec: str) -> None:
    """Both .pt formats are zip files whose members carry a CRC-32 that torch.load and torch.jit.load
    never check: a damaged file would load silently with wrong weights. Check it (one read of the file)."""
    if not zipfile.is_zipfile(path):
        return  # legacy pickle or truncated: torch.load reports it
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:  # BadZipFile, zlib.error, EOFError, ...
        raise ModelSpecError(f"{spec}: {path} is corrupt ({type(e).__name__}: {e})") from e
    if bad is not None:
        raise ModelSpecError(f"{spec}: {path} is corrupt: its member {bad} fails the zip CRC check; "
                             "copy the file again")


def _load_openai(spec: str, name: str) -> CLIP:
    path, _, _ = openai_weights_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _clip_load(name, spec, download_root=str(path.parent))


PROVENANCE_FILE = "cliplab.json"  # inside a model folder; beside a file it is ``<file>.json``


def provenance_path(source: str | Path) -> Path:
    """Where the provenance of a checkpoint this suite trained lives: ``x.pt.json`` beside a file, or
    ``cliplab.json`` inside a saved model folder (so it travels with the folder)."""
    source = Path(source)
    return source / PROVENANCE_FILE if source.is_dir() else Path(str(source) + ".json")


def read_provenance(source: str | None) -> dict:
    """Provenance written next to checkpoints this suite trains ({} when there is none or it is unreadable)."""
    path = provenance_path(source) if source else None
    if path and path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def write_provenance(source: str | Path, meta: dict) -> None:
    storage.atomic_write_text(provenance_path(source), json.dumps(meta, indent=2, default=str))


def save_openai_state_dict(model: CLIP, path: Path | str, meta: dict | None = None, half: bool = True) -> Path:
    """Save in OpenAI's state-dict format (fp16 like their releases) so ``file:<path>`` loads it everywhere."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
          for k, v in model.state_dict().items()}
    path = storage.atomic_torch_save(sd, path)
    if meta is not None:
        write_provenance(path, meta)
    return path


def _save_openai_format(loaded0: LoadedModel, model: CLIP, stem: Path, meta: dict) -> str:
    """Fine-tuned weights of an openai:/file:/scratch: model: an fp32 OpenAI-format state dict."""
    path = save_openai_state_dict(model, Path(stem).with_suffix(".pt"), meta, half=False)
    return f"file:{path}"


def save_torchscript_archive(model: CLIP, path: Path | str) -> Path:
    """Save as a TorchScript archive like OpenAI's released ``.pt`` files (traced encode path)."""
    model = model.float().eval().cpu()
    res, ctx = model.visual.input_resolution, model.context_length
    image, text = torch.zeros(1, 3, res, res), torch.zeros(1, ctx, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (image, text), check_trace=False)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.jit.save(traced, str(tmp))
    tmp.replace(path)
    return path


registry.register(registry.ModelKind(
    "openai", "openai:<name> (OpenAI's checkpoints: " + ", ".join(OPENAI_MODELS) + ")", _parse_openai,
    missing=_openai_missing, url=lambda spec: openai_weights_path(spec.partition(":")[2])[2], load=_load_openai_spec,
    save=_save_openai_format))
registry.register(registry.ModelKind(
    "file", "file:<path> (an OpenAI-format state dict or TorchScript archive)", lambda body: config.expand(body),
    missing=_file_missing, load=_load_file_spec, save=_save_openai_format))
registry.register(registry.ModelKind(
    "scratch", "scratch:<config>[,key=value][@seed] (random weights; configs " + ", ".join(SCRATCH_CONFIGS) + ")",
    lambda body: parse_scratch(body), load=_load_scratch_spec, save=_save_openai_format))
