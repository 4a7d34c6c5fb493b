"""Fine-tuning CLIP on a classification dataset: objectives, freezing strategies, text augmentation,
WiSE-FT weight interpolation, on any CLIP layout :mod:`helpers.models.towers` knows.

Objectives (each a value of ``objective``):
- ``ML``: the image encoder + a linear head, cross-entropy (head optionally initialised from the
  zero-shot text classifier);
- ``CS``: fine-tune like you pretrain — logit scale x cosine between image embeddings and the text
  embeddings of the class prompts, cross-entropy over classes; each step draws a random template and
  class-name synonym per class (text augmentation), and the text encoder trains unless frozen;
- ``FLYP``: the contrastive loss of CLIP over the image–prompt pairs of the batch (one random prompt per
  image), both directions, with images of the same class counted as positives of each other's prompts;
- ``LP-FT``: a linear probe on frozen features first, then ML fine-tuning from it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from helpers.core.compiled import weights_version
from helpers.data import prompts
from helpers.eval import zeroshot
from helpers.models import towers

OBJECTIVES = ("ML", "CS", "FLYP", "LP-FT")


# ------------------------------------------------------------------------------------ freezing
def apply_freeze(model: torch.nn.Module, strategy: str = "unfreeze", freeze_text: bool = False) -> dict:
    """Set ``requires_grad`` for a strategy: ``unfreeze`` | ``vision-freeze N`` | ``mix-freeze``, on any
    CLIP layout :func:`towers.parts` knows (OpenAI, open_clip, transformers).

    ``vision-freeze N`` freezes the stem and the first N blocks (ViT) or stages (ResNet) of the image
    tower. ``mix-freeze`` freezes the backbones of both towers and trains their projections, their last
    block, the final norms and the logit scale. ``freeze_text`` freezes the whole text tower.
    Returns {"strategy", "trainable", "total"}.
    """
    p = towers.parts(model)
    model.requires_grad_(True)
    if strategy.startswith("vision-freeze"):
        try:
            n = int(strategy.split()[1])
        except (IndexError, ValueError) as e:
            raise ValueError(f"freeze strategy {strategy!r}: use 'vision-freeze N' with a block count") from e
        if not 0 <= n <= len(p.blocks):
            raise ValueError(f"vision-freeze {n}: the image tower has {len(p.blocks)} blocks after its stem")
        towers.set_trainable([*p.stem, *p.blocks[:n]], False)
    elif strategy == "mix-freeze":
        model.requires_grad_(False)
        towers.set_trainable([p.blocks[-1], *p.image_head, *p.text_head, p.logit_scale], True)
    elif strategy != "unfreeze":
        raise ValueError(f"freeze strategy {strategy!r}: use unfreeze, 'vision-freeze N' or mix-freeze")
    if freeze_text:
        towers.set_trainable(p.text, False)
    return {"strategy": strategy, "freeze_text": freeze_text,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------------------------- text side
@dataclass
class PromptSampler:
    """Random prompt per class (or per image): a template from ``templates`` and a synonym of the class
    name (literature names list synonyms with 'or'). Seeded, so training runs repeat exactly."""

    classnames: list[str]
    templates: list[str]
    seed: int = 0

    def __post_init__(self):
        self.templates = prompts.templates(self.templates)
        self.synonyms = [prompts.synonyms(c) for c in self.classnames]
        self.rng = random.Random(self.seed)

    def for_classes(self, classes) -> list[str]:
        return [self.rng.choice(self.templates).format(self.rng.choice(self.synonyms[int(c)])) for c in classes]


class FineTuner(torch.nn.Module):
    """CLIP with one training objective. ``forward(images, targets)`` returns the loss, so one forward
    call carries the whole step and DistributedDataParallel can wrap it; ``classify(images)`` gives class
    logits for evaluation (the linear head for ML/LP-FT, prompt matching otherwise).

    ``targets`` are class indices, or caption strings for the ``captions`` objective (CLIP's contrastive
    loss over image-caption pairs, for retrieval fine-tuning; ``groups`` gives each pair's image id).
    """

    def __init__(self, clip_model: torch.nn.Module, objective: str, classnames: list[str] | None = None,
                 templates="centered-satellite", seed: int = 0, head_init: torch.Tensor | None = None,
                 head_bias: torch.Tensor | None = None, eval_templates=None, tokenize=None, embed_dim: int | None = None):
        """``tokenize``: the model's own tokenizer (``LoadedModel.tokenize``; default OpenAI's BPE at the
        model's context length); ``embed_dim``: its joint embedding size (default read off OpenAI's layout)."""
        super().__init__()
        if objective not in OBJECTIVES + ("captions",):
            raise ValueError(f"objective {objective!r}: use one of {OBJECTIVES + ('captions',)}")
        self.clip, self.objective, self.tokenize = clip_model, objective, tokenize
        # training samples prompts from ``templates``; validation, model selection and the reported test
        # number use ``eval_templates`` (default: the same), the set the record states
        self.classnames, self.templates = list(classnames or []), templates
        self.eval_templates = templates if eval_templates is None else eval_templates
        self.sampler = PromptSampler(self.classnames, templates, seed) if classnames else None
        self.head = None
        if objective in ("ML", "LP-FT"):
            self.head = torch.nn.Linear(embed_dim or clip_model.text_projection.shape[1], len(self.classnames))
            with torch.no_grad():
                if head_init is not None:
                    self.head.weight.copy_(head_init.float())
                    self.head.bias.copy_(head_bias.float() if head_bias is not None else 0.0)
            # the text tower and the temperature take no part: frozen, so DDP sees no unused parameters
            parts = towers.parts(clip_model)
            towers.set_trainable([*parts.text, parts.logit_scale], False)
        self._classifier: torch.Tensor | None = None
        self._classifier_weights: tuple | None = None  # weights_version() the classifier was built from

    def get_extra_state(self) -> dict:
        """The prompt sampler's random state travels with the weights (training checkpoints), so a
        resumed run draws the same prompts as an uninterrupted one."""
        return {"sampler": self.sampler.rng.getstate() if self.sampler else None}

    def set_extra_state(self, state: dict) -> None:
        if self.sampler and state and state.get("sampler") is not None:
            self.sampler.rng.setstate(_as_tuple(state["sampler"]))

    def scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().clamp(max=100)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def forward(self, images: torch.Tensor, targets, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Targets arrive on the host and are copied without blocking: a blocking copy would wait for
        the device to finish the queued image tower, a round trip per step."""
        img = self.image_embedding(images)
        if self.head is not None:
            return F.cross_entropy(self.head(img), _on(img.device, targets))
        if self.objective == "CS":  # a fresh random prompt per class, every step
            txt = encode_prompts(self.clip, self.sampler.for_classes(range(len(self.classnames))), self.tokenize)
            return F.cross_entropy(self.scale() * img @ txt.T, _on(img.device, targets))
        if self.objective == "FLYP":  # one random prompt per image; same-class prompts are positives too
            labels = torch.as_tensor(targets)  # on the host: the prompt sampler reads them
            txt = encode_prompts(self.clip, self.sampler.for_classes(labels.tolist()), self.tokenize)
            same = _on(img.device, (labels[:, None] == labels[None, :]).float())
        else:  # captions: the pairs of one image (``groups``: image ids) are each other's positives
            txt = encode_prompts(self.clip, list(targets), self.tokenize)
            g = torch.arange(len(txt)) if groups is None else torch.as_tensor(groups)
            same = _on(img.device, (g[:, None] == g[None, :]).float())
        logits = self.scale() * img @ txt.T
        target = same / same.sum(dim=1, keepdim=True)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T)) / 2

    def prompt_classifier(self) -> torch.Tensor:
        """The text-side classifier (every evaluation template, averaged) of the *current* weights.

        It is cached for the batches of one evaluation and rebuilt whenever any weight changed since
        (an optimiser step, ``load_state_dict`` of the best epoch, ...): a stale classifier would pair
        one epoch's image tower with another epoch's text tower.
        """
        version = weights_version(self.clip)
        if self._classifier is None or self._classifier_weights != version:
            self._classifier = prompt_classifier(self.clip, self.classnames, self.eval_templates, self.tokenize)
            self._classifier_weights = version
        return self._classifier

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits, computed like the zero-shot path of the saved model: the tower runs under
        autocast, the cosine and the head in fp32 (bf16 logits would round close classes into ties)."""
        feats = self.clip.encode_image(images).float()
        with torch.autocast(feats.device.type, enabled=False):
            img = F.normalize(feats, dim=-1)
            if self.head is not None:
                return self.head(img)
            classifier = self.prompt_classifier().to(img.device, torch.float32)
            return self.scale().float() * img @ classifier.T


def _on(device: torch.device, x) -> torch.Tensor:
    """``x`` as a tensor on ``device``, copied from the host without blocking it."""
    return torch.as_tensor(x).to(device, non_blocking=True)


def _as_tuple(x):
    """random.Random states come back from a checkpoint with lists where tuples were."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def encode_prompts(model: torch.nn.Module, texts: list[str], tokenize=None) -> torch.Tensor:
    """Normalised text embeddings; ``tokenize``: the model's own tokenizer (default: OpenAI's BPE)."""
    if tokenize is None:
        import clip

        tokens = clip.tokenize(texts, context_length=model.context_length, truncate=True)
    else:
        tokens = tokenize(texts)
    return F.normalize(model.encode_text(tokens.to(model.logit_scale.device, non_blocking=True)), dim=-1)


@torch.no_grad()
def prompt_classifier(model: torch.nn.Module, classnames: list[str], templates, tokenize=None) -> torch.Tensor:
    """The zero-shot classifier of ``model`` in eval mode, without touching the feature cache (the
    weights change every epoch during training)."""
    was_training = model.training
    model.eval()
    tmpl = prompts.templates(templates)
    emb = encode_prompts(model, prompts.format_prompts(classnames, tmpl), tokenize).float()
    emb = F.normalize(emb.view(len(classnames), len(tmpl), -1).mean(1), dim=-1)
    model.train(was_training)
    return emb


# ------------------------------------------------------------------------------------- WiSE-FT
def interpolate(zero_shot: dict, fine_tuned: dict, alpha: float) -> dict:
    """WiSE-FT: theta = (1 - alpha) * theta_zero-shot + alpha * theta_fine-tuned (float tensors only)."""
    if zero_shot.keys() != fine_tuned.keys():
        missing = sorted(set(zero_shot) ^ set(fine_tuned))[:5]
        raise ValueError(f"state dicts differ in keys (e.g. {missing}); WiSE-FT needs one architecture")
    out = {}
    for k, a in zero_shot.items():
        b = fine_tuned[k]
        out[k] = torch.lerp(a.float(), b.float(), alpha).to(a.dtype) if a.is_floating_point() else b.clone()
    return out


def logits_with(model: torch.nn.Module, image_features: torch.Tensor, classnames: list[str], templates,
                tokenize=None) -> np.ndarray:
    """scale x cos logits of precomputed image features against ``model``'s prompt classifier."""
    classifier = prompt_classifier(model, classnames, templates, tokenize)
    return zeroshot.logits(image_features, classifier, float(model.logit_scale.exp().clamp(max=100))).numpy()
