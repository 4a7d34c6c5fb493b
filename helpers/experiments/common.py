"""What every experiment shares: the :class:`Outcome` a notebook gets back, figure saving (stamped
when the weights are untrained), encoding through the feature cache, and training settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from helpers import models
from helpers.core import config
from helpers.data.samples import Samples
from helpers.eval import features
from helpers.profiles import Profile
from helpers.results import plots
from helpers.train import loop


@dataclass
class Outcome:
    """What an experiment hands back to its notebook: records, a table to show, figures by name."""

    records: list[dict] = field(default_factory=list)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    figures: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def slug(*parts: str) -> str:
    return "-".join("".join(c if c.isalnum() else "_" for c in str(p)).strip("_") for p in parts if p)


def save_stamped(fig, P: Profile, name: str, spec: str, untrained: bool) -> str:
    if untrained:
        plots.mark_untrained(fig, spec)
    path = plots.save_figure(fig, name, folder=config.pics_dir(P.name))
    plots.plt.close(fig)  # the notebook shows it with display(); keeps headless runs from piling figures up
    return str(path.relative_to(config.output_root())) if path.is_relative_to(config.output_root()) else str(path)


def encode(P: Profile, loaded: models.LoadedModel, samples: Samples) -> features.Features:
    """Image features of ``samples`` through the shared cache, with the profile's batch size."""
    return features.image_features(loaded, samples, batch_size=int(P.get("batch_size", 64)))



def train_config(settings: dict, seed: int) -> loop.TrainConfig:
    keys = loop.TrainConfig.__dataclass_fields__
    unknown = sorted(set(settings) - set(keys) - {"batch_size", "label_smoothing"})
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; known: {sorted(keys)} + batch_size, label_smoothing")
    return loop.TrainConfig(**{k: v for k, v in settings.items() if k in keys}, seed=seed)
