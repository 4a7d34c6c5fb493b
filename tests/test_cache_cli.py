"""``python -m helpers.cache``: the cache by category, and pruning that asks for --yes and never deletes
a run folder a running training holds."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from helpers import cache
from helpers.core import config, storage

DAY = 86400


def _file(path, size: int, age_days: float = 0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    t = time.time() - age_days * DAY
    os.utime(path, (t, t))
    return path


@pytest.fixture
def fake_cache():
    """A cache tree with one or more items of every category (sizes in bytes, some of them old)."""
    root = config.cache_dir()
    _file(root / "features" / "eurosat-test-aaa.pt", 1000, age_days=40)
    _file(root / "features" / "eurosat-train-bbb.pt", 3000)
    _file(root / "checkpoints" / "run-busy" / "last.pt", 5000)
    _file(root / "checkpoints" / "run-done" / "done.pt", 700, age_days=40)
    _file(root / "checkpoints" / ".run-done.owner.lock", 0)
    _file(root / "models" / "smoke" / "06-cs-tiny-abc.pt", 400)
    _file(root / "models" / "smoke" / "06-cs-tiny-abc.pt.json", 10)
    _file(root / "upsampled" / "eurosat-test-pil-bicubic-1" / "000000.png", 200)
    _file(root / "clip" / "RN50.pt", 900)
    _file(root / "torch" / "hub" / "checkpoints" / "resnet18.pth", 800)
    _file(root / "inductor" / "fxgraph" / "x", 50)
    _file(root / "synthetic" / "abc123" / "train" / "a" / "0.png", 60)
    _file(root / "data" / "eurosat_rgb" / "eurosat" / "EuroSAT.zip", 90)
    _file(root / "notes.txt", 5)
    _file(root / "features" / ".eurosat-val-ccc.pt.k2j.tmp", 30)  # a write in progress
    return root


def _lines(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines() if line.split()}


def test_report_shows_every_category_with_counts_and_sizes(fake_cache, capsys):
    assert cache.main(["--report"]) == 0
    out = capsys.readouterr().out
    rows = _lines(out)
    assert str(fake_cache) in out and "free of" in out
    expected = {"features": (3, "3.9 KB"), "checkpoints": (2, "5.6 KB"), "exports": (2, "410 B"),
                "upsampled": (1, "200 B"), "weights": (2, "1.7 KB"), "inductor": (1, "50 B"),
                "synthetic": (1, "60 B"), "datasets": (1, "90 B"), "other": (1, "5 B")}
    for name, (items, size) in expected.items():
        assert int(rows[name][1]) == items, rows[name]
        assert " ".join(rows[name][3:5]) == size, rows[name]
    assert rows["total"][1] == str(sum(i for i, _ in expected.values()))


def test_prune_without_yes_lists_and_deletes_nothing(fake_cache, capsys):
    before = sorted(p for p in fake_cache.rglob("*"))
    assert cache.main(["--prune", "features", "upsampled"]) == 0
    out = capsys.readouterr().out
    assert "would delete 4 item(s)" in out and "features/eurosat-test-aaa.pt" in out
    assert "upsampled/eurosat-test-pil-bicubic-1" in out and "add --yes" in out
    assert sorted(p for p in fake_cache.rglob("*")) == before


def test_prune_never_deletes_a_run_folder_another_process_holds(fake_cache, capsys):
    with storage.owned_folder(fake_cache / "checkpoints" / "run-busy", "training run"):  # as train.loop does
        assert cache.main(["--prune", "checkpoints"]) == 0
        assert f"kept: in use: pid {os.getpid()}" in capsys.readouterr().out
        assert cache.main(["--prune", "checkpoints", "--yes"]) == 0
        out = capsys.readouterr().out
    assert (fake_cache / "checkpoints" / "run-busy" / "last.pt").is_file()
    assert f"kept    checkpoints/run-busy: in use: pid {os.getpid()}" in out
    assert not (fake_cache / "checkpoints" / "run-done").exists()
    assert not (fake_cache / "checkpoints" / ".run-done.owner.lock").exists()  # its lock goes with it
    assert "freed 700 B (1 item(s)); 1 kept" in out
    # once the training is over, its folder can go
    assert cache.main(["--prune", "checkpoints", "--yes"]) == 0
    assert not (fake_cache / "checkpoints" / "run-busy").exists()


def test_prune_older_than_days_and_fresh_temporaries_kept(fake_cache, capsys):
    assert cache.main(["--prune", "features", "exports", "--older-than", "30", "--yes"]) == 0
    out = capsys.readouterr().out
    assert not (fake_cache / "features" / "eurosat-test-aaa.pt").exists()
    assert (fake_cache / "features" / "eurosat-train-bbb.pt").is_file()
    assert (fake_cache / "models" / "smoke" / "06-cs-tiny-abc.pt").is_file()
    assert "freed 1000 B (1 item(s))" in out
    assert cache.main(["--prune", "features", "--yes"]) == 0
    out = capsys.readouterr().out
    assert (fake_cache / "features" / ".eurosat-val-ccc.pt.k2j.tmp").is_file()  # may be a write in progress
    assert "a write may be in progress" in out
    assert (fake_cache / "clip" / "RN50.pt").is_file()  # other categories untouched


def test_unknown_category_is_refused_with_the_valid_ones(fake_cache, capsys):
    with pytest.raises(SystemExit) as e:
        cache.main(["--prune", "feature"])
    assert e.value.code == 2
    assert "features" in capsys.readouterr().err


def test_the_module_runs_as_a_command(fake_cache):
    proc = subprocess.run([sys.executable, "-m", "helpers.cache", "--prune", "weights"], cwd=config.PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert "would delete 2 item(s)" in proc.stdout and "clip/RN50.pt" in proc.stdout
