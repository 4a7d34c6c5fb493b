"""Hugging Face ``transformers`` CLIP-family models by spec: ``hf:<repo id>`` (from the hub cache in
$CLIPLAB_CACHE/hf, downloaded when there is network) or ``hf:<local save_pretrained folder>``.

The model's own tokenizer and image-processor settings (size, crop, mean/std, resampling) are used;
images are preprocessed by the lab's batched pipeline with exactly those settings, and the model is
wrapped so that it answers ``encode_image`` / ``encode_text`` / ``logit_scale`` like OpenAI's CLIP.
"""

from __future__ import annotations

from pathlib import Path

import torch

from helpers.core import config, storage
from helpers.core.errors import ModelSpecError, WeightsNotFoundError
from helpers.models import registry

# PIL resampling codes a Hugging Face image processor stores -> the lab's interpolation names
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def cache_dir() -> Path:
    return config.cache_dir() / "hf"


def _is_local(body: str) -> bool:
    return body.startswith(("/", ".", "~", "$")) or config.expand(body).exists()


def parse(body: str) -> str:
    if not body or (not _is_local(body) and body.count("/") != 1):
        raise ModelSpecError(f"hf:{body}: use hf:<org>/<repo> (a hub model id) or hf:<path of a save_pretrained folder>")
    return body


class HFCLIP(torch.nn.Module):
    """A transformers CLIP-family model with OpenAI CLIP's interface. ``encode_text`` takes what
    :func:`tokenizer` returns: input ids and attention mask stacked as ``[batch, 2, length]`` (one
    tensor, so it moves to a device like OpenAI's token tensor)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.model.logit_scale

    @property
    def visual(self) -> torch.nn.Module:
        return self.model.vision_model

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=images)
        return out if torch.is_tensor(out) else out.pooler_output  # transformers 5 returns the output object

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model.get_text_features(input_ids=tokens[:, 0], attention_mask=tokens[:, 1])
        return out if torch.is_tensor(out) else out.pooler_output


def _source(body: str) -> str:
    return str(config.expand(body).resolve()) if _is_local(body) else body


def missing_weights(spec: str) -> str | None:
    body = parse(spec.partition(":")[2])
    if _is_local(body):
        path = config.expand(body)
        if not (path / "config.json").is_file():
            return (f"{spec}: {path} is not a save_pretrained folder (no config.json); save the model, "
                    "tokenizer and image processor there with save_pretrained")
        return None
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(body, "config.json", cache_dir=str(cache_dir())), str):
        return None
    return (f"{spec} is not in the hub cache {cache_dir()}. On a machine with network, save it with "
            f"transformers (AutoModel/AutoProcessor.from_pretrained('{body}').save_pretrained(<folder>)), copy "
            "the folder here and use hf:<folder>, or copy the hub cache into that folder.")


def load(spec: str, device=None):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from helpers.models.clip_models import LoadedModel, declared_status, read_provenance

    body = parse(spec.partition(":")[2])
    why = missing_weights(spec) if _is_local(body) else None
    if why:
        raise WeightsNotFoundError(why)
    source = _source(body)
    kwargs = {} if _is_local(body) else {"cache_dir": str(cache_dir())}
    try:
        model = AutoModel.from_pretrained(source, **kwargs)
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        processor = AutoImageProcessor.from_pretrained(source, **kwargs)
    except OSError as e:  # not cached and no network, or files missing from the folder
        raise WeightsNotFoundError(f"{spec}: {e}. {missing_weights(spec) or ''}") from e
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ModelSpecError(f"{spec}: {type(model).__name__} is not a CLIP-family model "
                             "(no get_image_features / get_text_features)")
    context = int(model.config.text_config.max_position_embeddings)

    def tokenizer(texts: list[str]) -> torch.Tensor:
        enc = tok(list(texts), padding="max_length", truncation=True, max_length=context, return_tensors="pt")
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)

    size = processor.size.get("shortest_edge") or processor.size.get("height")
    crop = (getattr(processor, "crop_size", None) or {}).get("height") if getattr(processor, "do_center_crop", True) else None
    preprocess = {"size": int(size), "crop": int(crop) if crop else None, "mean": tuple(processor.image_mean),
                  "std": tuple(processor.image_std), "interpolation": RESAMPLE.get(int(processor.resample), "bicubic"),
                  "resize_mode": "shortest" if processor.size.get("shortest_edge") else "squash"}
    wrapped = HFCLIP(model).float().eval()
    sha = storage.sha256_state_dict(model.state_dict())
    provenance = read_provenance(source) if _is_local(body) else {}
    meta = {"library": "transformers", "class": type(model).__name__, "source": source, **provenance}
    dev = torch.device(device) if device is not None else config.device()
    status = declared_status("checkpoint" if _is_local(body) else "pretrained", provenance)
    return LoadedModel(spec, wrapped.to(dev), sha, status, source if _is_local(body) else None, meta,
                       tokenizer=tokenizer, preprocess=preprocess, embed=int(model.config.projection_dim),
                       context=context)


def save(loaded0, model: HFCLIP, stem, meta: dict) -> str:
    """A fine-tuned transformers model as a ``save_pretrained`` folder with the start model's tokenizer
    and image processor, which ``hf:<folder>`` and transformers' own ``from_pretrained`` read back."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from helpers.models.clip_models import write_provenance

    source = loaded0.meta["source"]
    kwargs = {} if _is_local(source) else {"cache_dir": str(cache_dir())}
    folder = Path(stem)
    with storage.atomic_folder(folder) as tmp:
        model.model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source, **kwargs).save_pretrained(tmp)
        AutoImageProcessor.from_pretrained(source, **kwargs).save_pretrained(tmp)
        write_provenance(tmp, meta)
    return f"hf:{folder}"


registry.register(registry.ModelKind(
    "hf", "hf:<org>/<repo> | hf:<save_pretrained folder> (transformers CLIP-family models)", parse,
    missing=missing_weights, url=lambda spec: None if _is_local(spec.partition(":")[2])
    else f"https://huggingface.co/{spec.partition(':')[2]}", load=load, save=save))
