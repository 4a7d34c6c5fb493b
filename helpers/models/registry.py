"""The one grammar of model specs: ``<kind>:<body>``. Each kind registers here, once, how its body is
parsed, where its weights come from, why they may be missing offline, and how it loads.

    openai:ViT-B/32              OpenAI's checkpoints via clip.load (weights in $CLIPLAB_CACHE/clip)
    file:/path/model.pt          a local OpenAI-format state dict or TorchScript archive
    scratch:tiny-vit[,k=v][@seed]  an architecture with random weights (tests, speed)
    torchvision:resnet50[@DEFAULT]  an ImageNet backbone (notebooks 03 and 05)
    open_clip:<model>:<tag|path> | open_clip:hf-hub:<org>/<repo> | open_clip:local-dir:<folder>
    hf:<org>/<repo> | hf:<save_pretrained folder>   transformers CLIP-family models
    timm:<name>[@pretrained|@<path>]                ImageNet backbones from timm
    06:<objective>[:<spec>]      the checkpoint notebook 06 recorded in this profile

This module imports no model code: the kinds register themselves when ``helpers.models`` is imported,
so no module of the package needs to import another kind's module (no cycles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from helpers.core.errors import ModelSpecError


@dataclass(frozen=True)
class ModelKind:
    name: str
    grammar: str  # shown in errors and --show-config
    parse: Callable[[str], object]  # the body -> its parsed form; raises ModelSpecError
    missing: Callable[[str], str | None] = lambda spec: None  # why it cannot load offline, with the fix
    url: Callable[[str], str | None] = lambda spec: None  # where its weights download from
    load: Callable | None = None  # (spec, device) -> loaded model; None: resolved elsewhere (06:)
    # (loaded start model, fine-tuned module, path without suffix, provenance) -> spec of the saved weights,
    # in the kind's own library format; None: this kind is not fine-tuned (e.g. ImageNet backbones)
    save: Callable | None = None


KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    KINDS[kind.name] = kind
    return kind


def split(spec: str) -> tuple[ModelKind, str]:
    """(kind, body) of a spec, or a ModelSpecError listing the grammar of every kind."""
    name, sep, body = str(spec).partition(":")
    if not sep or not body or name not in KINDS:
        grammar = "; ".join(k.grammar for k in KINDS.values())
        what = f"unknown kind {name!r}" if sep and name not in KINDS else "no name after the kind" if sep else \
            "no kind"
        raise ModelSpecError(f"model spec {spec!r}: {what}; use <kind>:<name>, one of: {grammar}")
    return KINDS[name], body


def parse(spec: str) -> object:
    """Check a spec's grammar without loading anything (configuration validation uses this)."""
    kind, body = split(spec)
    return kind.parse(body)


def missing_weights(spec: str) -> str | None:
    """Why ``spec`` cannot be loaded without network (None when its weights are on disk or not needed)."""
    kind, _ = split(spec)
    return kind.missing(spec)


def download_url(spec: str) -> str | None:
    """Where a spec's weights are downloaded from (None for local or random weights)."""
    kind, _ = split(spec)
    return kind.url(spec)


def save_finetuned(loaded0, model, stem, meta: dict) -> str:
    """Save fine-tuned weights of a model loaded from ``loaded0.spec`` in its own library's format, with
    the provenance beside them; returns the spec that reads them back."""
    kind, _ = split(loaded0.spec)
    if kind.save is None:
        raise ModelSpecError(f"{loaded0.spec}: {kind.name}: models are not fine-tuned by this suite")
    return kind.save(loaded0, model, stem, meta)


def fine_tunable() -> list[str]:
    """The kinds whose models notebook 06 can fine-tune and save."""
    return [name for name, kind in KINDS.items() if kind.save is not None]


def _parse_checkpoint_reference(body: str):
    objective, _, start = body.partition(":")
    if objective not in ("ML", "CS", "FLYP", "LP-FT"):
        raise ModelSpecError(f"06:{body}: the objective must be one of ML, CS, FLYP, LP-FT")
    if start:
        parse(start)
    return objective, start or None


register(ModelKind("06", "06:<objective>[:<model spec>] (notebook 06's recorded checkpoint)",
                   _parse_checkpoint_reference))
