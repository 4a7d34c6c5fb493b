"""Datasets torchvision can download, by class name (``kind: torchvision``, ``torchvision: Flowers102``),
read as lists of files like every other dataset: the split files torchvision keeps (``_image_files``
+ ``_labels``, ``_images``, ``_samples``, or an ImageFolder's ``samples``) become :class:`Samples`.
Datasets held in memory (CIFAR, MNIST) are refused with a message: export them to a folder first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers.core import config
from helpers.core.errors import DatasetError
from helpers.data.classnames import readable_classnames, resolve_classnames
from helpers.data.layouts import cap_per_class, stratified_split
from helpers.data.samples import Samples

# the lab's split -> the names torchvision datasets use for it (tried in order)
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


def _files(ds) -> tuple[list[Path], list[int]]:
    if hasattr(ds, "samples") or hasattr(ds, "_samples"):
        pairs = getattr(ds, "samples", None) or ds._samples
        return [Path(p) for p, _ in pairs], [int(y) for _, y in pairs]
    for files, labels in (("_image_files", "_labels"), ("_images", "_labels")):
        if hasattr(ds, files) and hasattr(ds, labels):
            return [Path(p) for p in getattr(ds, files)], [int(y) for y in getattr(ds, labels)]
    raise DatasetError(f"torchvision {type(ds).__name__} keeps its images in memory, not as files; save them "
                       "to a folder (one sub-folder per class) and use kind: folder")


def _open(cls, root: Path, split: str, download: bool):
    for name in SPLIT_NAMES[split]:
        try:
            return cls(str(root), split=name, download=download)
        except ValueError:  # this dataset has no such split name
            continue
        except TypeError:  # no split argument: train=True/False datasets
            if split == "val":
                return None
            return cls(str(root), train=split == "train", download=download)
        except RuntimeError as e:  # not downloaded
            raise DatasetError(f"torchvision {cls.__name__} is not in {root} ({e}); set download: true in the "
                               "dataset card (needs network) or copy its files there") from None
    return None


def load(card, classnames=None) -> dict[str, Samples]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, card.torchvision, None)
    if not isinstance(cls, type):
        raise DatasetError(f"torchvision has no dataset {card.torchvision!r}")
    root = card.resolved_root() or config.data_root() / "torchvision"
    out = {}
    for split in ("train", "val", "test"):
        ds = _open(cls, root, split, card.download)
        if ds is None:
            continue
        paths, labels = _files(ds)
        classes = [str(c) for c in getattr(ds, "classes", None) or range(max(labels) + 1)]
        auto, rules = readable_classnames(classes)
        names = resolve_classnames(classes, classnames, auto)
        out[split] = Samples(card.label(), root, f"torchvision:{card.torchvision}", split, paths, np.asarray(labels),
                             classes, names, {"source": f"torchvision.datasets.{card.torchvision} split {split!r}",
                                              "classnames_from": "the card" if classnames else "; ".join(rules)})
    if "test" not in out:
        raise DatasetError(f"torchvision {card.torchvision} has no test split the lab can read")
    if "val" not in out and "train" in out and card.val_fraction > 0:
        out["train"], out["val"] = stratified_split(out["train"], card.val_fraction, card.seed, ("train", "val"))
    return {s: cap_per_class(v, card.max_per_class, card.seed) for s, v in out.items()}
