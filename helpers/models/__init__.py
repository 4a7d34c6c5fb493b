"""Layer 2, models by spec: one grammar for every kind (registry), CLIP checkpoints (clip_models:
``openai:``, ``file:``, ``scratch:``; open_clip_models, hf_models), ImageNet backbones (backbones:
``torchvision:``, ``timm:``), where fine-tuning finds each model's parts (towers),
super-resolution networks (upsamplers). The names below are the ones the rest of the lab uses."""

from helpers.core.errors import ModelSpecError, WeightsNotFoundError
from helpers.models import backbones as _torchvision_kind  # noqa: F401 (registers torchvision:, timm:)
from helpers.models import hf_models as _hf_kind  # noqa: F401 (registers hf:)
from helpers.models import open_clip_models as _open_clip_kind  # noqa: F401 (registers open_clip:)
from helpers.models.clip_models import (
    SCRATCH_CONFIGS,
    LoadedModel,
    is_torchscript_archive,
    load_model,
    openai_weights_path,
    parse_scratch,
    save_openai_state_dict,
    save_torchscript_archive,
)
from helpers.models.registry import KINDS, download_url, fine_tunable, missing_weights, parse, save_finetuned

__all__ = ["KINDS", "fine_tunable", "parse", "save_finetuned", "LoadedModel", "ModelSpecError", "SCRATCH_CONFIGS", "WeightsNotFoundError", "download_url",
           "is_torchscript_archive", "load_model", "missing_weights", "openai_weights_path", "parse_scratch",
           "save_openai_state_dict", "save_torchscript_archive"]
