"""Class names for prompts: folder names -> readable names (a user's map or list wins)."""

from __future__ import annotations

import re

from helpers.core.errors import DatasetError


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


_INDEX = re.compile(r"^\d+[._\-\s]+")          # "001.Black_footed_Albatross"
_LETTER = re.compile(r"^[a-z](?=[A-Z][a-z])")   # "aGrass" (a letter that orders the folders)


def readable_classnames(classes: list[str]) -> tuple[list[str], list[str]]:
    """Readable names from folder names, and the rules applied (stated in the dataset's card).

    A prefix is dropped only when every class has one (an index such as ``001.``, or one lower-case
    letter before a capital such as ``aGrass``), so one odd name is never mangled; then separators
    (``_ - .``) become spaces, CamelCase is split, and case is folded except for acronyms.
    """
    names, rules = list(classes), []
    if len(names) > 1 and all(_INDEX.match(n) for n in names):
        names, rules = [_INDEX.sub("", n) for n in names], rules + ["dropped a numeric index prefix"]
    if len(names) > 1 and all(_LETTER.match(n) for n in names):
        names, rules = [n[1:] for n in names], rules + ["dropped a one-letter ordering prefix"]
    out = [_words(n) for n in names]
    if out != list(classes):
        rules.append("separators to spaces, CamelCase split, case folded (acronyms kept)")
    return out, rules


def _words(name: str) -> str:
    text = re.sub(r"[_\-.]+", " ", name)
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", text)
    words = text.split()
    shouting = name.upper() == name
    return " ".join(w.lower() if shouting or not (w.isupper() and len(w) > 1) else w for w in words) or name

