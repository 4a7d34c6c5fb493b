"""OpenCLIP models by spec, through ``open_clip.create_model_and_transforms`` (the library's own
factory, preprocessing and tokenizer):

    open_clip:ViT-B-32:laion2b_s34b_b79k     a pretrained tag (downloaded to $CLIPLAB_CACHE/open_clip)
    open_clip:ViT-B-32:/models/RemoteCLIP-ViT-B-32.pt   a local checkpoint file (e.g. a domain CLIP)
    open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K   a model published on the Hugging Face hub
    open_clip:local-dir:/models/my-clip      a folder in the hub layout (open_clip_config.json + weights),
                                             e.g. a downloaded hub snapshot or a model notebook 06 fine-tuned
    open_clip:ViT-B-32                       the architecture with random weights (tests, speed)

The model's own mean/std/interpolation/resize mode (``visual.preprocess_cfg``) and tokenizer are used.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import torch

from helpers.core import config, storage
from helpers.core.errors import ModelSpecError, WeightsNotFoundError
from helpers.models import registry


def cache_dir() -> Path:
    return config.cache_dir() / "open_clip"


def _is_path(text: str) -> bool:
    return "/" in text or text.endswith((".pt", ".pth", ".bin", ".safetensors")) or text.startswith("~")


def parse(body: str) -> tuple[str, str, str | None]:
    """``(kind, model or repo or folder, tag or path or None)`` with kind ``hub`` | ``dir`` | ``tag`` |
    ``file`` | ``random``."""
    import open_clip

    if body.startswith("local-dir:"):
        folder = body[len("local-dir:"):]
        if not folder:
            raise ModelSpecError(f"open_clip:{body}: use open_clip:local-dir:<folder holding open_clip_config.json>")
        return "dir", str(config.expand(folder)), None
    if body.startswith("hf-hub:"):
        repo = body[len("hf-hub:"):].strip("/")
        if repo.count("/") != 1:
            raise ModelSpecError(f"open_clip:{body}: use open_clip:hf-hub:<org>/<repo>")
        return "hub", repo, None
    name, _, weights = body.partition(":")
    models = open_clip.list_models()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=3)
        raise ModelSpecError(f"open_clip:{body}: {name!r} is not an open_clip model config"
                             + (f" (close: {', '.join(close)})" if close else f"; e.g. {', '.join(models[:6])}"))
    if not weights:
        return "random", name, None
    if _is_path(weights):
        return "file", name, weights
    tags = open_clip.list_pretrained_tags_by_model(name)
    if weights not in tags:
        raise ModelSpecError(f"open_clip:{body}: {name} has no pretrained tag {weights!r}; tags: {', '.join(tags) or 'none'}"
                             " (or give the path of a checkpoint file)")
    return "tag", name, weights


def _hub_file(repo: str, filenames: tuple[str, ...]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo, name, cache_dir=str(cache_dir()))
        if isinstance(found, str):
            return found
    return None


WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_FILE = "open_clip_config.json"


def download_url(spec: str) -> str | None:
    kind, name, weights = parse(spec.partition(":")[2])
    if kind == "hub":
        return f"https://huggingface.co/{name}"
    if kind == "tag":
        import open_clip

        cfg = open_clip.get_pretrained_cfg(name, weights)
        return cfg.get("url") or f"https://huggingface.co/{cfg.get('hf_hub', '').strip('/')}"
    return None


def missing_weights(spec: str) -> str | None:
    """Why ``spec`` cannot load offline: a local file that is not there, or weights not in the cache."""
    kind, name, weights = parse(spec.partition(":")[2])
    if kind == "file":
        path = config.expand(weights)
        return None if path.is_file() else (f"{spec}: checkpoint file {path} does not exist; place the "
                                            "open_clip checkpoint (.pt/.bin/.safetensors) there")
    if kind == "dir":
        return None if (Path(name) / CONFIG_FILE).is_file() else (
            f"{spec}: {name} holds no {CONFIG_FILE}; place an open_clip model folder there (the hub layout: "
            f"{CONFIG_FILE} with model_cfg and preprocess_cfg, and {WEIGHT_FILES[0]} or {WEIGHT_FILES[1]})")
    if kind == "random":
        return None
    if kind == "hub":
        repo = name
    else:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(name, weights)
        url = cfg.get("url")
        if url and (cache_dir() / Path(url).name).is_file():
            return None
        repo = cfg.get("hf_hub", "").strip("/")
    if repo and _hub_file(repo, WEIGHT_FILES):
        return None
    return (f"{spec} needs weights that are not in {cache_dir()}. Download them on a machine with network "
            f"({download_url(spec)}), then either copy the file and use open_clip:<model>:<path to file>, or "
            f"copy the hub cache folder into {cache_dir()}.")


def load(spec: str, device=None):
    """The model, with its own preprocessing and tokenizer, as a :class:`LoadedModel`."""
    import open_clip

    from helpers.models.clip_models import LoadedModel, declared_status, read_provenance

    kind, name, weights = parse(spec.partition(":")[2])
    if kind in ("file", "dir") and missing_weights(spec):
        raise WeightsNotFoundError(missing_weights(spec))
    model_name = _model_name(kind, name)
    pretrained = str(config.expand(weights)) if kind == "file" else weights
    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                            cache_dir=str(cache_dir()))
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=str(cache_dir()))
    except (OSError, ConnectionError, TimeoutError) as e:  # hub or URL unreachable, file missing
        raise WeightsNotFoundError(f"{spec}: {type(e).__name__}: {e}. {missing_weights(spec) or ''}") from e
    except (RuntimeError, KeyError, ValueError) as e:  # a failed download, or a file that does not fit
        why = missing_weights(spec) if kind in ("tag", "hub") else None
        if why:
            raise WeightsNotFoundError(f"{spec}: the download failed ({str(e)[:200]}). {why}") from e
        raise ModelSpecError(f"{spec}: {weights or name} does not load into open_clip {name}: {e}") from e
    if kind == "file":
        sha, source, status = storage.sha256_file(config.expand(weights)), str(config.expand(weights)), "checkpoint"
    else:
        sha, source = storage.sha256_state_dict(model.state_dict()), (name if kind == "dir" else None)
        status = {"random": "untrained", "dir": "checkpoint"}.get(kind, "pretrained")
    provenance = read_provenance(source)
    status = declared_status(status, provenance)
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", 224)
    preprocess = {"size": int(size if isinstance(size, int) else size[0]), "mean": tuple(cfg.get("mean", ())),
                  "std": tuple(cfg.get("std", ())), "interpolation": cfg.get("interpolation", "bicubic"),
                  "resize_mode": cfg.get("resize_mode", "shortest")}
    context = int(getattr(tokenizer, "context_length", getattr(model, "context_length", 77)))
    dev = torch.device(device) if device is not None else config.device()
    meta = {"library": "open_clip", "model": name, "weights": weights, **provenance}
    return LoadedModel(spec, model.float().eval().to(dev), sha, status, source, meta,
                       tokenizer=lambda texts: tokenizer(list(texts)),
                       preprocess=preprocess, embed=int(model.visual.output_dim), context=context)


def _model_name(kind: str, name: str) -> str:
    return {"hub": f"hf-hub:{name}", "dir": f"local-dir:{name}"}.get(kind, name)


def _model_config(kind: str, name: str) -> dict:
    """The architecture config of a model, as open_clip_config.json states it (from the library's own
    configs, the hub cache or the model folder)."""
    import open_clip

    if kind == "hub":
        path = _hub_file(name, (CONFIG_FILE,))
        if path is None:
            raise WeightsNotFoundError(f"open_clip:hf-hub:{name}: its {CONFIG_FILE} is not in {cache_dir()}")
        cfg = json.loads(Path(path).read_text())
        return cfg.get("model_cfg", cfg)
    cfg = open_clip.get_model_config(_model_name(kind, name))
    if cfg is None:
        raise ModelSpecError(f"open_clip model {name}: no architecture config found to save it with")
    return cfg


def save(loaded0, model, stem, meta: dict) -> str:
    """A fine-tuned open_clip model as a folder in the hub layout (``open_clip_config.json`` with the
    architecture and preprocessing, ``open_clip_model.safetensors``, the tokenizer's files when it has
    any), which ``open_clip:local-dir:<folder>`` and open_clip's own ``create_model`` read back."""
    import open_clip
    from safetensors.torch import save_file

    from helpers.models.clip_models import write_provenance

    kind, name, _ = parse(loaded0.spec.partition(":")[2])
    cfg = {"model_cfg": _model_config(kind, name), "preprocess_cfg": dict(getattr(model.visual, "preprocess_cfg", {}))}
    tokenizer = open_clip.get_tokenizer(_model_name(kind, name), cache_dir=str(cache_dir()))
    folder = Path(stem)
    with storage.atomic_folder(folder) as tmp:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()},
                  str(tmp / WEIGHT_FILES[0]))
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
        if hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(tmp))
        write_provenance(tmp, meta)
    return f"open_clip:local-dir:{folder}"


registry.register(registry.ModelKind(
    "open_clip", "open_clip:<model>:<pretrained tag or checkpoint path> | open_clip:hf-hub:<org>/<repo> | "
    "open_clip:local-dir:<folder>", parse, missing=missing_weights, url=download_url, load=load, save=save))
