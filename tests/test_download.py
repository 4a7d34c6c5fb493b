"""EuroSAT downloaded by torchvision is read only when it is complete (the release's count per class):
an interrupted download or extraction is refused with what is missing and how to fix it, or redone."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from helpers.core.errors import DatasetError
from helpers.data import eurosat


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 120, 60)).save(buf, format="JPEG")
    return buf.getvalue()


def _torchvision_folder(root, per_class: dict[str, int]):
    """What torchvision leaves: ``eurosat/EuroSAT.zip`` beside ``eurosat/2750/<class>/<class>_<i>.jpg``."""
    base = root / "eurosat"
    base.mkdir(parents=True, exist_ok=True)
    (base / "EuroSAT.zip").write_bytes(b"PK\x03\x04 not the real archive")
    data = _jpeg()
    for cls, n in per_class.items():
        (base / "2750" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (base / "2750" / cls / f"{cls}_{i + 1}.jpg").write_bytes(data)
    return root


def test_release_counts_are_eurosats():
    assert sum(eurosat.EUROSAT_COUNTS.values()) == 27_000
    assert sorted(eurosat.EUROSAT_COUNTS) == eurosat.EUROSAT_CLASSES


def test_an_interrupted_download_is_refused_with_what_is_missing(tmp_path):
    counts = {c: 4 for c in eurosat.EUROSAT_CLASSES}
    counts.pop("SeaLake")  # extraction stopped before the last class
    root = _torchvision_folder(tmp_path, counts)
    with pytest.raises(DatasetError) as e:
        eurosat.load_eurosat(root)
    msg = str(e.value)
    assert "incomplete torchvision download" in msg and str(root / "eurosat" / "2750") in msg
    assert "36 of 27,000 JPEGs" in msg and "SeaLake 0/3000" in msg and "AnnualCrop 4/3000" in msg
    assert f"Delete {root / 'eurosat'}" in msg and "dataset.download: true" in msg


def test_a_partial_archive_without_images_is_refused_too(tmp_path):
    (tmp_path / "eurosat").mkdir()
    (tmp_path / "eurosat" / "EuroSAT.zip").write_bytes(b"PK\x03\x04 half")  # the download itself was cut
    with pytest.raises(DatasetError, match="0 of 27,000 JPEGs"):
        eurosat.load_eurosat(tmp_path)


def test_with_download_allowed_it_is_fetched_again_offline_fails_clearly(tmp_path, no_network):
    root = _torchvision_folder(tmp_path, {c: 4 for c in eurosat.EUROSAT_CLASSES})
    with pytest.raises(DatasetError) as e:
        eurosat.load_eurosat(root, download=True)
    assert "could not be downloaded" in str(e.value) and "HTTPS_PROXY" in str(e.value)
    assert any("EuroSAT.zip" in str(u) for u in no_network)  # the bad archive was not trusted: fetched again
    assert not (root / "eurosat" / "2750").exists()  # the partial images are gone, never read


def test_with_download_allowed_an_incomplete_folder_is_redone_and_verified(tmp_path, monkeypatch):
    monkeypatch.setattr(eurosat, "EUROSAT_COUNTS", {c: 4 for c in eurosat.EUROSAT_CLASSES})  # a small "release"
    root = _torchvision_folder(tmp_path, {c: 4 if c != "River" else 1 for c in eurosat.EUROSAT_CLASSES})
    calls = []

    class FakeEuroSAT:  # torchvision re-extracting its verified archive
        def __init__(self, where, download=False):
            calls.append(download)
            _torchvision_folder(Path(where), eurosat.EUROSAT_COUNTS)

    monkeypatch.setattr("torchvision.datasets.EuroSAT", FakeEuroSAT)
    splits = eurosat.load_eurosat(root, download=True)
    assert calls == [True]
    assert sum(len(s) for s in splits.values()) == 40 and set(splits) == {"train", "val", "test"}
    again = eurosat.load_eurosat(root)  # complete now: read without any download
    assert sum(len(s) for s in again.values()) == 40 and calls == [True]


def test_a_download_that_stays_short_is_never_read(tmp_path, monkeypatch):
    monkeypatch.setattr(eurosat, "EUROSAT_COUNTS", {c: 4 for c in eurosat.EUROSAT_CLASSES})

    class ShortEuroSAT:
        def __init__(self, where, download=False):
            _torchvision_folder(Path(where), {c: 3 for c in eurosat.EUROSAT_CLASSES})

    monkeypatch.setattr("torchvision.datasets.EuroSAT", ShortEuroSAT)
    with pytest.raises(DatasetError, match="incomplete torchvision download"):
        eurosat.load_eurosat(tmp_path / "fresh", download=True)
