"""Your dataset, first-class: tiny fake copies of the layouts users bring (Kaggle-style split folders
with ``valid``, class folders only, nested folders, one class, 100 classes x 5 images, prefixed and
upper-case names, captions beside an ``images/`` folder), and what the lab makes of each: classes,
counts, splits, readable names and templates, or an error that says what to write in a card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import data, profiles
from helpers.core.errors import ConfigError, DatasetError
from helpers.data import cards
from helpers.eval import probes

ROOT = Path(__file__).resolve().parents[1]


def _img(path: Path, seed: int = 0, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _classes(folder: Path, classes, n: int, ext: str = ".jpg") -> Path:
    for ci, cls in enumerate(classes):
        for i in range(n):
            _img(folder / cls / f"{i:03d}{ext}", seed=ci * 1000 + i)
    return folder


BIRDS = ("ABBOTTS BABBLER", "AFRICAN CROWNED CRANE", "ALBATROSS")


def test_kaggle_split_folders_with_valid_and_upper_case_classes(tmp_path):
    root = tmp_path / "birds-525"
    for split, n in (("train", 6), ("valid", 2), ("test", 2)):
        _classes(root / split, BIRDS, n)
    splits = data.load_image_folder(root)
    assert set(splits) == {"train", "val", "test"}
    assert {k: len(v) for k, v in splits.items()} == {"train": 18, "val": 6, "test": 6}
    assert splits["val"].split_protocol["source"] == "split folder valid/"  # 'valid' is the val split
    assert splits["test"].classes == list(BIRDS) and splits["test"].layout == "split-folders"
    assert splits["test"].classnames == ["abbotts babbler", "african crowned crane", "albatross"]
    assert "case folded" in splits["test"].split_protocol["classnames_from"]


def test_split_names_are_recognised_in_any_case_and_an_archive_top_folder_is_entered(tmp_path):
    root = tmp_path / "download"
    for split in ("Train", "Validation", "TEST"):
        _classes(root / "fruits" / split, ("apple", "pear"), 3)
    splits = data.load_image_folder(root)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 6, "test": 6}
    assert splits["test"].split_protocol["layout_start"] == "fruits"


def test_the_archive_a_folder_came_from_does_not_stop_the_descent_but_split_csvs_do(tmp_path):
    """torchvision's EuroSAT download leaves EuroSAT.zip beside eurosat/2750: still the class folders."""
    root = tmp_path / "eurosat_rgb"
    _classes(root / "eurosat" / "2750", ("Forest", "River"), 4)
    (root / "eurosat" / "EuroSAT.zip").write_bytes(b"PK")
    (root / "README.txt").write_text("downloaded")
    layout, start, _ = data.detect_layout(root)
    assert (layout, start) == ("class-folders", root / "eurosat" / "2750")
    assert data.load_image_folder(root)["test"].split_protocol["layout_start"] == "eurosat/2750"
    csvs = tmp_path / "kaggle"
    _classes(csvs / "images", ("Forest", "River"), 2)
    for split in ("train", "test"):
        (csvs / f"{split}.csv").write_text("Filename,ClassName\nimages/Forest/000.jpg,Forest\n"
                                           "images/River/000.jpg,River\n")
    assert data.detect_layout(csvs)[:2] == ("csv-splits", csvs)


def test_only_test_and_valid_loads_without_train_and_only_valid_is_refused(tmp_path):
    both = tmp_path / "both"
    for split in ("test", "valid"):
        _classes(both / split, ("cat", "dog"), 3)
    splits = data.load_image_folder(both)
    assert set(splits) == {"val", "test"} and splits["test"].classes == ["cat", "dog"]
    only = tmp_path / "only"
    _classes(only / "valid", ("cat", "dog"), 3)
    with pytest.raises(DatasetError, match=r"no test split.*splits: \{test: valid\}"):
        data.load_image_folder(only)
    card = cards.DatasetCard(kind="folder", root=str(only), splits={"test": "valid"})
    assert set(cards.load_splits(card)) == {"test"}  # named in a card, it is the test split


def test_split_and_class_folders_mixed_is_ambiguous(tmp_path):
    _classes(tmp_path / "train", ("a", "b"), 2)
    _classes(tmp_path, ("Forest",), 2)
    with pytest.raises(DatasetError, match=r"mixes split folders \(train\) with other folders \(Forest\)"):
        data.load_image_folder(tmp_path)


def test_class_folders_only_get_a_stratified_split_even_with_100_classes_of_5_images(tmp_path):
    classes = [f"species_{i:03d}" for i in range(100)]
    root = _classes(tmp_path / "lab", classes, 5, ext=".png")
    splits = data.load_image_folder(root)
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "val": 100, "test": 100}
    for s in splits.values():
        assert set(s.counts().values()) == ({3} if s.split == "train" else {1})
    assert "raised to one per class" in splits["val"].split_protocol["val_images"]
    zero_shot = data.load_image_folder(root, test_fraction=1)  # every image evaluated
    assert set(zero_shot) == {"test"} and len(zero_shot["test"]) == 500


def test_a_class_too_small_for_the_split_is_named(tmp_path):
    root = _classes(tmp_path / "ds", ("big", "tiny"), 6)
    for p in sorted((root / "tiny").iterdir())[1:]:
        p.unlink()
    with pytest.raises(DatasetError, match=r"'tiny' \(1 image\) need at least 2 images.*test_fraction"):
        data.load_image_folder(root)


def test_nested_folders_are_an_error_unless_recursive(tmp_path):
    root = _classes(tmp_path / "eurosat-like", ("Forest", "River"), 4)
    _img(root / "Forest" / "rejected" / "x.jpg")
    with pytest.raises(DatasetError, match=r"Forest/: rejected.*recursive: true"):
        data.load_image_folder(root)
    splits = data.load_image_folder(root, recursive=True, val_fraction=0)
    assert sum(s.counts()["Forest"] for s in splits.values()) == 5
    (root / "Forest" / "rejected" / "x.jpg").unlink()
    (root / "Forest" / "rejected").rmdir()
    (root / "River" / ".thumbs").mkdir()  # hidden folders are not data
    _img(root / "River" / ".thumbs" / "t.jpg")
    (root / "River" / "readme.txt").write_text("x")
    test = data.load_image_folder(root)["test"]
    assert test.split_protocol["skipped_files"] == 2  # named, not silently dropped
    assert "readme.txt" in " ".join(test.split_protocol["skipped_examples"])


def test_one_class_is_not_a_classification_task(tmp_path):
    root = _classes(tmp_path / "one", ("cats",), 6)
    with pytest.raises(DatasetError, match=r"one class \('cats'\)"):
        data.load_image_folder(root)


def test_readable_names_from_prefixed_and_indexed_folders():
    assert data.readable_classnames(["aGrass", "bSoil", "cWater"])[0] == ["grass", "soil", "water"]
    names, rules = data.readable_classnames(["001.Black_footed_Albatross", "002.Laysan_Albatross"])
    assert names == ["black footed albatross", "laysan albatross"] and "numeric index" in rules[0]
    assert data.readable_classnames(["AnnualCrop", "SeaLake"])[0] == ["annual crop", "sea lake"]
    assert data.readable_classnames(["USA flag", "UK flag"])[0] == ["USA flag", "UK flag"]  # acronyms kept
    assert data.readable_classnames(["aGrass", "Soil"])[0] == ["a grass", "soil"]  # not every class: no prefix


def test_a_card_file_names_root_classnames_file_templates_and_cap(tmp_path):
    root = _classes(tmp_path / "data" / "flowers", ("aRose", "bTulip"), 8)
    (tmp_path / "names.txt").write_text("red rose\ntulip\n")
    card_path = tmp_path / "flowers.yaml"
    card_path.write_text("name: flowers\nroot: data/flowers\nclassnames: names.txt\n"
                         "templates: ['a photo of a {}, a type of flower.']\nmax_per_class: 4\n")
    P = profiles.load("smoke", dataset=str(card_path))
    assert P.config.dataset.name == "flowers" and P["templates"] == ["a photo of a {}, a type of flower."]
    assert P["clip_finetune"]["templates"] == P["templates"]  # every notebook prompts the same way
    splits = P.dataset()
    assert splits["test"].classnames == ["red rose", "tulip"]
    assert all(max(s.counts().values()) <= 4 for s in splits.values())
    assert splits["train"].split_protocol["max_per_class"] == 4
    # the same folder given bare gets readable names and the generic photo templates
    bare = profiles.load("smoke", dataset=str(root))
    assert bare.config.dataset.label() == "flowers" and bare["templates"] == "photo"
    assert bare.dataset()["test"].classnames == ["rose", "tulip"]


def test_card_and_dataset_errors_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        profiles.load("smoke", dataset=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("root: x\nclasnames: [a]\n")
    with pytest.raises(ConfigError, match="unknown key 'dataset.clasnames'.*did you mean 'dataset.classnames'"):
        profiles.load("smoke", dataset=str(bad))
    with pytest.raises(ConfigError, match="extra_datasets is a list"):
        profiles.load("smoke", {"extra_datasets": "/data/folder"})


def test_extra_datasets_are_cards_with_every_option(tmp_path):
    root = _classes(tmp_path / "Pets", ("Cat", "Dog"), 4)
    P = profiles.load("smoke", {"extra_datasets": [str(root), {"root": str(root), "name": "pets-all",
                                                                "test_fraction": 1, "classnames": {"Cat": "kitty"}}]})
    first, second = P.extra_datasets()
    assert first.name == "Pets" and len(first) == 2 and first.classnames == ["cat", "dog"]
    assert second.name == "pets-all" and len(second) == 8 and second.classnames == ["kitty", "dog"]


def _feats(rng, counts):
    """Cached-features stand-in: ``labels`` and class-shifted random ``features``."""
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return type("F", (), {"labels": labels, "features": rng.normal(size=(len(labels), 8)).astype(np.float32)
                          + labels[:, None]})


def test_k_shot_larger_than_a_class_is_skipped_with_a_note():
    rng = np.random.default_rng(0)
    notes: list[str] = []
    rows = probes.kshot_rows(_feats(rng, [5, 3]), _feats(rng, [3, 3]), _feats(rng, [3, 3]), 2, [1, 4, "all"], [0],
                             notes=notes)
    assert sorted({str(r["k"]) for r in rows}) == ["1", "all"]  # k=4 would have trained on 3 of class 1
    assert notes and "k=4 skipped" in notes[0] and "has 3" in notes[0]


def test_captions_csv_with_an_images_folder_beside_it(tmp_path):
    _img(tmp_path / "images" / "a.jpg")
    _img(tmp_path / "images" / "sub" / "b.jpg", seed=1)
    (tmp_path / "caps.csv").write_text("image,caption\na.jpg,a red thing\na.jpg,red\nsub/b.jpg,blue\n")
    caps = data.load_captions(tmp_path / "caps.csv")
    assert len(caps) == 2 and caps.caption_image.tolist() == [0, 0, 1]
    assert caps.images[0] == tmp_path / "images" / "a.jpg"
    doc = {"images": [{"filename": "a.jpg", "sentences": [{"raw": "x"}]}]}
    (tmp_path / "caps.json").write_text(json.dumps(doc))
    assert len(data.load_captions(tmp_path / "caps.json")) == 1  # a plain path to Karpathy JSON works
    with pytest.raises(DatasetError, match=r"names image c.jpg, which is in none of"):
        (tmp_path / "bad.csv").write_text("image,caption\nc.jpg,x\n")
        data.load_captions(tmp_path / "bad.csv")


def test_suite_on_a_folder_runs_what_applies_and_skips_what_needs_missing_splits(tmp_path):
    root = tmp_path / "kaggle"
    for split in ("test", "valid"):
        _classes(root / split, BIRDS, 3)
    env = {"CLIPLAB_OUT": str(tmp_path / "out"), "CLIPLAB_CACHE": str(tmp_path / "cache"), "CLIPLAB_WORKERS": "0",
           "PATH": "/usr/bin:/bin"}
    import os

    cmd = [sys.executable, "-m", "helpers.suite", "--profile", "smoke", "--dataset", str(root), "--only", "01,04",
           "--no-report", "-p", "models=[scratch:tiny-vit]", "--out", str(tmp_path / "runs")]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "skip   04_few_shot: dataset kaggle has no train split" in done.stderr
    recs = [json.loads(line) for line in
            (tmp_path / "out" / "supplementary" / "smoke" / "results" / "01_zero_shot.jsonl").read_text().splitlines()]
    assert {r["dataset"]["name"] for r in recs} == {"kaggle"}
    assert recs[0]["dataset"]["classnames"] == ["abbotts babbler", "african crowned crane", "albatross"]
    assert recs[0]["protocol"]["templates"] == ["a photo of a {}."]  # not a satellite prompt for birds


def test_suite_refuses_an_ambiguous_folder_before_any_notebook(tmp_path, capsys):
    from helpers import suite

    _classes(tmp_path / "train", ("a", "b"), 2)
    _classes(tmp_path, ("Forest",), 2)
    assert suite.main(["--profile", "smoke", "--dataset", str(tmp_path), "--no-report",
                       "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "mixes split folders" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_torchvision_dataset_by_name_is_read_from_its_split_files(tmp_path, monkeypatch):
    """``kind: torchvision`` reads the files a torchvision dataset keeps (here a stand-in with the
    attributes Flowers102/DTD/Food101 have: ``_image_files``, ``_labels``, ``classes``, ``split=``)."""
    import torchvision.datasets as tvd

    class FakeFlowers:
        def __init__(self, root, split="train", download=False):
            folder = Path(root) / "fake-flowers" / split
            if split not in ("train", "val", "test"):
                raise ValueError(split)
            if not folder.is_dir():
                raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
            self._image_files = sorted(folder.glob("*/*.jpg"))
            self.classes = sorted(p.name for p in folder.iterdir())
            self._labels = [self.classes.index(p.parent.name) for p in self._image_files]

    monkeypatch.setattr(tvd, "FakeFlowers", FakeFlowers, raising=False)
    card = cards.DatasetCard(kind="torchvision", torchvision="FakeFlowers", root=str(tmp_path))
    with pytest.raises(DatasetError, match="set download: true"):
        cards.load_splits(card)
    for split in ("train", "val", "test"):
        _classes(tmp_path / "fake-flowers" / split, ("pink primrose", "hard-leaved pocket orchid"), 2)
    splits = cards.load_splits(card)
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "val": 4, "test": 4}
    assert splits["test"].layout == "torchvision:FakeFlowers" and splits["test"].name == "fakeflowers"
    assert splits["test"].classnames == ["hard leaved pocket orchid", "pink primrose"]
    with pytest.raises(DatasetError, match="no dataset 'Nope'"):
        cards.load_splits(cards.DatasetCard(kind="torchvision", torchvision="Nope"))
