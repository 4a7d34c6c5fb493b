"""A :class:`Samples` is a list of image paths with labels and the facts a result must state about
it (dataset, layout, split and how the split was made, counts, a fingerprint of the files). Images
are decoded lazily by :class:`ImageDataset`, always to RGB."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from helpers.core.errors import DatasetError
from helpers.data.classnames import resolve_classnames
from helpers.data.images import load_rgb
from helpers.data.transforms import apply_into


@dataclass
class Samples:
    """Image files with labels, and the facts a result must state about them."""

    name: str
    root: Path
    layout: str
    split: str
    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    classnames: list[str]
    split_protocol: dict = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise DatasetError(f"{self.name}: {len(self.paths)} paths but {len(self.labels)} labels")
        if len(self.classnames) != len(self.classes):
            raise DatasetError(f"{self.name}: {len(self.classes)} classes but {len(self.classnames)} class names")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, int]:
        c = Counter(self.labels.tolist())
        return {cls: int(c.get(i, 0)) for i, cls in enumerate(self.classes)}

    def fingerprint(self) -> str:
        """Hash of (relative path, size, mtime, label) of every file: changes when any image changes.

        Recomputed on every call (one stat per file, ~0.1 s per 10,000 images) so an image changed after
        this object was made is noticed by the feature cache instead of hitting a stale entry.
        """
        h = hashlib.sha256()
        for p, y in zip(self.paths, self.labels.tolist(), strict=True):
            st = Path(p).stat()
            h.update(f"{_relative(p, self.root)}\0{st.st_size}\0{st.st_mtime_ns}\0{y}\n".encode())
        self._fingerprint = h.hexdigest()
        return self._fingerprint

    def card(self) -> dict:
        """What a record says about the data: enough to rebuild exactly this list of images."""
        return {
            "name": self.name,
            "root": str(self.root),
            "layout": self.layout,
            "split": self.split,
            "split_protocol": self.split_protocol,
            "n_images": len(self),
            "classes": list(self.classes),
            "classnames": list(self.classnames),
            "counts": self.counts(),
            "fingerprint": self.fingerprint(),
        }

    def subset(self, indices, split: str | None = None, **protocol) -> Samples:
        idx = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            split=split or self.split,
            split_protocol={**self.split_protocol, **protocol},
            _fingerprint=None,
        )

    def with_classnames(self, names) -> Samples:
        """Same images with other human-readable class names (dict folder->name, or a full list)."""
        return replace(self, classnames=resolve_classnames(self.classes, names, self.classnames))

    def dataset(self, transform=None) -> ImageDataset:
        return ImageDataset(self.paths, self.labels, transform)


class ImageDataset(torch.utils.data.Dataset):
    """Decodes one image per item (RGB), applies ``transform``, returns (image, label, index)."""

    def __init__(self, paths, labels, transform=None):
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = load_rgb(self.paths[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i]), i

    def decode_into(self, i: int, out: torch.Tensor) -> int:
        """Item ``i``'s image written into ``out`` (a slot of a reused batch buffer); returns its label."""
        if self.transform is None:
            raise ValueError("decode_into needs a transform that makes a tensor")
        apply_into(self.transform, load_rgb(self.paths[i]), out)
        return int(self.labels[i])


def _relative(p: Path | str, root: Path) -> str:
    try:
        return Path(p).relative_to(root).as_posix()
    except ValueError:
        return Path(p).as_posix()
