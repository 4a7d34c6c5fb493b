"""Dataset folders in any supported layout -> train/val/test :class:`Samples`. Layouts are detected,
never guessed silently: what could mean two things is an error that says what to write in a card.

- split folders: the root's sub-folders are split names (``train``; ``val|valid|validation|dev``;
  ``test|eval``, any case), each holding one folder per class;
- Kaggle-style split CSVs (``train.csv`` + ``test.csv`` [+ ``val.csv``]) naming files and classes;
- class folders: one folder per class (torchvision's EuroSAT ``2750/``, a user's ``<root>/<class>/``),
  split here into train/val/test, stratified and seeded.

A root holding a single folder and nothing else (how many archives unpack) is entered. Images inside a
class folder's sub-folders are an error unless the card says ``recursive: true``. Whatever is not read as
an image (hidden entries, broken symlinks, other extensions, files beside the class folders; the rule is
:func:`helpers.data.images.skip_reason`) is named in a :class:`SkippedFilesWarning` and listed in the
split's card (``skipped_files``, ``skipped_why``, ``skipped_examples``), never dropped silently.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from helpers.core.errors import DatasetError, SkippedFilesWarning
from helpers.data.classnames import readable_classnames, resolve_classnames
from helpers.data.images import IMAGE_EXTENSIONS, is_image_file, skip_reason
from helpers.data.samples import Samples

SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"),
               "test": ("test", "eval", "testing")}


def split_of(folder_name: str) -> str | None:
    """``valid`` -> val, ``Test`` -> test, ``Forest`` -> None."""
    low = folder_name.lower()
    return next((s for s, names in SPLIT_NAMES.items() if low in names), None)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan_class_folders(folder: Path, classes: list[str] | None = None, recursive: bool = False
                       ) -> tuple[list[Path], np.ndarray, list[str], dict]:
    """``folder/<class>/<image>`` -> (paths, labels, classes, skipped); classes must hold images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    found = [d.name for d in _subdirs(folder)]
    classes = found if classes is None else classes
    missing = sorted(set(classes) - set(found))
    if missing:
        raise DatasetError(f"{folder} lacks class folders {missing} (it has {found})")
    if not classes:
        loose = [p.name for p in folder.iterdir() if p.is_file() and is_image_file(p)][:3]
        hint = f" (it holds images such as {loose} directly: put them in one folder per class)" if loose else ""
        raise DatasetError(f"{folder} has no class folders (expected <class>/<image> inside){hint}")
    paths, labels, nested = [], [], {}
    # files beside the class folders belong to no class: named like every other file not read
    skipped = [(p, skip_reason(p, folder) or "beside the class folders, in no class")
               for p in sorted(folder.iterdir()) if not p.is_dir()]
    for y, cls in enumerate(classes):
        files, here = [], []
        for p in sorted((folder / cls).rglob("*") if recursive else (folder / cls).iterdir()):
            if p.is_dir():
                if p.name.startswith("."):
                    here.append((p, "hidden folder (name starts with '.')"))
                elif not recursive:
                    nested.setdefault(cls, []).append(p.name)
                continue
            why = skip_reason(p, folder / cls)
            if why is None:
                files.append(p)
            else:
                here.append((p, why))
        if not files and cls not in nested:
            seen = f"; it holds {_reasons(here)}" if here else ""
            raise DatasetError(f"class folder {folder / cls} has no images (looked for {', '.join(IMAGE_EXTENSIONS)}"
                               f"{seen}); remove the folder or add images")
        paths += files
        labels += [y] * len(files)
        skipped += here
    if nested:
        shown = "; ".join(f"{c}/: {', '.join(subs[:3])}" for c, subs in list(nested.items())[:3])
        raise DatasetError(f"{folder}: class folders hold sub-folders ({shown}). Is each of them a class "
                           "(point root at the class folder's parent), or more images of its class "
                           "(set recursive: true in the dataset card)?")
    card = _skipped_card(skipped, folder)
    if card:
        warnings.warn(f"{folder}: {card['skipped_files']} file(s) not read as images: {_reasons(skipped)}; e.g. "
                      f"{', '.join(card['skipped_examples'])} (listed in the dataset card as skipped_files)",
                      SkippedFilesWarning, stacklevel=2)
    return paths, np.asarray(labels, dtype=np.int64), list(classes), card


def _reasons(skipped: list[tuple[Path, str]]) -> str:
    """'3 not an image extension (.txt), 1 broken symlink'."""
    return ", ".join(f"{n} {why}" for why, n in Counter(why for _, why in skipped).most_common())


def _skipped_card(skipped: list[tuple[Path, str]], root: Path, shown: int = 5) -> dict:
    """Count, reasons and the first few names of the entries not read; one example of every reason first."""
    if not skipped:
        return {}
    first: dict[str, Path] = {}
    for p, why in skipped:
        first.setdefault(why, p)
    examples = list(first.values())[:shown]
    examples += [p for p, _ in skipped if p not in examples][:shown - len(examples)]
    return {"skipped_files": len(skipped), "skipped_why": dict(Counter(why for _, why in skipped).most_common()),
            "skipped_examples": [p.relative_to(root).as_posix() for p in sorted(examples)]}


def stratified_split(samples: Samples, fraction: float, seed: int, names: tuple[str, str]) -> tuple[Samples, Samples]:
    """Deterministic stratified split of ``samples`` into (rest, held-out ``fraction``).

    At least one image of every class is held out and one kept (the held-out count is raised to the
    number of classes when the fraction would give fewer); a class with fewer than two images cannot
    be split, and the error names it.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise DatasetError(f"split fraction must be in (0, 1), got {fraction}")
    counts = samples.counts()
    small = {c: n for c, n in counts.items() if n < 2}
    what = f"{names[1]} fraction" if names[1] != "test" else "test_fraction"
    if small:
        raise DatasetError(f"{samples.name}: cannot hold out a {names[1]} split: class(es) "
                           f"{', '.join(f'{c!r} ({n} image)' for c, n in small.items())} need at least 2 images. "
                           f"Add images, remove the class, or set {what.replace(' ', '_')} to 0"
                           + (" (or 1: everything is test)" if names[1] == "test" else ""))
    n, k = len(samples), len(counts)
    n_held = min(max(round(fraction * n), k), n - k)
    if n_held < k:
        raise DatasetError(f"{samples.name}: {n} images in {k} classes are too few to hold out one image per class "
                           f"for {names[1]} and keep one; set {what.replace(' ', '_')} to 0 or add images")
    idx = np.arange(n)
    keep, held = train_test_split(idx, test_size=n_held, random_state=seed, stratify=samples.labels)
    protocol = {f"{names[1]}_from": samples.split, f"{names[1]}_fraction": fraction, "seed": seed,
                "method": "sklearn.train_test_split(stratify=labels)"}
    if n_held != round(fraction * n):
        protocol[f"{names[1]}_images"] = f"{n_held} (raised to one per class)"
    return (samples.subset(np.sort(keep), names[0], **protocol), samples.subset(np.sort(held), names[1], **protocol))


def cap_per_class(samples: Samples, max_per_class: int | None, seed: int) -> Samples:
    """At most ``max_per_class`` images of each class (a seeded choice; stated in the split's card)."""
    if not max_per_class or all(n <= max_per_class for n in samples.counts().values()):
        return samples
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(samples.labels == y))[:max_per_class]
                           for y in range(samples.num_classes)])
    return samples.subset(np.sort(keep), max_per_class=max_per_class, max_per_class_seed=seed)


# --------------------------------------------------------------------------------------- layouts
def detect_layout(root: Path, splits: dict | None = None) -> tuple[str, Path, dict[str, Path]]:
    """(layout, folder the layout starts at, {split: folder or CSV}) of ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    if splits:
        found = {s: root / rel for s, rel in splits.items()}
        for s, p in found.items():
            if not p.exists():
                raise DatasetError(f"the card's splits.{s} is {splits[s]!r}, but {p} does not exist")
        kinds = {p.suffix.lower() == ".csv" for p in found.values()}
        if len(kinds) > 1:
            raise DatasetError(f"{root}: the card's splits mix CSV files and folders")
        return ("csv-splits" if kinds == {True} else "split-folders"), root, found
    start = root
    while True:
        subs = _subdirs(start)
        # images or split CSVs make this level the dataset; other files (the archive it came from, a
        # README: torchvision leaves EuroSAT.zip beside eurosat/2750) do not stop the descent
        has_files = bool(_split_csvs(start)) or any(p.is_file() and is_image_file(p) for p in start.iterdir())
        inner_images = len(subs) == 1 and any(p.is_file() and is_image_file(p) for p in subs[0].iterdir())
        if len(subs) == 1 and not has_files and split_of(subs[0].name) is None and not inner_images \
                and _subdirs(subs[0]):
            start = subs[0]  # an archive's single top folder, or torchvision's eurosat/2750
            continue
        break
    csvs = _split_csvs(start)
    if csvs:
        return "csv-splits", start, csvs
    subs = _subdirs(start)
    split_dirs = {d: split_of(d.name) for d in subs}
    named = {d.name: s for d, s in split_dirs.items() if s}
    if named:
        others = [d.name for d, s in split_dirs.items() if not s]
        if others:
            raise DatasetError(f"{start} mixes split folders ({', '.join(named)}) with other folders "
                               f"({', '.join(others[:5])}): is it split folders or class folders? Move the "
                               "others away, or name the splits in a dataset card (splits: {train: ..., test: ...})")
        by_split: dict[str, Path] = {}
        for d, s in split_dirs.items():
            if s in by_split:
                raise DatasetError(f"{start}: both {by_split[s].name}/ and {d.name}/ look like the {s} split; "
                                   "name the one to use in a dataset card (splits: {" + s + ": ...})")
            by_split[s] = d
        return "split-folders", start, by_split
    return "class-folders", start, {}


_CSV_NAMES = {"train": ("train.csv",), "val": ("validation.csv", "val.csv", "valid.csv"), "test": ("test.csv",)}


def _split_csvs(folder: Path) -> dict[str, Path]:
    found = {}
    for split, names in _CSV_NAMES.items():
        for n in names:
            if (folder / n).is_file():
                found[split] = folder / n
                break
    return found if {"train", "test"} <= set(found) else {}


def pick_column(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def _read_split_csv(csv_path: Path) -> tuple[list[Path], list[str], bool]:
    """Kaggle-style split file: a path column (Filename/path/image) and a class column, by name
    (ClassName/class) or else by label (Label/target). Returns (paths, classes, classes came from a
    label column) -- a label column's value is the class; :func:`_name_label_ids` may name integer ids."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DatasetError(f"split file {csv_path} is empty")
    cols = list(rows[0])
    path_col = pick_column(cols, ("filename", "path", "image", "file", "filepath", "image_path"))
    name_col = pick_column(cols, ("classname", "class", "class_name", "label_name"))
    label_col = pick_column(cols, ("label", "target", "class_id"))
    if path_col is None or (name_col is None and label_col is None):
        raise DatasetError(f"{csv_path}: need a file column and a class column, found columns {cols}")
    base = csv_path.parent
    paths, names = [], []
    for r in rows:
        rel = r[path_col].strip()
        cls = (r[name_col] if name_col is not None else r[label_col]).strip()
        p = base / rel
        if p.is_symlink() and not p.exists():
            raise DatasetError(f"{csv_path} lists {rel}, a broken symlink (to {p.readlink()})")
        if not p.exists():
            subs = ("2750", "EuroSAT", "images")
            for sub in subs:
                if (base / sub / rel).exists():
                    p = base / sub / rel
                    break
            else:
                raise DatasetError(f"{csv_path} lists {rel}, which does not exist: looked for it in {base} "
                                   f"and in its {', '.join(subs)} folders")
        paths.append(p)
        names.append(cls)
    return paths, names, name_col is None


def _name_label_ids(per_split: dict) -> tuple[dict, str]:
    """Integer label ids named by the folder holding each file, when ids and folders match one to one
    over every split (``images/`` holding every class names nothing: the ids stay). Returns (per_split
    with classes renamed, how the classes were read) -- the decision is recorded in the split protocol."""
    pairs = {(c, p.parent.name) for paths, names, by_label in per_split.values() if by_label
             for p, c in zip(paths, names, strict=True)}
    if not pairs:
        return per_split, "the class-name column"
    ids, folders = {c for c, _ in pairs}, {f for _, f in pairs}
    if all(c.lstrip("-").isdigit() for c in ids) and len(pairs) == len(ids) == len(folders) > 1:
        folder_of = dict(pairs)
        return ({s: (paths, [folder_of[c] for c in names], by_label) for s, (paths, names, by_label) in per_split.items()},
                "the label column's ids, named by the folder of their files (one folder per id)")
    return per_split, "the label column's values"


def load_image_folder(root: Path | str, name: str | None = None, classnames=None, val_fraction: float = 0.1,
                      test_fraction: float = 0.2, seed: int = 0, splits: dict | None = None,
                      recursive: bool = False, max_per_class: int | None = None,
                      default_names=None) -> dict[str, Samples]:
    """A classification dataset from a folder in any supported layout -> the splits it has.

    ``classnames``: a user's map (partial is fine) or list; else ``default_names`` (e.g. EuroSAT's
    literature names); else readable names derived from the folder names. ``test_fraction`` 1 makes
    every image a test image (zero-shot needs no training images).
    """
    root = Path(root).expanduser().resolve()
    layout, start, found = detect_layout(root, splits)
    name = name or root.name
    skipped: dict = {}

    def make(paths, labels, classes, split, protocol) -> Samples:
        auto, rules = readable_classnames(classes)
        base = auto if default_names is None else [default_names.get(c, a) for c, a in zip(classes, auto, strict=True)] \
            if isinstance(default_names, dict) else list(default_names)
        names = resolve_classnames(classes, classnames, base)
        how = {"classnames_from": "the card" if classnames is not None else
               "the dataset's own names" if default_names is not None else f"{'the classes' if layout == 'csv-splits' else 'folder names'} ({'; '.join(rules) or 'as they are'})"}
        return Samples(name, root, layout, split, list(paths), labels, list(classes), names,
                       {**protocol, **how, **({"layout_start": str(start.relative_to(root))} if start != root else {}),
                        **skipped})

    if layout == "split-folders":
        first = found.get("train") or next(iter(found.values()))
        scanned = {first: scan_class_folders(first, recursive=recursive)}
        classes = scanned[first][2]
        out = {}
        for split, folder in found.items():
            extra = sorted({d.name for d in _subdirs(folder)} - set(classes))
            if extra:
                raise DatasetError(f"{folder} has class folders {extra} that {first} lacks; every split must "
                                   "hold the same class folders")
            paths, labels, _, skipped = scanned.get(folder) or scan_class_folders(folder, classes, recursive)
            out[split] = make(paths, labels, classes, split, {"source": f"split folder {folder.name}/"})
    elif layout == "csv-splits":
        per_split, classes_from = _name_label_ids({s: _read_split_csv(p) for s, p in found.items()})
        classes = sorted({c for _, names, _ in per_split.values() for c in names})
        index = {c: i for i, c in enumerate(classes)}
        out = {s: make(paths, np.asarray([index[c] for c in names]), classes, s,
                       {"source": f"split file {found[s].name}", "classes_from": classes_from})
               for s, (paths, names, _) in per_split.items()}
    else:
        paths, labels, classes, skipped = scan_class_folders(start, recursive=recursive)
        full = make(paths, labels, classes, "all", {"source": "one folder per class; no split in the layout"})
        _check_classes(full)
        if test_fraction >= 1:
            return {"test": replace(cap_per_class(full, max_per_class, seed), split="test",
                                    split_protocol={**full.split_protocol, "test_fraction": 1})}
        if test_fraction <= 0:
            raise DatasetError(f"{root}: one folder per class and test_fraction 0 leave no test split; set "
                               "test_fraction (e.g. 0.2, or 1 to evaluate every image zero-shot)")
        rest, test = stratified_split(full, test_fraction, seed, ("trainval", "test"))
        if val_fraction > 0:
            train, val = stratified_split(rest, val_fraction, seed, ("train", "val"))
            out = {"train": train, "val": val, "test": test}
        else:
            out = {"train": replace(rest, split="train"), "test": test}
    _check_classes(next(iter(out.values())))
    if "val" not in out and "train" in out and val_fraction > 0:
        out["train"], out["val"] = stratified_split(out["train"], val_fraction, seed, ("train", "val"))
    out = {s: cap_per_class(out[s], max_per_class, seed) for s in SPLITS_ORDER if s in out}
    if "test" not in out:
        raise DatasetError(f"{root} has splits {sorted(out)} but no test split: name the split to report on in a "
                           "dataset card (e.g. splits: {test: " + (found.get("val").name if "val" in found else "...") + "})")
    return out


SPLITS_ORDER = ("train", "val", "test")


def _check_classes(samples: Samples) -> None:
    if samples.num_classes < 2:
        raise DatasetError(f"{samples.root}: one class ({samples.classes[0]!r}) is not a classification task; "
                           "the root must hold one folder per class (or split folders that do)")
