"""EuroSAT RGB (Helber et al.) in its three layouts, and torchvision's checksummed download."""

from __future__ import annotations

from pathlib import Path

from helpers.core import config
from helpers.core.errors import DatasetError
from helpers.data.layouts import load_image_folder
from helpers.data.samples import Samples

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
    kwargs.setdefault("default_names", EUROSAT_CLASSNAMES)
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
