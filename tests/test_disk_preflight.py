"""The suite's disk preflight: the cache's filesystem must hold what the run will add (features,
checkpoints, exports, restored images), else exit 2 with one message before any work."""

from __future__ import annotations

import collections
import shutil

import pytest

from helpers import cache, suite
from helpers.core import config

Usage = collections.namedtuple("Usage", "total used free")


@pytest.fixture
def started(monkeypatch):
    """The notebooks the suite would run (none is executed: only the gate before them is tested)."""
    ran = []

    def fake_run(path, out_dir, parameters):
        ran.append(path.stem)
        return suite.NotebookRun(path.stem, 0.0, True)

    monkeypatch.setattr(suite, "run_notebook", fake_run)
    monkeypatch.setenv("CLIPLAB_PROFILE", "smoke")  # the suite sets it for its notebooks; restored after
    return ran


def test_a_tiny_filesystem_stops_the_suite_before_any_work(tmp_path, monkeypatch, capsys, started):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 << 20, (10 << 20) - 4096, 4096))
    code = suite.main(["--profile", "smoke", "--only", "04,06", "--no-report", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and started == []
    assert err.count("not enough disk") == 1 and "Traceback" not in err
    assert str(config.cache_dir()) in err and "4.0 KB free" in err  # the folder, needed vs free
    for fix in ("Free space", "python -m helpers.cache --prune", "CLIPLAB_CACHE", "--skip-preflight"):
        assert fix in err, fix


def test_with_room_the_suite_starts(tmp_path, monkeypatch, capsys, started):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(1 << 40, 0, 1 << 40))
    assert suite.main(["--profile", "smoke", "--only", "04,06", "--no-report", "--out", str(tmp_path / "runs")]) == 0
    assert started == ["04_few_shot", "06_clip_finetune"]
    assert "not enough disk" not in capsys.readouterr().err


def test_skip_preflight_skips_the_disk_check_too(tmp_path, monkeypatch, capsys, started):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(1, 1, 0))
    assert suite.main(["--profile", "smoke", "--only", "04", "--no-report", "--skip-preflight",
                       "--out", str(tmp_path / "runs")]) == 0
    assert started == ["04_few_shot"]


def test_the_estimate_follows_its_documented_formula(monkeypatch):
    n = {"train": 10, "val": 5, "test": 5}
    only_04 = cache.disk_needed({"models": ["scratch:tiny-vit"]}, n, ["04"])
    assert only_04.parts["features"] == 20 * 64 * 4 and only_04.peak == 0  # n x d x 4, tiny-vit d = 64
    assert cache.disk_needed({"models": ["scratch:tiny-vit"]}, n, ["01"]).parts["features"] == 5 * 64 * 4
    P = cache.CLIP_ARCHS["RN50"][0]
    ft = cache.disk_needed({"clip_finetune": {"model": "openai:RN50", "objectives": ["CS", "FLYP"]}}, n, ["06"])
    assert ft.parts["checkpoints"] == 2 * P * 4 and ft.parts["exports"] == 2 * P * 4  # done.pt and export per run
    assert ft.peak == 6 * P * 4  # last.pt (weights + 2 AdamW moments) and its atomic rewrite
    assert ft.parts["features"] == 20 * 1024 * 4 * 3  # the start model and each fine-tuned one
    up = cache.disk_needed({"upsampling": {"upsamplers": ["pil-bicubic", "learned"], "clip_models": ["openai:RN50"],
                                           "classifier": {"backbone": "torchvision:resnet18", "input_size": 64,
                                                          "upsamplers": ["pil-bicubic"]}}}, n, ["03"])
    assert up.parts["upsampled"] == 20 * 3 * (2 * 224 * 224 + 64 * 64)  # per distinct (upsampler, side)
    assert up.parts["checkpoints"] == (cache.LEARNED_SR_PARAMS + cache.BACKBONES["resnet18"][0]) * 4
    # what is already cached in those categories is reused, so not needed again
    (config.cache_dir() / "features").mkdir(parents=True)
    (config.cache_dir() / "features" / "old.pt").write_bytes(b"x" * 1000)
    again = cache.disk_needed({"models": ["scratch:tiny-vit"]}, n, ["04"])
    assert again.reusable == 1000 and again.needed == 20 * 64 * 4 - 1000
