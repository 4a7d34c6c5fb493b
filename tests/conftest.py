"""Shared fixtures: every test runs with its own cache and output folders; real data only when configured."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def isolated_folders(tmp_path_factory, monkeypatch):
    """Each test gets fresh cache/output folders so no test reads another's cache or records.

    The synthetic dataset is made once per session (in a shared folder) because it is deterministic.
    """
    base = tmp_path_factory.mktemp("run")
    monkeypatch.setenv("CLIPLAB_CACHE", str(base / "cache"))
    monkeypatch.setenv("CLIPLAB_OUT", str(base / "out"))
    monkeypatch.setenv("CLIPLAB_WORKERS", os.environ.get("CLIPLAB_WORKERS", "0"))
    yield base


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from helpers.data import synthetic

    return synthetic.make_synthetic(tmp_path_factory.mktemp("synthetic") / "data")


@pytest.fixture(scope="session")
def eurosat_root() -> Path:
    """The real EuroSAT folder under CLIPLAB_DATA; tests that need it are skipped with a reason otherwise."""
    data = os.environ.get("CLIPLAB_DATA", "").strip()
    if not data:
        pytest.skip("real-data test: set CLIPLAB_DATA to the folder holding eurosat_rgb/")
    root = Path(data).expanduser() / "eurosat_rgb"
    if not (root / "test").is_dir():
        pytest.skip(f"real-data test: {root} has no test/ folder")
    return root


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small shared machine, torch's threads otherwise contend with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_network(monkeypatch):
    """Every download attempt fails at once (as offline) instead of hanging; records the URLs tried."""
    tried = []

    def offline(url, *args, **kwargs):
        tried.append(getattr(url, "full_url", url))
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "urlopen", offline)  # torch.hub imported the name itself
    return tried
