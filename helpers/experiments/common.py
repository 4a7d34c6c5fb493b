"""What every experiment shares: the :class:`Outcome` a notebook gets back, figure saving (stamped
when the weights are untrained), encoding through the feature cache, and training settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from helpers import models
from helpers.core import config, storage
from helpers.data.samples import Samples
from helpers.eval import features
from helpers.profiles import Profile
from helpers.results import plots, records
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
    return _relative(path)


def figure_ref(P: Profile, name: str) -> str:
    """What :func:`save_stamped` will return for ``name``: records written before their figure is drawn
    (each the moment it exists) already name the file."""
    return _relative(config.pics_dir(P.name) / f"{name}.png")


def _relative(path) -> str:
    return str(path.relative_to(config.output_root())) if path.is_relative_to(config.output_root()) else str(path)


def encode(P: Profile, loaded: models.LoadedModel, samples: Samples) -> features.Features:
    """Image features of ``samples`` through the shared cache, with the profile's batch size and
    ``encode.compile``."""
    return features.image_features(loaded, samples, batch_size=int(P.get("batch_size", 64)),
                                   compile=P.config.encode.compile if P.config else None)



def train_config(settings: dict, seed: int) -> loop.TrainConfig:
    keys = loop.TrainConfig.__dataclass_fields__
    unknown = sorted(set(settings) - set(keys) - {"batch_size", "label_smoothing"})
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; known: {sorted(keys)} + batch_size, label_smoothing")
    return loop.TrainConfig(**{k: v for k, v in settings.items() if k in keys}, seed=seed)


# ------------------------------------------------------------------------------------- resume
def fingerprint(**inputs) -> str:
    """Everything a result depends on (settings, seed, dataset fingerprints, weights), hashed: stored as
    ``protocol.resume`` so a rerun can tell a result it already has from one measured differently."""
    return storage.sha256_json(inputs)[:20]


def recorded(P: Profile, experiment: str, resume: str, variants) -> dict[str, dict] | None:
    """The newest record of each of ``variants`` written for this exact protocol (``protocol.resume``),
    or None when any is missing: a result is skipped only when all its records exist."""
    found: dict[str, dict] = {}
    folder = config.results_dir(P.name)
    if not (folder / f"{experiment}.jsonl").is_file():
        return None
    for r in records.read_records(folder, pattern=f"{experiment}.jsonl", skipped=[]):
        if r.get("experiment") == experiment and (r.get("protocol") or {}).get("resume") == resume \
                and r.get("variant") in variants and r["created"] >= found.get(r["variant"], {}).get("created", ""):
            found[r["variant"]] = r
    return found if set(variants) <= set(found) else None


def say_skipped(experiment: str, what: str, found: dict[str, dict]) -> None:
    """The one line a skipped result prints."""
    when = max(r["created"] for r in found.values())
    print(f"{experiment}: {what} already recorded for this protocol ({len(found)} records, {when}); skipped "
          f"(delete its lines from {experiment}.jsonl to measure it again)")
