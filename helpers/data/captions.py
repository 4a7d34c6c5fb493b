"""Image-caption datasets for retrieval: a CSV ``image,caption`` or Karpathy/COCO-style JSON."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.core.errors import DatasetError
from helpers.data.layouts import pick_column
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
    """CSV with ``image,caption`` columns; an image may appear on several rows (several captions).
    Image paths are resolved as :func:`image_folders` says."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DatasetError(f"caption file {csv_path} is empty")
    img_col = pick_column(list(rows[0]), ("image", "filename", "file", "path", "image_path"))
    cap_col = pick_column(list(rows[0]), ("caption", "text", "sentence", "title"))
    if img_col is None or cap_col is None:
        raise DatasetError(f"{csv_path}: need image and caption columns, found {list(rows[0])}")
    return _caption_set(name or csv_path.stem, csv_path, image_folders(csv_path, image_root), "captions-csv",
                        [(r[img_col].strip(), r[cap_col].strip()) for r in rows])


def load_captions_karpathy(json_path: Path | str, image_root: Path | str | None = None, split: str | None = None,
                           name: str | None = None) -> CaptionSet:
    """Karpathy/COCO-style JSON (``images[].filename/filepath/split/sentences[].raw``); ``split``:
    keep only that split's images (None: every image). Image paths are resolved as :func:`image_folders` says."""
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{json_path}: expected Karpathy-style JSON, an object with an 'images' list "
                           "(each with filename, optional filepath and split, and sentences[].raw)")
    pairs = []
    for im in data["images"]:
        if split is not None and im.get("split") != split:
            continue
        rel = str(Path(im.get("filepath", "")) / im["filename"])
        for sent in im.get("sentences", []):
            pairs.append((rel, sent.get("raw") or " ".join(sent.get("tokens", []))))
    if not pairs:
        raise DatasetError(f"{json_path} has no captioned images" + (f" in split {split!r}" if split else ""))
    return _caption_set(name or json_path.stem, json_path, image_folders(json_path, image_root),
                        f"karpathy-json{':' + split if split else ''}", pairs)


def load_captions(path: Path | str, image_root: Path | str | None = None, name: str | None = None) -> CaptionSet:
    """A captions file by its format: ``.csv`` (image,caption) or ``.json`` (Karpathy/COCO style)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"captions file {path} does not exist")
    if path.suffix.lower() == ".json":
        return load_captions_karpathy(path, image_root, name=name)
    if path.suffix.lower() == ".csv":
        return load_captions_csv(path, image_root, name=name)
    raise DatasetError(f"captions file {path}: use a .csv (image,caption columns) or a Karpathy-style .json")


def image_folders(captions_file: Path, image_root: Path | str | None) -> list[Path]:
    """Where a captions file's relative image paths are looked up, in order: the given ``image_root``
    (a card's ``images``) alone, else the file's folder, then an ``images/`` folder beside it."""
    if image_root is not None:
        return [Path(image_root).expanduser()]
    return [captions_file.parent, captions_file.parent / "images"]


def _caption_set(name: str, source: Path, folders: list[Path], layout: str, pairs: list[tuple[str, str]]) -> CaptionSet:
    index: dict[str, int] = {}
    images, captions, owner = [], [], []
    for rel, cap in pairs:
        if rel not in index:
            p = next((f / rel for f in folders if (f / rel).is_file()), None)
            if p is None:
                raise DatasetError(f"{source.name} names image {rel}, which is in none of "
                                   f"{', '.join(str(f) for f in folders)}; set the card's images folder")
            index[rel] = len(images)
            images.append(p)
        captions.append(cap)
        owner.append(index[rel])
    root = Path(os.path.commonpath([str(p.parent) for p in images])).resolve()
    return CaptionSet(name, root, layout, images, captions, np.asarray(owner, dtype=np.int64))
