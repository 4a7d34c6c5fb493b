"""Prompt templates as data, and class-name synonyms; ensembles are built in :mod:`helpers.zeroshot`."""

from __future__ import annotations

# CLIP's published EuroSAT prompts (openai/CLIP, data/prompts.md).
OPENAI_EUROSAT = ["a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                  "a centered satellite photo of the {}."]

# The 7-template ImageNet ensemble the CLIP authors found best on ImageNet (a generic ensemble).
GENERIC_ENSEMBLE = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                    "a {} in a video game.", "art of the {}.", "a photo of the small {}."]

# Variants of the kind hand-written notebooks use.
SEED_STYLE = ["a satellite photo of {}.", "a photo of a {}.", "satellite imagery of {}.",
              "an aerial photo of {}.", "a photo of {}, a type of land use."]

TEMPLATE_SETS: dict[str, list[str]] = {
    "plain": ["{}"],
    "satellite": ["a satellite photo of {}."],
    "centered-satellite": ["a centered satellite photo of {}."],
    "photo": ["a photo of a {}."],
    "openai-eurosat": OPENAI_EUROSAT,
    "seed-style": SEED_STYLE,
    "generic-ensemble": GENERIC_ENSEMBLE,
}
DEFAULT_TEMPLATES = "centered-satellite"


def templates(name_or_list) -> list[str]:
    """A template-set name from :data:`TEMPLATE_SETS`, or a list of templates and set names, validated."""
    if isinstance(name_or_list, str):
        if name_or_list in TEMPLATE_SETS:
            found = TEMPLATE_SETS[name_or_list]
        elif "{}" in name_or_list:
            found = [name_or_list]
        else:
            raise KeyError(f"unknown template set {name_or_list!r}; known: {sorted(TEMPLATE_SETS)} "
                           "(or pass a template containing '{}')")
    else:  # a list of templates and/or set names
        found = [t for item in name_or_list for t in (TEMPLATE_SETS.get(item) or [item])]
    for t in found:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain '{{}}' exactly once")
    if not found:
        raise ValueError("no templates given")
    return list(found)


def format_prompts(classnames: list[str], templates_: list[str]) -> list[str]:
    """Class-major list: all templates of class 0, then class 1, ..."""
    return [t.format(c) for c in classnames for t in templates_]


def synonyms(classname: str) -> list[str]:
    """'brushland or shrubland' -> ['brushland', 'shrubland'] (literature names list synonyms with 'or')."""
    return [s.strip() for s in classname.split(" or ") if s.strip()] or [classname]
