"""Dataset cards: a dataset named once (kind, root, splits, class names, templates) and used by every
notebook. A card is a YAML file (``datasets/<name>.yaml`` ships EuroSAT and the synthetic set; users
write their own anywhere) or a mapping inside a profile; a bare folder path is a ``folder`` card.

    name: birds                   # how records, figures and the report name it (default: the folder's)
    kind: folder                  # folder | csv-splits | eurosat | captions | synthetic
    root: ~/data/birds-525        # the folder (detected layout: split folders, class folders, split CSVs)
    templates: photo              # a template set or a list ('a photo of a {}, a type of bird.')
    classnames: {ABBOTTS BABBLER: Abbott's babbler}   # map, list, or a file (.txt: one per line)

Everything the loader decides (layout, splits, readable names, files skipped) is stated in the
:class:`Samples` card of each split, so a record says how its images were chosen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from helpers.core import config
from helpers.core.errors import DatasetError

CARDS_DIR = config.PROJECT_ROOT / "datasets"
SPLITS = ("train", "val", "test")
Fraction = Annotated[float, Field(ge=0, lt=1)]


class DatasetCard(BaseModel):
    """One dataset: every key a card may hold, with its meaning (``--show-config`` prints them)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    name: str | None = Field(None, description="name in records, figures and the report (default: the folder's)")
    kind: Literal["folder", "csv-splits", "eurosat", "captions", "synthetic", "torchvision"] = Field(
        "folder", description="how the files are read")
    torchvision: str | None = Field(None, description="torchvision: the dataset class, e.g. Flowers102, DTD, "
                                                      "OxfordIIITPet, Food101, FGVCAircraft, StanfordCars, Country211")
    root: str | None = Field(None, description="the dataset folder (or captions file); ~ and $VARS expand; "
                                               "relative paths are relative to the card file")
    splits: dict[Literal["train", "val", "test"], str] | None = Field(
        None, description="sub-folder (or CSV file) of each split; detected when omitted: train, "
                          "val|valid|validation|dev, test|eval (any case)")
    val_fraction: Fraction = Field(0.1, description="share of train held out for validation when the layout has no val")
    test_fraction: Annotated[float, Field(ge=0, le=1)] = Field(
        0.2, description="share held out for test when the layout has no test (1: every image is test, for zero-shot)")
    max_per_class: Annotated[int, Field(gt=0)] | None = Field(
        None, description="keep at most this many images per class and split (a quick look; stated in records)")
    classnames: dict[str, str] | list[str] | str | None = Field(
        None, description="readable class names: a map folder->name, a list in class order, or a file "
                          "(.txt one per line, .json/.yaml map or list); default: derived from the folder names")
    templates: str | list[str] | None = Field(None, description="prompt templates: a set name or a list; default: photo")
    train_templates: str | list[str] | None = Field(None, description="templates CLIP fine-tuning samples from "
                                                                      "(default: templates)")
    template_sets: list[str] | None = Field(None, description="template sets prompt validation (02) compares")
    images: str | None = Field(None, description="captions: the folder holding the images (default: beside the file, "
                                                 "or its images/ sub-folder)")
    recursive: bool = Field(False, description="read images in sub-folders of a class folder as that class")
    download: bool = Field(False, description="eurosat: download with torchvision when the folder is absent")
    seed: Annotated[int, Field(ge=0)] = Field(0, description="seed of the splits (and of probes and training)")
    source: str | None = Field(None, description="the card file this came from (set by the loader)")

    @field_validator("templates", "train_templates")
    @classmethod
    def _templates(cls, v):
        if v is not None:
            from helpers.data import prompts

            try:
                prompts.templates(v)
            except (KeyError, ValueError) as e:
                raise ValueError(str(e).strip('"')) from None
        return v

    @model_validator(mode="after")
    def _root_needed(self):
        if self.kind in ("folder", "csv-splits", "captions") and not self.root:
            raise ValueError(f"a {self.kind} dataset needs root: the folder (or captions file) to read")
        if (self.kind == "torchvision") != bool(self.torchvision):
            raise ValueError("kind: torchvision and torchvision: <dataset class> go together")
        return self

    def resolved_root(self) -> Path | None:
        if not self.root:
            return None
        import os

        path = Path(os.path.expandvars(self.root)).expanduser()
        if not path.is_absolute() and self.source:
            path = Path(self.source).parent / path
        return path.resolve()

    def label(self) -> str:
        """The dataset's name in records: the card's, else the folder's."""
        if self.name:
            return self.name
        root = self.resolved_root()
        if self.kind == "torchvision":
            return self.torchvision.lower()
        return root.stem if root and root.is_file() else root.name if root else self.kind


def available() -> list[str]:
    """Names of the bundled cards (``datasets/*.yaml``)."""
    return sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))


def expand(value) -> dict:
    """A profile's ``dataset`` value as a card mapping: a mapping as it is (``card: <name or file>``
    in it starts from that card); a bundled card name or a ``.yaml`` path -> that card file; any other
    string -> a ``folder`` card of that path."""
    if value is None:
        return {}
    if isinstance(value, DatasetCard):
        return value.model_dump()
    if isinstance(value, dict):
        if "card" in value:  # {card: eurosat, download: true}: a card with some keys changed
            base = expand(value["card"])
            return {**base, **{k: v for k, v in value.items() if k != "card"}}
        return dict(value)
    if not isinstance(value, str):
        raise DatasetError(f"dataset: give a folder, a card (.yaml) or a mapping, not {type(value).__name__}")
    path = Path(value).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise DatasetError(f"dataset card {path} does not exist (bundled cards: {', '.join(available())})")
        return read_card_file(path)
    if value in available() and not path.exists():
        return read_card_file(CARDS_DIR / f"{value}.yaml")
    return {"kind": "folder", "root": str(path)}


def read_card_file(path: Path) -> dict:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise DatasetError(f"dataset card {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"dataset card {path}: a card is a YAML mapping of keys")
    return {**raw, "source": str(Path(path).resolve())}


def read_classnames(value, source: str | None):
    """A card's ``classnames``: a map or list as given; a file path read (.txt, .json, .yaml)."""
    if not isinstance(value, str):
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and source:
        path = Path(source).parent / path
    if not path.is_file():
        raise DatasetError(f"classnames file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip()]
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def load_splits(card: DatasetCard) -> dict:
    """The card's dataset as ``{"train", "val", "test"}`` :class:`Samples` (the splits it has; a
    ``test_fraction: 1`` card has only ``test``). Every decision is in each split's card."""
    from helpers.data import eurosat, layouts, synthetic

    names = read_classnames(card.classnames, card.source)
    common = {"val_fraction": card.val_fraction, "seed": card.seed, "classnames": names}
    if card.kind == "synthetic":
        splits = synthetic.load_synthetic(**common)
    elif card.kind == "eurosat":
        splits = eurosat.load_eurosat(card.resolved_root(), download=card.download, name=card.name or "eurosat",
                                      test_fraction=card.test_fraction, splits=card.splits, recursive=card.recursive,
                                      max_per_class=card.max_per_class, **common)
    elif card.kind in ("folder", "csv-splits"):
        splits = layouts.load_image_folder(card.resolved_root(), name=card.label(), test_fraction=card.test_fraction,
                                           splits=card.splits, recursive=card.recursive,
                                           max_per_class=card.max_per_class, **common)
        layout = next(iter(splits.values())).layout
        if card.kind == "csv-splits" and layout != "csv-splits":
            raise DatasetError(f"{card.resolved_root()}: the card says csv-splits but the folder is laid out as {layout}")
    elif card.kind == "torchvision":
        from helpers.data import torchvision_datasets

        splits = torchvision_datasets.load(card, names)
    else:
        raise DatasetError(f"dataset {card.label()}: a {card.kind} dataset is for retrieval (name it in "
                           "clip_finetune.retrieval.captions), not for classification")
    return splits
