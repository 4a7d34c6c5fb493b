"""Image-caption datasets for retrieval: a CSV ``image,caption`` or Karpathy/COCO-style JSON."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.core.errors import DatasetError
from helpers.data.layouts import _pick
from helpers.data.samples import Samples, _relative


@dataclass
class CaptionSet:
    """Images with several captions each, for retrieval: ``caption_image[j]`` is caption j's image."""

    name: str
    root: Path
    layout: str
    images: list[Path]
    captions: list[str]
    caption_image: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def image_samples(self) -> Samples:
        """The images as a :class:`Samples` (label = image index) so they share the feature cache."""
        ids = [str(i) for i in range(len(self.images))]
        return Samples(self.name, self.root, self.layout, "retrieval", list(self.images),
                       np.arange(len(self.images)), ids, ids, {"source": self.layout})

    def card(self) -> dict:
        h = hashlib.sha256(json.dumps([_relative(p, self.root) for p in self.images] + self.captions).encode())
        return {"name": self.name, "root": str(self.root), "layout": self.layout, "n_images": len(self.images),
                "n_captions": len(self.captions), "fingerprint": h.hexdigest()}


def load_captions_csv(csv_path: Path | str, image_root: Path | str | None = None, name: str | None = None) -> CaptionSet:
    """CSV with ``image,caption`` columns; an image may appear on several rows (several captions)."""
    csv_path = Path(csv_path)
    image_root = Path(image_root) if image_root else csv_path.parent
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DatasetError(f"caption file {csv_path} is empty")
    img_col = _pick(list(rows[0]), ("image", "filename", "file", "path", "image_path"))
    cap_col = _pick(list(rows[0]), ("caption", "text", "sentence", "title"))
    if img_col is None or cap_col is None:
        raise DatasetError(f"{csv_path}: need image and caption columns, found {list(rows[0])}")
    return _caption_set(name or csv_path.stem, image_root, "captions-csv",
                        [(r[img_col].strip(), r[cap_col].strip()) for r in rows])


def load_captions_karpathy(json_path: Path | str, image_root: Path | str, split: str | None = "test",
                           name: str | None = None) -> CaptionSet:
    """Karpathy-style JSON (``images[].filename/filepath/split/sentences[].raw``) for one split."""
    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    pairs = []
    for im in data.get("images", []):
        if split is not None and im.get("split") != split:
            continue
        rel = str(Path(im.get("filepath", "")) / im["filename"])
        for s in im.get("sentences", []):
            pairs.append((rel, s.get("raw") or " ".join(s.get("tokens", []))))
    if not pairs:
        raise DatasetError(f"{json_path} has no captioned images in split {split!r}")
    return _caption_set(name or json_path.stem, Path(image_root), f"karpathy-json:{split}", pairs)


def _caption_set(name: str, image_root: Path, layout: str, pairs: list[tuple[str, str]]) -> CaptionSet:
    index: dict[str, int] = {}
    images, captions, owner = [], [], []
    for rel, cap in pairs:
        if rel not in index:
            p = image_root / rel
            if not p.is_file():
                raise DatasetError(f"caption file names image {rel}, which is not in {image_root}")
            index[rel] = len(images)
            images.append(p)
        captions.append(cap)
        owner.append(index[rel])
    return CaptionSet(name, image_root.resolve(), layout, images, captions, np.asarray(owner, dtype=np.int64))
