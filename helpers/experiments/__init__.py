"""Layer 6, the experiments: one module per notebook, each with ``run(P, ...)`` and an ``EXPERIMENT``
declaration, registered here in notebook order. The report, the suite and the comparison table
iterate over :data:`REGISTRY`; adding an experiment is one module (declaring its :class:`Experiment`)
plus one notebook.

    common                what they share: Outcome, figures, encoding, training settings
    zero_shot             01   prompt_validation     02   upsampling        03
    few_shot              04   imagenet_baselines    05   clip_finetune     06
    proxy_tuning          07
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

MODULES = ("zero_shot", "prompt_validation", "upsampling", "few_shot", "imagenet_baselines", "clip_finetune",
           "proxy_tuning")


@dataclass(frozen=True)
class Pivot:
    """How the report lays out an experiment's ``metric`` (test top-1 by default): one row per value
    of the ``rows`` keys, one column per value of the ``columns`` keys, each cell the mean and 95%
    CI over seeds. Keys are facet names, ``model`` (its short name) or ``dataset`` (with ``dataset``
    among the columns, datasets stand side by side instead of in tables of their own)."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    metric: str = "top1"


@dataclass(frozen=True)
class Experiment:
    """What the rest of the lab needs to know about an experiment.

    ``summarise(records) -> DataFrame``: the report's table of its results (None: the plain results
    table). ``comparison(record) -> column | None``: the column of the side-by-side table a record
    fills (None: it fills none); ``comparison_columns`` orders those columns. ``pivot``: the layout of
    its classification results in the report (None: one row per result, metrics as columns).
    ``headline(figure path) -> bool``: the figures the report's summary shows beside the table.
    """

    id: str  # the records' ``experiment`` field, and the notebook's file stem
    title: str
    section: str | None = None  # its settings section
    summarise: Callable[[list[dict]], pd.DataFrame] | None = None
    comparison: Callable[[dict], str | None] | None = None
    comparison_columns: tuple[str, ...] = field(default_factory=tuple)
    needs: tuple[str, ...] = ("train", "val", "test")  # the dataset splits it reads
    pivot: Pivot | None = None
    # which of its figures carry the study onto the report's first page (by file name; trained results only)
    headline: Callable[[str], bool] | None = None

    def lacks(self, splits) -> list[str]:
        """The splits it needs that ``splits`` (names) does not have."""
        return [s for s in self.needs if s not in splits]

    @property
    def number(self) -> str:
        return self.id[:2]

    @property
    def notebook(self) -> str:
        return f"{self.id}.ipynb"


def registry() -> list[Experiment]:
    """Every experiment in notebook order (imports their modules)."""
    found = [importlib.import_module(f"{__name__}.{m}").EXPERIMENT for m in MODULES]
    return sorted(found, key=lambda e: e.id)


def by_id() -> dict[str, Experiment]:
    return {e.id: e for e in registry()}
