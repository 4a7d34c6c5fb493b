"""Class names for prompts: folder names -> readable names (a user's map or list wins)."""

from __future__ import annotations

from helpers.core.errors import DatasetError

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
