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
# JPEGs per class folder of the release torchvision downloads (27,000 in all): a download is complete
# only when every folder holds exactly these (an interrupted extraction leaves fewer)
EUROSAT_COUNTS = {"AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000, "Highway": 2500,
                  "Industrial": 2500, "Pasture": 2000, "PermanentCrop": 2500, "Residential": 3000,
                  "River": 2500, "SeaLake": 3000}
TORCHVISION_ARCHIVE = "EuroSAT.zip"  # what torchvision leaves in <root>/eurosat/: the mark of its download


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
    elif is_torchvision_download(root) and download_missing(root):
        if not download:
            raise DatasetError(incomplete_message(root))
        download_eurosat(root, redo=True)
    kwargs.setdefault("name", "eurosat")
    kwargs.setdefault("default_names", EUROSAT_CLASSNAMES)
    splits = load_image_folder(root, **kwargs)
    classes = splits["test"].classes
    if set(classes) != set(EUROSAT_CLASSES):
        raise DatasetError(f"{root} does not hold EuroSAT's 10 classes: found {classes}")
    return splits


def is_torchvision_download(root: Path) -> bool:
    """Did torchvision download into ``root``? It leaves ``eurosat/EuroSAT.zip`` (a hand-made
    ``eurosat/2750`` subset has no archive and is read as it is)."""
    return (Path(root) / "eurosat" / TORCHVISION_ARCHIVE).exists()


def download_missing(root: Path) -> dict[str, tuple[int, int]]:
    """{class: (JPEGs found, JPEGs in the release)} of every class folder of torchvision's
    ``<root>/eurosat/2750`` that does not hold the release's count (empty: the download is complete)."""
    folder = Path(root) / "eurosat" / "2750"
    found = {}
    for cls, expected in EUROSAT_COUNTS.items():
        d = folder / cls
        n = sum(1 for p in d.iterdir() if p.suffix.lower() == ".jpg" and p.is_file()) if d.is_dir() else 0
        if n != expected:
            found[cls] = (n, expected)
    return found


def incomplete_message(root: Path) -> str:
    """What an interrupted download left, and the two ways to fix it."""
    missing = download_missing(root)
    folder = Path(root) / "eurosat" / "2750"
    have = sum(n for n, _ in missing.values()) + sum(v for c, v in EUROSAT_COUNTS.items() if c not in missing)
    shown = ", ".join(f"{c} {n}/{e}" for c, (n, e) in missing.items())
    return (f"EuroSAT at {folder} is an incomplete torchvision download (an interrupted download or "
            f"extraction): {have:,} of {sum(EUROSAT_COUNTS.values()):,} JPEGs; short: {shown}. It is not read "
            f"as the dataset. Delete {Path(root) / 'eurosat'} and download again, or re-run with the download "
            "allowed (dataset.download: true), which re-extracts the verified archive or fetches it again")


def download_eurosat(root: Path, redo: bool = False) -> Path:
    """torchvision's checksummed EuroSAT download (one folder per class, ``<root>/eurosat/2750``), then
    verified by count: torchvision only checks that ``2750/`` exists, so an interrupted extraction would
    otherwise be read as the dataset. ``redo`` drops an incomplete ``2750/`` first (torchvision then
    re-extracts its archive when the archive's md5 is right, else downloads it again)."""
    import shutil

    from torchvision.datasets import EuroSAT

    root.mkdir(parents=True, exist_ok=True)
    if redo:
        shutil.rmtree(root / "eurosat" / "2750", ignore_errors=True)
    try:
        EuroSAT(str(root), download=True)
    except (OSError, RuntimeError) as e:  # no network, a bad archive, a full disk
        raise DatasetError(f"EuroSAT could not be downloaded to {root / 'eurosat'} ({type(e).__name__}: {e}); "
                           "check the network (HTTPS_PROXY), or copy the dataset there or to "
                           "$CLIPLAB_DATA/eurosat_rgb") from e
    if download_missing(root):
        raise DatasetError(incomplete_message(root))
    return root
