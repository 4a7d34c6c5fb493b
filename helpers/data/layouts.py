"""Dataset folders in any supported layout -> train/val/test :class:`Samples`: class folders,
split folders, Kaggle-style split CSVs, and deterministic stratified splits where none are given."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np

from helpers.core.errors import DatasetError
from helpers.data.classnames import default_classnames, resolve_classnames
from helpers.data.images import IMAGE_EXTENSIONS
from helpers.data.samples import Samples


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
