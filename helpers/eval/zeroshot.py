"""Zero-shot heads: a text classifier from class names x templates; logits = scale x cosine."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers.data import prompts
from helpers.eval import features


def text_classifier(loaded, classnames: list[str], templates) -> torch.Tensor:
    """[C, D] unit-norm class embeddings: mean of the unit-norm embeddings of each class's prompts."""
    tmpl = prompts.templates(templates)
    texts = prompts.format_prompts(classnames, tmpl)
    emb = F.normalize(features.text_features(loaded, texts), dim=-1)
    emb = emb.view(len(classnames), len(tmpl), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def logit_scale(loaded) -> float:
    """The model's learned temperature (CLIP clamps it at 100)."""
    return float(loaded.model.logit_scale.detach().exp().clamp(max=100.0))


def logits(image_features: torch.Tensor, classifier: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """scale x cosine(image, class) as float32 [N, C]."""
    return scale * F.normalize(image_features.float(), dim=-1) @ classifier.float().T


def evaluate(loaded, image_features: torch.Tensor, labels, classnames: list[str], templates) -> dict:
    """Zero-shot logits and metrics of ``image_features`` against the prompts of ``classnames``."""
    from helpers.eval import metrics

    classifier = text_classifier(loaded, classnames, templates)
    out = logits(image_features, classifier, logit_scale(loaded))
    return {"logits": out, "metrics": metrics.classification_metrics(out, labels, len(classnames)),
            "prompts": prompts.format_prompts(classnames, prompts.templates(templates))}
