"""Datasets as lists of files: EuroSAT in its three layouts, any image folder, splits and class names.

A :class:`Samples` is a list of image paths with labels and the facts a result must state about
it (dataset, layout, split and how the split was made, counts, a fingerprint of the files). Images
are decoded lazily by :class:`ImageDataset`, always to RGB.

Bad-image policy (one policy, everywhere): an image that cannot be decoded raises
:class:`BadImageError` naming the file; nothing is skipped silently. ``find_bad_images`` lists
every such file up front for a user who wants to clean a folder before a long run.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from . import config

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a grey half-image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# EuroSAT folder names -> names used in the literature (CLIP_benchmark); "or" separates synonyms.
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}
EUROSAT_CLASSES = sorted(EUROSAT_CLASSNAMES)


class DatasetError(ValueError):
    """A dataset folder, split file or class-name mapping does not fit what was asked."""


class BadImageError(ValueError):
    """An image file cannot be decoded; the message names the file."""


# ----------------------------------------------------------------------------------------- images
def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit and float are rescaled, transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        else:
            arr = arr / hi * 255.0
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: Path | str) -> Image.Image:
    """Decode ``path`` fully and return it as RGB, or raise :class:`BadImageError` naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError as e:
        raise BadImageError(f"image file is missing: {path}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImageError(f"cannot decode image {path}: {e}. Remove or replace the file and run again.") from e


def find_bad_images(paths) -> list[tuple[str, str]]:
    """(path, reason) for every file that does not decode; for cleaning a folder before a long run."""
    bad = []
    for p in paths:
        try:
            load_rgb(p)
        except BadImageError as e:
            bad.append((str(p), str(e.__cause__ or e)))
    return bad


# ---------------------------------------------------------------------------------------- samples
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


def _relative(p: Path | str, root: Path) -> str:
    try:
        return Path(p).relative_to(root).as_posix()
    except ValueError:
        return Path(p).as_posix()


# ------------------------------------------------------------------------------------ class names
def resolve_classnames(classes: list[str], names=None, defaults=None) -> list[str]:
    """Folder names -> display names. ``names``: None (``defaults``), a dict (partial is fine) or a list.

    ``defaults`` (one name per class; folder names when None) are kept for classes a partial dict
    does not name. A dict key that is not one of ``classes`` is an error, so a typo never silently falls back.
    """
    base = list(classes) if defaults is None else [str(n) for n in defaults]
    if names is None:
        return base
    if isinstance(names, dict):
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DatasetError(
                f"class-name mapping names {unknown}, which the dataset does not have; its classes are {classes}"
            )
        return [str(names.get(c, b)) for c, b in zip(classes, base, strict=True)]
    names = list(names)
    if len(names) != len(classes):
        raise DatasetError(f"{len(names)} class names given for {len(classes)} classes {classes}")
    return [str(n) for n in names]


def default_classnames(classes: list[str]) -> list[str]:
    """EuroSAT's literature names when the classes are EuroSAT's, else the folder names."""
    if set(classes) <= set(EUROSAT_CLASSNAMES):
        return [EUROSAT_CLASSNAMES[c] for c in classes]
    return list(classes)


# -------------------------------------------------------------------------------------- scanning
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def scan_class_folders(folder: Path, classes: list[str] | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """``folder/<class>/<image>`` -> (paths, labels, classes); an empty class folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    missing = sorted(set(classes) - set(found))
    if missing:
        raise DatasetError(f"{folder} lacks class folders {missing} (it has {found})")
    if not classes:
        raise DatasetError(f"{folder} has no class folders (expected <class>/<image> inside)")
    paths, labels = [], []
    for y, cls in enumerate(classes):
        files = sorted(p for p in (folder / cls).rglob("*") if _is_image(p))
        if not files:
            raise DatasetError(
                f"class folder {folder / cls} has no images (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "remove the folder or add images"
            )
        paths += files
        labels += [y] * len(files)
    return paths, np.asarray(labels, dtype=np.int64), list(classes)


def stratified_split(samples: Samples, fraction: float, seed: int, names: tuple[str, str]) -> tuple[Samples, Samples]:
    """Deterministic stratified split of ``samples`` into (rest, held-out ``fraction``)."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise DatasetError(f"split fraction must be in (0, 1), got {fraction}")
    idx = np.arange(len(samples))
    try:
        keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=samples.labels)
    except ValueError as e:
        raise DatasetError(f"cannot make a stratified {fraction:.0%} split of {samples.name}: {e}") from e
    protocol = {f"{names[1]}_from": samples.split, f"{names[1]}_fraction": fraction, "seed": seed,
                "method": "sklearn.train_test_split(stratify=labels)"}
    return (samples.subset(np.sort(keep), names[0], **protocol), samples.subset(np.sort(held), names[1], **protocol))


def _finish_splits(base: Samples, splits: dict[str, Samples], val_fraction: float, seed: int) -> dict[str, Samples]:
    """Carve val from train when the layout has no val split."""
    if "val" not in splits and val_fraction > 0:
        splits["train"], splits["val"] = stratified_split(splits["train"], val_fraction, seed, ("train", "val"))
    return splits


# --------------------------------------------------------------------------------------- layouts
def detect_layout(root: Path) -> tuple[str, Path]:
    """Which of the supported layouts ``root`` is, and the folder the layout starts at."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    for candidate in (root, root / "eurosat", root / "EuroSAT"):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return "train-test-folders", candidate
        if _split_csvs(candidate):
            return "csv-splits", candidate
        if (candidate / "2750").is_dir():
            return "class-folders", candidate / "2750"
    return "class-folders", root


_CSV_NAMES = {"train": ("train.csv",), "val": ("validation.csv", "val.csv", "valid.csv"), "test": ("test.csv",)}


def _split_csvs(folder: Path) -> dict[str, Path]:
    found = {}
    for split, names in _CSV_NAMES.items():
        for n in names:
            if (folder / n).is_file():
                found[split] = folder / n
                break
    return found if {"train", "test"} <= set(found) else {}


def _pick(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def _read_split_csv(csv_path: Path, classes: list[str] | None) -> tuple[list[Path], list[str]]:
    """Kaggle-style split file: a path column (Filename/path/image) and a class-name column."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DatasetError(f"split file {csv_path} is empty")
    cols = list(rows[0])
    path_col = _pick(cols, ("filename", "path", "image", "file", "filepath", "image_path"))
    name_col = _pick(cols, ("classname", "class", "class_name", "label_name"))
    label_col = _pick(cols, ("label", "target", "class_id"))
    if path_col is None or (name_col is None and label_col is None):
        raise DatasetError(f"{csv_path}: need a file column and a class column, found columns {cols}")
    base = csv_path.parent
    paths, names = [], []
    for r in rows:
        rel = r[path_col].strip()
        if name_col is not None:
            cls = r[name_col].strip()
        else:
            cls = Path(rel).parent.name or str(r[label_col]).strip()
        p = base / rel
        if not p.exists():
            for sub in ("2750", "EuroSAT", "images"):
                if (base / sub / rel).exists():
                    p = base / sub / rel
                    break
            else:
                raise DatasetError(f"{csv_path} lists {rel}, which is not under {base}")
        paths.append(p)
        names.append(cls)
    return paths, names


def load_image_folder(
    root: Path | str,
    name: str | None = None,
    classnames=None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Samples]:
    """A classification dataset from a folder in any supported layout -> {"train","val","test"}.

    Layouts: ``train/`` + ``test/`` (+ optional ``val/``) class folders; Kaggle-style split CSVs;
    one folder per class (torchvision's EuroSAT ``2750/``, or a user's ``<root>/<class>/*.jpg``),
    which gets a deterministic stratified train/val/test split. The split used is in every card.
    ``classnames``: None (EuroSAT literature names for EuroSAT, folder names otherwise), dict or list.
    """
    root = Path(root).expanduser().resolve()
    layout, start = detect_layout(root)
    name = name or root.name

    def make(paths, labels, classes, split, protocol) -> Samples:
        names = resolve_classnames(classes, classnames, default_classnames(classes))
        return Samples(name, root, layout, split, list(paths), labels, list(classes), names, protocol)

    if layout == "train-test-folders":
        _, _, classes = scan_class_folders(start / "train")
        splits = {}
        for split, sub in (("train", "train"), ("val", "val"), ("val", "validation"), ("test", "test")):
            if (start / sub).is_dir() and split not in splits:
                extra = sorted({d.name for d in (start / sub).iterdir() if d.is_dir()
                                and not d.name.startswith(".")} - set(classes))
                if extra:
                    raise DatasetError(f"{start / sub} has class folders {extra} that {start / 'train'} lacks; "
                                       "every split must hold the same class folders")
                paths, labels, _ = scan_class_folders(start / sub, classes)
                splits[split] = make(paths, labels, classes, split, {"source": f"layout folder {sub}/"})
        return _finish_splits(splits["train"], splits, val_fraction, seed)

    if layout == "csv-splits":
        per_split = {s: _read_split_csv(p, None) for s, p in _split_csvs(start).items()}
        classes = sorted({c for _, names in per_split.values() for c in names})
        index = {c: i for i, c in enumerate(classes)}
        splits = {
            s: make(paths, np.asarray([index[c] for c in names]), classes, s, {"source": f"split file {_split_csvs(start)[s].name}"})
            for s, (paths, names) in per_split.items()
        }
        return _finish_splits(splits["train"], splits, val_fraction, seed)

    paths, labels, classes = scan_class_folders(start)
    full = make(paths, labels, classes, "all", {"source": "one folder per class; no split in the layout"})
    rest, test = stratified_split(full, test_fraction, seed, ("trainval", "test"))
    splits = {"test": test}
    if val_fraction > 0:
        splits["train"], splits["val"] = stratified_split(rest, val_fraction, seed, ("train", "val"))
    else:
        splits["train"] = replace(rest, split="train")
    return splits


def eurosat_root() -> Path:
    """Where EuroSAT is looked for: ``<CLIPLAB_DATA>/eurosat_rgb``, or ``<CLIPLAB_DATA>/eurosat``."""
    base = config.data_root()
    for name in ("eurosat_rgb", "eurosat", "EuroSAT"):
        if (base / name).is_dir():
            return base / name
    return base / "eurosat_rgb"


def load_eurosat(root: Path | str | None = None, download: bool = False, **kwargs) -> dict[str, Samples]:
    """EuroSAT RGB in any of its layouts; with ``download=True`` torchvision fetches it when absent."""
    root = Path(root) if root else eurosat_root()
    if not root.exists():
        if not download:
            raise DatasetError(
                f"EuroSAT not found at {root}. Put the images there (train/ and test/ class folders, "
                "a 2750/ folder per class, or Kaggle split CSVs), point CLIPLAB_DATA at the folder that "
                "holds eurosat_rgb/, or allow the download."
            )
        download_eurosat(root)
    kwargs.setdefault("name", "eurosat")
    splits = load_image_folder(root, **kwargs)
    classes = splits["test"].classes
    if set(classes) != set(EUROSAT_CLASSES):
        raise DatasetError(f"{root} does not hold EuroSAT's 10 classes: found {classes}")
    return splits


def download_eurosat(root: Path) -> Path:
    """torchvision's checksummed EuroSAT download (one folder per class, ``<root>/eurosat/2750``)."""
    from torchvision.datasets import EuroSAT

    root.mkdir(parents=True, exist_ok=True)
    EuroSAT(str(root), download=True)
    return root


# --------------------------------------------------------------------------------------- captions
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
