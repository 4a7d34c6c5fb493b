"""Where the parts of a CLIP-like model live, whatever library built it, so fine-tuning can freeze
and train them by role: the image tower's stem and blocks, its head (final norm, pooling, projection),
the text tower and its head, the temperature.

Known layouts: OpenAI's ``clip.model.CLIP`` and open_clip's ``CLIP`` (same attribute names; ViT or
ModifiedResNet image towers) and transformers' CLIP-family models wrapped by ``hf_models.HFCLIP``.
Anything else is refused with the layouts it would need, never half-frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helpers.core.errors import ModelSpecError

Part = torch.nn.Module | torch.nn.Parameter


@dataclass
class Parts:
    stem: list[Part]  # what comes before the first block of the image tower
    blocks: list[torch.nn.Module]  # image-tower blocks (ViT) or stages (ResNet), in order
    image_head: list[Part]  # final norm / attention pooling / projection of the image tower
    text: list[Part]  # the whole text tower, projection included
    text_head: list[Part]  # its last block, final norm and projection
    logit_scale: torch.nn.Parameter


def _is_resnet(visual) -> bool:
    return hasattr(visual, "attnpool") and hasattr(visual, "layer4")


def _openai_layout(model) -> Parts:
    """OpenAI's CLIP and open_clip's CLIP (a text transformer directly on the model)."""
    v = model.visual
    if _is_resnet(v):
        stem = [getattr(v, n) for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
        blocks, image_head = [v.layer1, v.layer2, v.layer3, v.layer4], [v.attnpool]
    else:
        stem = [v.conv1, v.ln_pre, v.class_embedding, v.positional_embedding]
        blocks, image_head = list(v.transformer.resblocks), [v.ln_post, v.proj]
    projection = model.text_projection
    text = [model.transformer, model.token_embedding, model.ln_final, model.positional_embedding, projection]
    return Parts(stem, blocks, [p for p in image_head if p is not None], text,
                 [model.transformer.resblocks[-1], model.ln_final, projection], model.logit_scale)


def _hf_layout(wrapper) -> Parts:
    """transformers' CLIPModel (and its relatives with the same attribute names) inside ``HFCLIP``."""
    m = wrapper.model
    vm, tm = m.vision_model, m.text_model
    return Parts([vm.embeddings, vm.pre_layrnorm], list(vm.encoder.layers), [vm.post_layernorm, m.visual_projection],
                 [tm, m.text_projection], [tm.encoder.layers[-1], tm.final_layer_norm, m.text_projection],
                 m.logit_scale)


def parts(model: torch.nn.Module) -> Parts:
    """The :class:`Parts` of ``model`` or a ModelSpecError naming the layouts that are understood."""
    try:
        if hasattr(model, "model") and hasattr(model.model, "vision_model"):
            return _hf_layout(model)
        if hasattr(model, "visual") and hasattr(model, "transformer") and hasattr(model, "token_embedding"):
            return _openai_layout(model)
    except AttributeError as e:
        raise ModelSpecError(f"{type(model).__name__}: its layout differs from the CLIP layouts fine-tuning "
                             f"knows ({e})") from e
    raise ModelSpecError(f"{type(model).__name__}: fine-tuning knows OpenAI/open_clip CLIP (text transformer on "
                         "the model) and transformers CLIP-family layouts; this model has neither (e.g. an "
                         "open_clip model with a Hugging Face text tower)")


def set_trainable(items, flag: bool) -> None:
    for item in items:
        item.requires_grad_(flag)
