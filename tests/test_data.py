"""Datasets: EuroSAT in its three layouts, a user's image folder, the synthetic set, captions, class names."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import data
from helpers.data import EUROSAT_CLASSES, EUROSAT_CLASSNAMES, DatasetError, synthetic

EUROSAT_TRAIN_COUNTS = {
    "AnnualCrop": 2500, "Forest": 2500, "HerbaceousVegetation": 2500, "Highway": 2000, "Industrial": 2000,
    "Pasture": 1500, "PermanentCrop": 2000, "Residential": 2500, "River": 2000, "SeaLake": 2500,
}
PER_CLASS = 8  # images per class in the small layouts built below


# ----------------------------------------------------------------------------------------- helpers
def _jpeg_bytes(rgb, seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.asarray(rgb)[None, None, :] + rng.integers(-30, 31, size=(size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png(path: Path, rgb=(10, 200, 30), size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), rgb).save(path)
    return path


@pytest.fixture(scope="module")
def eurosat_jpegs() -> dict[str, list[tuple[str, bytes]]]:
    """PER_CLASS (file name, JPEG bytes) per EuroSAT class: real images when CLIPLAB_DATA has them, else made here."""
    real = Path(os.environ.get("CLIPLAB_DATA", "/nonexistent")).expanduser() / "eurosat_rgb" / "train"
    out = {}
    for ci, cls in enumerate(EUROSAT_CLASSES):
        folder = real / cls
        if folder.is_dir():
            files = sorted(folder.glob("*.jpg"))[:PER_CLASS]
            assert len(files) == PER_CLASS, folder
            out[cls] = [(f.name, f.read_bytes()) for f in files]
        else:
            out[cls] = [(f"{cls}_{i + 1}.jpg", _jpeg_bytes((ci * 25, 255 - ci * 25, 128), seed=ci * 100 + i))
                        for i in range(PER_CLASS)]
    return out


def _write_class_folders(folder: Path, images: dict[str, list[tuple[str, bytes]]]) -> None:
    for cls, files in images.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for name, blob in files:
            (folder / cls / name).write_bytes(blob)


def _check_consistent(samples: data.Samples) -> None:
    """Every path is an existing image whose class folder (parent, or grandparent for nested files) is
    the class its label names."""
    assert len(samples.paths) == len(samples.labels) > 0
    for p, y in zip(samples.paths, samples.labels.tolist(), strict=True):
        p = Path(p)
        assert p.is_file()
        folder = p.parent.parent if p.parent.name == "nested" else p.parent
        assert folder.name == samples.classes[y]


def _paths(samples: data.Samples) -> set[str]:
    return {str(p) for p in samples.paths}


# ------------------------------------------------------------------------------- real EuroSAT layout
@pytest.fixture(scope="module")
def real_splits(eurosat_root):
    return data.load_eurosat(eurosat_root)


@pytest.mark.realdata
def test_real_eurosat_classes_counts_and_names(real_splits, eurosat_root):
    assert set(real_splits) == {"train", "val", "test"}
    for split, s in real_splits.items():
        assert s.classes == EUROSAT_CLASSES, split
        assert s.classnames == [EUROSAT_CLASSNAMES[c] for c in EUROSAT_CLASSES]
        assert s.layout == "split-folders"
        assert s.name == "eurosat"
        assert s.split == split
    test = real_splits["test"]
    assert len(test) == 5000
    assert test.counts() == dict.fromkeys(EUROSAT_CLASSES, 500)
    train, val = real_splits["train"], real_splits["val"]
    assert len(train) + len(val) == 22000
    merged = {c: train.counts()[c] + val.counts()[c] for c in EUROSAT_CLASSES}
    assert merged == EUROSAT_TRAIN_COUNTS
    # stratified 10% validation carved from train/
    assert val.counts() == {c: n // 10 for c, n in EUROSAT_TRAIN_COUNTS.items()}
    assert val.split_protocol["val_from"] == "train"
    assert val.split_protocol["val_fraction"] == pytest.approx(0.1)
    assert val.split_protocol["seed"] == 0
    assert train.split_protocol == val.split_protocol
    assert test.split_protocol["source"] == "split folder test/"
    assert test.split_protocol["classnames_from"] == "the dataset's own names"
    # where the files come from, and no image in two splits
    for s in (train, val):
        assert all(Path(p).parent.parent == eurosat_root.resolve() / "train" for p in s.paths)
    assert all(Path(p).parent.parent == eurosat_root.resolve() / "test" for p in test.paths)
    assert not _paths(train) & _paths(val)
    assert not (_paths(train) | _paths(val)) & _paths(test)
    assert len(_paths(train) | _paths(val)) == 22000


@pytest.mark.realdata
def test_real_eurosat_labels_match_folders_and_cards(real_splits):
    for s in real_splits.values():
        _check_consistent(s)
    card = real_splits["val"].card()
    assert card["n_images"] == 2200
    assert card["counts"]["Pasture"] == 150
    assert card["layout"] == "split-folders"
    assert len(card["fingerprint"]) == 64
    assert real_splits["train"].fingerprint() != real_splits["val"].fingerprint()


@pytest.mark.realdata
def test_real_eurosat_val_split_is_deterministic_per_seed(real_splits, eurosat_root):
    again = data.load_eurosat(eurosat_root, seed=0)
    for split in ("train", "val", "test"):
        assert [str(p) for p in again[split].paths] == [str(p) for p in real_splits[split].paths]
        assert again[split].fingerprint() == real_splits[split].fingerprint()
    other = data.load_eurosat(eurosat_root, seed=1)
    assert _paths(other["val"]) != _paths(real_splits["val"])
    assert other["val"].counts() == real_splits["val"].counts()  # still stratified
    assert other["val"].split_protocol["seed"] == 1
    assert _paths(other["test"]) == _paths(real_splits["test"])  # the test split is fixed by the layout


@pytest.mark.realdata
def test_real_eurosat_found_through_cliplab_data(eurosat_root, monkeypatch):
    monkeypatch.setenv("CLIPLAB_DATA", str(eurosat_root.parent))
    assert data.eurosat_root() == eurosat_root.resolve()


@pytest.mark.realdata
def test_real_eurosat_images_decode_as_rgb(real_splits):
    ds = real_splits["test"].dataset()
    for i in (0, 2500, 4999):
        img, label, idx = ds[i]
        assert img.mode == "RGB" and img.size == (64, 64)
        assert (label, idx) == (int(real_splits["test"].labels[i]), i)


# ----------------------------------------------------------------------- torchvision layout (2750/)
@pytest.mark.parametrize("sub", ["eurosat/2750", "2750"])
def test_torchvision_layout_gets_deterministic_stratified_split(tmp_path, eurosat_jpegs, sub):
    _write_class_folders(tmp_path / sub, eurosat_jpegs)
    kw = {"test_fraction": 0.25, "val_fraction": 0.5}
    splits = data.load_eurosat(tmp_path, **kw)
    assert set(splits) == {"train", "val", "test"}
    for s in splits.values():
        assert s.layout == "class-folders"
        assert s.classes == EUROSAT_CLASSES
        assert s.classnames == [EUROSAT_CLASSNAMES[c] for c in EUROSAT_CLASSES]
        _check_consistent(s)
        assert all((tmp_path / sub).resolve() in Path(p).parents for p in s.paths)
    # 8 per class: 2 test, then half of the remaining 6 to val
    assert splits["test"].counts() == dict.fromkeys(EUROSAT_CLASSES, 2)
    assert splits["val"].counts() == dict.fromkeys(EUROSAT_CLASSES, 3)
    assert splits["train"].counts() == dict.fromkeys(EUROSAT_CLASSES, 3)
    tr, va, te = (_paths(splits[s]) for s in ("train", "val", "test"))
    assert not (tr & va or tr & te or va & te)
    assert len(tr | va | te) == 10 * PER_CLASS
    # the split is recorded where every record will see it
    proto = splits["val"].split_protocol
    assert proto["test_from"] == "all" and proto["test_fraction"] == 0.25
    assert proto["val_from"] == "trainval" and proto["val_fraction"] == 0.5
    assert proto["seed"] == 0 and "stratify" in proto["method"]
    assert splits["test"].split_protocol["test_fraction"] == 0.25
    assert "val_fraction" not in splits["test"].split_protocol
    assert splits["val"].card()["split_protocol"] == proto
    # deterministic: the same seed gives the same split; another seed another one
    again = data.load_eurosat(tmp_path, **kw)
    for s in ("train", "val", "test"):
        assert [str(p) for p in again[s].paths] == [str(p) for p in splits[s].paths]
    other = data.load_eurosat(tmp_path, seed=1, **kw)
    assert _paths(other["test"]) != te or _paths(other["val"]) != va
    assert other["test"].counts() == splits["test"].counts()


def test_torchvision_layout_too_small_for_split_is_a_dataset_error(tmp_path, eurosat_jpegs):
    _write_class_folders(tmp_path / "2750", {c: f[:2] for c, f in eurosat_jpegs.items()})
    with pytest.raises(DatasetError, match=r"cannot hold out a .* need at least 2 images.*val_fraction"):
        data.load_eurosat(tmp_path)  # 20 images: a 10% val split cannot hold one image per class


# ------------------------------------------------------------------------------ Kaggle CSV splits
def _write_kaggle(folder: Path, images, split_files=("train.csv", "validation.csv", "test.csv")) -> dict:
    """Kaggle's EuroSAT copy: class folders plus split CSVs with columns ``,Filename,Label,ClassName``."""
    _write_class_folders(folder, images)
    parts = {"train.csv": slice(0, 4), "validation.csv": slice(4, 6), "test.csv": slice(6, 8)}
    if "validation.csv" not in split_files:
        parts["train.csv"] = slice(0, 6)
    listed = {}
    for fname in split_files:
        rows = [(cls, name) for cls in EUROSAT_CLASSES for name, _ in images[cls][parts[fname]]]
        listed[fname] = rows
        with open(folder / fname, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "Filename", "Label", "ClassName"])
            for i, (cls, name) in enumerate(rows):
                w.writerow([i, f"{cls}/{name}", EUROSAT_CLASSES.index(cls), cls])
    (folder / "label_map.json").write_text(json.dumps({c: i for i, c in enumerate(EUROSAT_CLASSES)}))
    return listed


def test_kaggle_csv_layout_uses_the_split_files(tmp_path, eurosat_jpegs):
    listed = _write_kaggle(tmp_path / "EuroSAT", eurosat_jpegs)
    splits = data.load_eurosat(tmp_path)
    assert set(splits) == {"train", "val", "test"}
    for split, fname in (("train", "train.csv"), ("val", "validation.csv"), ("test", "test.csv")):
        s = splits[split]
        assert s.layout == "csv-splits"
        assert s.classes == EUROSAT_CLASSES
        assert s.classnames == [EUROSAT_CLASSNAMES[c] for c in EUROSAT_CLASSES]
        assert s.split_protocol["source"] == f"split file {fname}"
        _check_consistent(s)
        expected = {str((tmp_path / "EuroSAT" / cls / name).resolve()) for cls, name in listed[fname]}
        assert _paths(s) == expected
    assert splits["train"].counts() == dict.fromkeys(EUROSAT_CLASSES, 4)
    assert splits["val"].counts() == dict.fromkeys(EUROSAT_CLASSES, 2)
    assert splits["test"].counts() == dict.fromkeys(EUROSAT_CLASSES, 2)


def test_kaggle_csv_without_validation_file_carves_val(tmp_path, eurosat_jpegs):
    _write_kaggle(tmp_path, eurosat_jpegs, split_files=("train.csv", "test.csv"))
    splits = data.load_eurosat(tmp_path, val_fraction=0.5)
    assert splits["val"].counts() == dict.fromkeys(EUROSAT_CLASSES, 3)
    assert splits["val"].split_protocol["val_from"] == "train"
    assert splits["val"].split_protocol["source"] == "split file train.csv"
    assert not _paths(splits["train"]) & _paths(splits["val"])


def test_kaggle_csv_listing_a_missing_file_is_an_error(tmp_path, eurosat_jpegs):
    _write_kaggle(tmp_path, eurosat_jpegs)
    (tmp_path / "Forest" / eurosat_jpegs["Forest"][7][0]).unlink()  # listed in test.csv
    with pytest.raises(DatasetError, match=re.escape(eurosat_jpegs["Forest"][7][0]) + r".*does not exist: looked"):
        data.load_eurosat(tmp_path)


def test_split_csv_label_column_is_the_class_not_the_files_folder(tmp_path):
    """Kaggle CSVs often keep every image in one images/ folder and the class name in ``label``."""
    for split in ("train", "test"):
        rows = ["filename,label"]
        for cls in ("Annual crop", "Forest"):
            _png(tmp_path / "images" / f"{split}-{cls}.png")
            rows.append(f"images/{split}-{cls}.png,{cls}")
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    splits = data.load_image_folder(tmp_path, val_fraction=0)
    assert splits["test"].classes == ["Annual crop", "Forest"]
    assert splits["test"].split_protocol["classes_from"] == "the label column's values"
    # integer ids with one folder per id: the folders name them, and the record says so
    for split in ("train", "test"):
        rows = ["filename,label"]
        for i, cls in enumerate(("Forest", "River")):
            _png(tmp_path / "byid" / cls / f"{split}.png")
            rows.append(f"{cls}/{split}.png,{i}")
        (tmp_path / "byid" / f"{split}.csv").write_text("\n".join(rows) + "\n")
    splits = data.load_image_folder(tmp_path / "byid", val_fraction=0)
    assert splits["test"].classes == ["Forest", "River"]
    assert "named by the folder" in splits["test"].split_protocol["classes_from"]


def test_split_csv_without_class_column_is_an_error(tmp_path):
    _png(tmp_path / "a" / "x.png")
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).write_text("Filename,Whatever\na/x.png,1\n")
    with pytest.raises(DatasetError, match="class column"):
        data.load_image_folder(tmp_path)


# ----------------------------------------------------------------------------- load_eurosat errors
def test_load_eurosat_on_a_folder_without_eurosat_classes(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(10):
            _png(tmp_path / cls / f"{i}.png", rgb=(i * 20, 0, 0))
    assert data.load_image_folder(tmp_path)["test"].classes == ["cat", "dog"]  # fine as a generic folder
    with pytest.raises(DatasetError, match="EuroSAT's 10 classes") as e:
        data.load_eurosat(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_load_eurosat_with_a_class_missing(tmp_path, eurosat_jpegs):
    _write_class_folders(tmp_path / "2750", {c: f for c, f in eurosat_jpegs.items() if c != "River"})
    with pytest.raises(DatasetError, match="EuroSAT's 10 classes"):
        data.load_eurosat(tmp_path, test_fraction=0.25, val_fraction=0.5)


def test_load_eurosat_on_an_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no class folders"):
        data.load_eurosat(tmp_path)


def test_missing_eurosat_folder_says_where_and_how_to_fix(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as e:
        data.load_eurosat(missing)
    msg = str(e.value)
    assert str(missing) in msg
    assert "CLIPLAB_DATA" in msg and "download" in msg and "train/" in msg
    # the default location comes from CLIPLAB_DATA and is named too
    monkeypatch.setenv("CLIPLAB_DATA", str(tmp_path / "datasets"))
    with pytest.raises(DatasetError) as e:
        data.load_eurosat()
    assert str(tmp_path / "datasets" / "eurosat_rgb") in str(e.value)


# ----------------------------------------------------------------------------- user's image folder
def _user_folder(root: Path, classes=("cats", "dogs", "owls"), n=10) -> Path:
    for ci, cls in enumerate(classes):
        for i in range(n):
            sub = "nested/" if i % 3 == 0 else ""
            _png(root / cls / f"{sub}{i:02d}.png", rgb=(ci * 80, i * 20, 0))
        (root / cls / "notes.txt").write_text("not an image")
        _png(root / cls / ".hidden.png")
    (root / ".ipynb_checkpoints").mkdir()
    return root


def test_generic_image_folder(tmp_path):
    root = _user_folder(tmp_path / "pets")
    with pytest.raises(DatasetError, match=r"class folders hold sub-folders \(cats/: nested.*recursive: true"):
        data.load_image_folder(root)  # nested/ could be a class or more cats: never guessed
    splits = data.load_image_folder(root, recursive=True)
    test, val, train = splits["test"], splits["val"], splits["train"]
    for s in splits.values():
        assert s.classes == ["cats", "dogs", "owls"]
        assert s.classnames == ["cats", "dogs", "owls"]  # folder names: not EuroSAT
        assert s.name == "pets" and s.layout == "class-folders"
        _check_consistent(s)
        assert all(Path(p).suffix == ".png" and not Path(p).name.startswith(".") for p in s.paths)
    # 30 images (nested ones included, notes/hidden files not): 20% test, then 10% of the rest to val
    assert test.counts() == {"cats": 2, "dogs": 2, "owls": 2}
    assert len(val) == 3 and set(val.counts().values()) == {1}
    assert len(train) == 21
    assert len(_paths(train) | _paths(val) | _paths(test)) == 30
    assert test.split_protocol["skipped_files"] == 6  # notes.txt and .hidden.png of each class, listed
    named = data.load_image_folder(root, classnames=["a cat", "a dog", "an owl"], recursive=True)
    assert named["test"].classnames == ["a cat", "a dog", "an owl"]
    assert data.load_image_folder(root, name="mine", recursive=True)["test"].name == "mine"


def test_generic_folder_with_split_subfolders(tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("a", "b"):
            for i in range(3):
                _png(tmp_path / split / cls / f"{i}.png")
    splits = data.load_image_folder(tmp_path)
    assert {s: len(v) for s, v in splits.items()} == {"train": 6, "val": 6, "test": 6}
    assert splits["val"].split_protocol["source"] == "split folder val/"
    assert all("/val/" in Path(p).as_posix() for p in splits["val"].paths)


def test_test_folder_lacking_a_train_class_is_an_error(tmp_path):
    for split, classes in (("train", ("a", "b")), ("test", ("a",))):
        for cls in classes:
            _png(tmp_path / split / cls / "0.png")
    with pytest.raises(DatasetError, match=r"lacks class folders \['b'\]"):
        data.load_image_folder(tmp_path)


def test_fingerprint_changes_when_an_image_changes(tmp_path):
    root = _user_folder(tmp_path / "pets")
    before = data.load_image_folder(root, recursive=True)["test"]
    fp = before.fingerprint()
    assert data.load_image_folder(root, recursive=True)["test"].fingerprint() == fp
    victim = before.paths[0]
    _png(Path(victim), rgb=(1, 2, 3), size=20)
    assert data.load_image_folder(root, recursive=True)["test"].fingerprint() != fp


# --------------------------------------------------------------------------------------- synthetic
def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_dataset_is_deterministic(synthetic_root, tmp_path):
    again = synthetic.make_synthetic(tmp_path / "again")
    a, b = _tree_bytes(synthetic_root), _tree_bytes(again)
    assert len(a) == 8 * (24 + 12) + 2  # images + captions.csv + COMPLETE
    assert a == b
    other = _tree_bytes(synthetic.make_synthetic(tmp_path / "other", seed=1))
    assert set(other) == set(a)
    assert other["train/red_circle/red_circle_0000.png"] != a["train/red_circle/red_circle_0000.png"]
    # a finished folder is reused, not rewritten
    mtime = (again / "COMPLETE").stat().st_mtime_ns
    assert synthetic.make_synthetic(again) == again
    assert (again / "COMPLETE").stat().st_mtime_ns == mtime


def test_synthetic_classes_counts_and_names():
    splits = synthetic.load_synthetic()
    folders = sorted(synthetic.CLASSES)
    for s in splits.values():
        assert s.classes == folders
        assert s.classnames == [synthetic.CLASSNAMES[c] for c in folders]
        assert s.name == "synthetic"
        _check_consistent(s)
    assert splits["test"].counts() == dict.fromkeys(folders, 12)
    assert splits["val"].counts() == dict.fromkeys(folders, 6)  # 25% of 24
    assert splits["train"].counts() == dict.fromkeys(folders, 18)
    img, label, _ = splits["test"].dataset()[0]
    assert img.mode == "RGB" and img.size == (64, 64)


def test_synthetic_captions():
    caps = synthetic.load_synthetic_captions()
    assert isinstance(caps, data.CaptionSet)
    assert len(caps) == 8 * 12
    per_image = np.bincount(caps.caption_image, minlength=len(caps))
    assert per_image.min() >= 2 and per_image.max() <= 3
    assert len(caps.captions) == per_image.sum()
    for i in set(caps.caption_image.tolist()):
        assert Path(caps.images[i]).is_file()
        assert Path(caps.images[i]).parent.parent.name == "test"
    for i, img in enumerate(caps.images):
        first = caps.captions[int(np.flatnonzero(caps.caption_image == i)[0])]
        assert synthetic.CLASSNAMES[Path(img).parent.name] in first
    samples = caps.image_samples()
    assert len(samples) == len(caps) and samples.labels.tolist() == list(range(len(caps)))
    card = caps.card()
    assert card["n_images"] == 96 and card["n_captions"] == len(caps.captions)


# ---------------------------------------------------------------------------------------- captions
def test_captions_csv_with_several_captions_per_image(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / "img" / name)
    (tmp_path / "caps.csv").write_text(
        "image,caption\nimg/a.png,first of a\nimg/b.png,only b\nimg/a.png,second of a\n"
        "img/c.png,c one\nimg/c.png,c two\nimg/c.png,c three\n")
    caps = data.load_captions_csv(tmp_path / "caps.csv")
    assert [Path(p).name for p in caps.images] == ["a.png", "b.png", "c.png"]
    assert caps.captions == ["first of a", "only b", "second of a", "c one", "c two", "c three"]
    assert caps.caption_image.tolist() == [0, 1, 0, 2, 2, 2]
    assert caps.name == "caps" and caps.layout == "captions-csv"
    # another image root and other column names
    (tmp_path / "other.csv").write_text("filename,text\na.png,x\n")
    caps2 = data.load_captions_csv(tmp_path / "other.csv", image_root=tmp_path / "img", name="n")
    assert caps2.captions == ["x"] and caps2.name == "n"


def test_captions_csv_errors(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "missing.csv").write_text("image,caption\na.png,ok\nnope.png,gone\n")
    with pytest.raises(DatasetError, match="nope.png"):
        data.load_captions_csv(tmp_path / "missing.csv")
    (tmp_path / "cols.csv").write_text("picture,words\na.png,x\n")
    with pytest.raises(DatasetError, match="columns"):
        data.load_captions_csv(tmp_path / "cols.csv")
    (tmp_path / "empty.csv").write_text("image,caption\n")
    with pytest.raises(DatasetError, match="empty"):
        data.load_captions_csv(tmp_path / "empty.csv")


def _karpathy(tmp_path: Path) -> Path:
    for rel in ("val2014/x.jpg", "val2014/y.jpg", "train2014/z.jpg", "flat.jpg"):
        _png(tmp_path / "images" / rel)
    doc = {"images": [
        {"filepath": "val2014", "filename": "x.jpg", "split": "test",
         "sentences": [{"raw": "x one", "tokens": ["x", "one"]}, {"raw": "x two"}, {"tokens": ["x", "three"]}]},
        {"filepath": "train2014", "filename": "z.jpg", "split": "train", "sentences": [{"raw": "z one"}]},
        {"filepath": "val2014", "filename": "y.jpg", "split": "test", "sentences": [{"raw": "y one"}, {"raw": "y two"}]},
        {"filename": "flat.jpg", "split": "val", "sentences": [{"raw": "flat"}]},
    ]}
    path = tmp_path / "dataset_flickr.json"
    path.write_text(json.dumps(doc))
    return path


def test_captions_karpathy_json(tmp_path):
    path = _karpathy(tmp_path)
    test = data.load_captions_karpathy(path, tmp_path / "images", split="test")
    assert [Path(p).relative_to(tmp_path / "images").as_posix() for p in test.images] == \
        ["val2014/x.jpg", "val2014/y.jpg"]
    assert test.captions == ["x one", "x two", "x three", "y one", "y two"]
    assert test.caption_image.tolist() == [0, 0, 0, 1, 1]
    assert test.layout == "karpathy-json:test"
    train = data.load_captions_karpathy(path, tmp_path / "images", split="train")
    assert [Path(p).name for p in train.images] == ["z.jpg"]
    val = data.load_captions_karpathy(path, tmp_path / "images", split="val")
    assert [Path(p).name for p in val.images] == ["flat.jpg"]
    everything = data.load_captions_karpathy(path, tmp_path / "images", split=None)
    assert len(everything) == 4 and len(everything.captions) == 7
    assert test.card()["fingerprint"] != everything.card()["fingerprint"]


def test_captions_karpathy_errors(tmp_path):
    path = _karpathy(tmp_path)
    with pytest.raises(DatasetError, match="restval"):
        data.load_captions_karpathy(path, tmp_path / "images", split="restval")
    (tmp_path / "images" / "val2014" / "y.jpg").unlink()
    with pytest.raises(DatasetError, match="y.jpg"):
        data.load_captions_karpathy(path, tmp_path / "images")


# ------------------------------------------------------------------------------------- class names
@pytest.fixture
def tiny_eurosat(tmp_path, eurosat_jpegs) -> Path:
    _write_class_folders(tmp_path / "2750", eurosat_jpegs)
    return tmp_path


KW = {"test_fraction": 0.25, "val_fraction": 0.5}


def test_eurosat_literature_names_by_default(tiny_eurosat):
    s = data.load_eurosat(tiny_eurosat, **KW)["test"]
    assert dict(zip(s.classes, s.classnames, strict=True)) == EUROSAT_CLASSNAMES
    assert s.classnames[s.classes.index("HerbaceousVegetation")] == "brushland or shrubland"


def test_partial_dict_overrides_only_the_named_classes(tiny_eurosat):
    s = data.load_eurosat(tiny_eurosat, classnames={"Forest": "woodland", "SeaLake": "water"}, **KW)["test"]
    expected = {**EUROSAT_CLASSNAMES, "Forest": "woodland", "SeaLake": "water"}
    assert dict(zip(s.classes, s.classnames, strict=True)) == expected
    # the same on an already loaded dataset: unnamed classes keep their current names
    again = s.with_classnames({"River": "stream"})
    assert dict(zip(again.classes, again.classnames, strict=True)) == {**expected, "River": "stream"}
    assert again.paths == s.paths and s.classnames[s.classes.index("River")] == "river"


def test_list_of_class_names(tiny_eurosat):
    names = [f"class {i}" for i in range(10)]
    s = data.load_eurosat(tiny_eurosat, classnames=names, **KW)["val"]
    assert s.classnames == names
    assert s.with_classnames(tuple(reversed(names))).classnames == names[::-1]


def test_class_name_dict_with_unknown_key_names_it(tiny_eurosat):
    with pytest.raises(DatasetError, match="Forrest") as e:
        data.load_eurosat(tiny_eurosat, classnames={"Forrest": "forest", "River": "river"}, **KW)
    assert "River" not in str(e.value).split("which")[0]  # only the unknown key is blamed
    s = data.load_eurosat(tiny_eurosat, **KW)["test"]
    with pytest.raises(DatasetError, match="Sea_Lake"):
        s.with_classnames({"Sea_Lake": "sea"})


def test_class_name_list_of_wrong_length(tiny_eurosat):
    with pytest.raises(DatasetError, match="9 class names given for 10 classes"):
        data.load_eurosat(tiny_eurosat, classnames=[f"c{i}" for i in range(9)], **KW)
    s = data.load_eurosat(tiny_eurosat, **KW)["test"]
    with pytest.raises(DatasetError, match="11 class names"):
        s.with_classnames([f"c{i}" for i in range(11)])


def test_resolve_classnames_directly():
    classes = ["a", "b", "c"]
    assert data.resolve_classnames(classes) == classes
    assert data.resolve_classnames(classes, {"b": "bee"}) == ["a", "bee", "c"]
    assert data.resolve_classnames(classes, {"b": "bee"}, ["A", "B", "C"]) == ["A", "bee", "C"]
    assert data.readable_classnames(["Forest", "River"])[0] == ["forest", "river"]
    assert data.readable_classnames(["forest", "cat"]) == (["forest", "cat"], [])


def test_samples_reject_mismatched_lengths(tmp_path):
    p = _png(tmp_path / "a" / "x.png")
    with pytest.raises(DatasetError, match="1 paths but 2 labels"):
        data.Samples("s", tmp_path, "class-folders", "all", [p], [0, 0], ["a"], ["a"])
    with pytest.raises(DatasetError, match="class names"):
        data.Samples("s", tmp_path, "class-folders", "all", [p], [0], ["a"], ["a", "b"])



def test_split_with_a_class_train_lacks_is_an_error(tmp_path):
    from PIL import Image

    from helpers.data import DatasetError, load_image_folder

    for split, classes in (("train", ["a", "b"]), ("test", ["a", "b", "c"])):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / split / c / "x.png")
    with pytest.raises(DatasetError, match="same class folders"):
        load_image_folder(tmp_path, val_fraction=0)
