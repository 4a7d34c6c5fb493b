"""The test run's own folders, for tests and notebooks alike (``python -m pytest`` collects both).

Notebooks executed by nbmake inherit this process's environment: they run the ``smoke`` profile, with
one cache and one output folder per run, fresh and removed at the end, so a test run never reads a
user's cache nor writes records into this tree. Tests get folders of their own on top
(``tests/conftest.py``); the notebooks nbmake executes use these. ``tests/test_suite.py`` runs the smoke
suite cold on this cache, and nbmake (collected after ``tests/``) then reruns each notebook on what that
run cached -- trained checkpoints and encoded features -- into an output folder of its own: each
notebook is still executed cell by cell under nbmake, and its cold path was just exercised by the suite.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_BASE: Path | None = None


def pytest_configure(config):
    global _BASE
    _BASE = Path(tempfile.mkdtemp(prefix="cliplab-tests-"))
    os.environ["CLIPLAB_PROFILE"] = "smoke"
    for var, sub in (("CLIPLAB_CACHE", "cache"), ("CLIPLAB_OUT", "out-nbmake")):
        os.environ[var] = str(_BASE / sub)


def pytest_unconfigure(config):
    if _BASE is not None:
        shutil.rmtree(_BASE, ignore_errors=True)


@pytest.fixture(scope="session")
def run_cache() -> Path:
    """The test run's cache, the one nbmake's notebook runs use."""
    return _BASE / "cache"
