"""Result records: one JSON line with the protocol card, safe under concurrency, read back strictly."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import data
from helpers.core import config, storage
from helpers.results import records


@pytest.fixture(scope="module")
def dataset_card(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("records-data") / "shapes"
    for ci, cls in enumerate(("circle", "square")):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (ci * 200, i * 20, 0)).save(root / cls / f"{i}.png")
    return data.load_image_folder(root)["test"].card()


@pytest.fixture(scope="module")
def untrained_card() -> dict:
    from helpers.models import load_model

    return load_model("scratch:tiny-vit", "cpu").card()


def _record(dataset_card, model_card, **kw) -> dict:
    kw.setdefault("protocol", {"templates": "centered-satellite", "head": "zero-shot"})
    kw.setdefault("seeds", [0, 1])
    kw.setdefault("profile", "smoke")
    kw.setdefault("wall_time_s", records.Timer().seconds)
    return records.make_record("zeroshot-eurosat", {"top1": 0.25, "per_class_recall": np.array([0.5, 0.0])},
                               dataset=dataset_card, model=model_card, **kw)


# ----------------------------------------------------------------------------------- one record
def test_append_record_writes_one_json_line_with_the_protocol_card(tmp_path, dataset_card, untrained_card):
    rec = _record(dataset_card, untrained_card)
    path = records.append_record(rec, folder=tmp_path)
    assert path == tmp_path / "zeroshot-eurosat.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    got = json.loads(lines[0])
    assert got["experiment"] == "zeroshot-eurosat"
    assert got["untrained"] is True
    assert got["model"]["status"] == "untrained" and got["model"]["spec"] == "scratch:tiny-vit"
    assert len(got["model"]["weights_sha256"]) == 64
    assert got["dataset"] == json.loads(json.dumps(dataset_card))
    assert got["dataset"]["split_protocol"]["test_fraction"] == 0.2 and len(got["dataset"]["fingerprint"]) == 64
    assert got["protocol"] == {"templates": "centered-satellite", "head": "zero-shot"}
    assert got["seeds"] == [0, 1]
    assert got["profile"] == "smoke"
    assert isinstance(got["wall_time_s"], float) and got["wall_time_s"] >= 0
    assert got["metrics"] == {"top1": 0.25, "per_class_recall": [0.5, 0.0]}  # numpy -> list
    assert got["versions"]["numpy"] == np.__version__ and got["versions"]["pandas"] == pd.__version__
    assert {"python", "torch", "torchvision", "openai-clip", "scikit-learn", "pillow"} <= set(got["versions"])
    assert set(got["git"]) == {"commit", "dirty"}
    assert got["git"]["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", got["git"]["commit"])
    assert got["environment"]["device"] and "threads" in got["environment"]
    assert re.match(r"\d{4}-\d\d-\d\dT", got["created"])


def test_trained_model_is_not_flagged_untrained(dataset_card):
    for status in ("pretrained", "checkpoint", "trained"):
        assert _record(dataset_card, {"spec": "openai:ViT-B/32", "status": status})["untrained"] is False
    assert _record(dataset_card, None)["untrained"] is False


def test_make_record_defaults(dataset_card, monkeypatch):
    monkeypatch.setenv("CLIPLAB_PROFILE", "full")
    rec = records.make_record("e", {}, dataset=dataset_card, seeds=3)
    assert rec["profile"] == "full" and rec["seeds"] == [3]
    assert rec["protocol"] == {} and rec["model"] == {} and rec["wall_time_s"] is None
    assert records.make_record("e", {}, dataset=dataset_card, note="x")["note"] == "x"


def test_default_results_folder_follows_cliplab_out(tmp_path, dataset_card, monkeypatch):
    monkeypatch.setenv("CLIPLAB_OUT", str(tmp_path / "out"))
    path = records.append_record(_record(dataset_card, None, profile="smoke"), name="custom")
    assert path.name == "custom.jsonl"
    assert path.parent == config.results_dir("smoke")
    assert (tmp_path / "out") in path.parents
    assert records.read_records(path.parent)[0]["experiment"] == "zeroshot-eurosat"


def test_appends_accumulate_and_read_back_in_order(tmp_path, dataset_card):
    for i in range(3):
        records.append_record(records.make_record("e", {"i": i}, dataset=dataset_card), folder=tmp_path)
    assert [r["metrics"]["i"] for r in records.read_records(tmp_path)] == [0, 1, 2]
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 3


def test_unserialisable_record_leaves_the_file_unchanged(tmp_path, dataset_card):
    path = records.append_record(records.make_record("e", {"i": 0}, dataset=dataset_card), folder=tmp_path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="object"):
        records.append_record(records.make_record("e", {"bad": object()}, dataset=dataset_card), folder=tmp_path)
    assert path.read_bytes() == before


def test_git_commit_is_none_without_a_commit_and_the_hash_with_one(tmp_path, monkeypatch):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path)
    records.git_commit.cache_clear()
    try:
        assert records.git_commit() == {"commit": None, "dirty": None}
        (tmp_path / "f.txt").write_text("1")
        subprocess.run([*git, "-C", str(tmp_path), "add", "f.txt"], check=True)
        subprocess.run([*git, "-C", str(tmp_path), "commit", "-q", "-m", "m"], check=True)
        head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        records.git_commit.cache_clear()
        assert records.git_commit() == {"commit": head, "dirty": False}
        (tmp_path / "f.txt").write_text("2")
        records.git_commit.cache_clear()
        assert records.git_commit() == {"commit": head, "dirty": True}
    finally:
        records.git_commit.cache_clear()


# ---------------------------------------------------------------------------------- concurrency
def _append_many(folder: str, proc: int, n: int) -> None:
    for i in range(n):
        records.append_record({"experiment": "shared", "proc": proc, "i": i, "pad": "x" * 200}, folder=Path(folder))


def test_concurrent_appends_from_several_processes_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), p, 20)) for p in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    lines = (tmp_path / "shared.jsonl").read_text().splitlines()
    assert len(lines) == 80
    got = sorted((r["proc"], r["i"]) for r in records.read_records(tmp_path))
    assert got == [(p, i) for p in range(4) for i in range(20)]
    for p in range(4):  # each process's records stay in its own order
        assert [r["i"] for r in records.read_records(tmp_path) if r["proc"] == p] == list(range(20))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


# ------------------------------------------------------------------------------------ reading
def test_records_table_flattens(tmp_path, dataset_card, untrained_card):
    records.append_record(_record(dataset_card, untrained_card), folder=tmp_path)
    records.append_record(_record(dataset_card, {"spec": "openai:RN50", "status": "pretrained"}, seeds=[2]),
                          folder=tmp_path)
    table = records.records_table(folder=tmp_path)
    assert len(table) == 2
    for col in ("metrics.top1", "model.spec", "model.status", "dataset.split", "dataset.counts.circle",
                "dataset.split_protocol.seed", "protocol.templates", "versions.torch", "git.commit", "untrained"):
        assert col in table.columns, col
    assert table["model.spec"].tolist() == ["scratch:tiny-vit", "openai:RN50"]
    assert table["untrained"].tolist() == [True, False]
    assert table["dataset.counts.circle"].tolist() == [2, 2]
    assert table["seeds"].tolist() == [[0, 1], [2]]
    same = records.records_table(records.read_records(tmp_path))
    pd.testing.assert_frame_equal(table, same)
    assert records.records_table([]).empty
    assert records.records_table(folder=tmp_path / "nothing-here").empty


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"experiment": "a"}\n\n{"experiment": "b"}\n{"experiment": "c", "metr\n')
    with pytest.raises(records.RecordError) as e:
        records.read_records(tmp_path)
    assert f"{path}:4" in str(e.value)
    with pytest.raises(records.RecordError):
        records.records_table(folder=tmp_path)


def test_json_line_that_is_not_an_object_is_not_a_record(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"experiment": "a"}\n[1, 2]\n')
    with pytest.raises(records.RecordError, match=re.escape(f"{path}:2")):
        records.read_records(tmp_path)


def test_only_jsonl_files_are_read(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"experiment": "a"}\n')
    (tmp_path / "a.jsonl.lock").write_text("")
    (tmp_path / "notes.txt").write_text("not json")
    assert records.read_records(tmp_path) == [{"experiment": "a"}]


# ------------------------------------------------------------------------------- atomic writes
def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    storage.atomic_write_bytes(path, b"old")
    storage.atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert os.listdir(path.parent) == ["f.bin"]


def _leftovers(folder: Path) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f != "f.bin")


@pytest.mark.parametrize("existing", [True, False])
def test_failed_write_midway_leaves_old_file_and_no_temp(tmp_path, monkeypatch, existing):
    path = tmp_path / "f.bin"
    if existing:
        path.write_bytes(b"old complete content")
    real_fdopen = os.fdopen

    class HalfWriter:
        """Writes half the data, then the disk is full."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, b):
            self.f.write(b[: len(b) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="(?i)no space left to write"):
        storage.atomic_write_bytes(path, b"N" * 10_000)
    assert _leftovers(tmp_path) == []
    if existing:
        assert path.read_bytes() == b"old complete content"
    else:
        assert not path.exists()


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_failure_before_rename_leaves_no_temp(tmp_path, monkeypatch, where):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError(5, f"{where} failed")

    monkeypatch.setattr(storage.os, where, boom)
    with pytest.raises(OSError, match=f"{where} failed"):
        storage.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_interrupt_during_write_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        storage.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_wrong_data_type_leaves_no_temp(tmp_path):
    with pytest.raises(TypeError):
        storage.atomic_write_bytes(tmp_path / "f.bin", "text, not bytes")
    assert os.listdir(tmp_path) == []


def _rewrite_forever(path: str, n: int) -> None:
    for i in range(n):
        storage.atomic_write_bytes(path, (b"A" if i % 2 else b"B") * 200_000)


def test_readers_never_see_a_half_file(tmp_path):
    path = tmp_path / "f.bin"
    storage.atomic_write_bytes(path, b"A" * 200_000)
    writer = mp.get_context("fork").Process(target=_rewrite_forever, args=(str(path), 60))
    writer.start()
    seen = set()
    while writer.is_alive() or not seen:
        blob = path.read_bytes()
        assert blob in (b"A" * 200_000, b"B" * 200_000)
        seen.add(blob[:1])
    writer.join(timeout=60)
    assert writer.exitcode == 0
    assert path.read_bytes() == b"A" * 200_000  # the last write (i = 59) wins
    assert _leftovers(tmp_path) == []


def test_append_line_adds_missing_newline(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"experiment": "a"}')  # hand-edited, no final newline
    storage.atomic_append_line(path, '{"experiment": "b"}\n')
    assert path.read_text() == '{"experiment": "a"}\n{"experiment": "b"}\n'
    assert [r["experiment"] for r in records.read_records(tmp_path)] == ["a", "b"]


def test_committed_records_of_the_old_shape_still_load_into_facets_tables_and_the_report(tmp_path, monkeypatch):
    """Records written before facets existed (a variant string) keep working: facets are read from
    the variant, the seed summary and the side-by-side table are built from them."""
    import shutil

    from helpers import report
    from helpers.results import tables

    src = Path(__file__).resolve().parents[1] / "supplementary" / "offline" / "results"
    if not src.is_dir():
        pytest.skip("no committed offline records")
    out = tmp_path / "out"
    shutil.copytree(src, out / "supplementary" / "offline" / "results")
    monkeypatch.setenv("CLIPLAB_OUT", str(out))
    recs = records.read_records(profile="offline")
    old = [r for r in recs if "facets" not in r and r["experiment"] == "04_few_shot" and "seed=" in r["variant"]]
    assert old, "the committed records include the old shape"
    f = records.facets(old[0])
    assert f["label"] in ("linear probe", "zero-shot-init probe") and "k" in f and isinstance(f["seed"], int)
    summary = tables.seed_summary([r for r in recs if r["experiment"] == "04_few_shot"])
    assert "seed" not in summary.columns and (summary["seeds"] >= 1).all()
    side = report.comparison_table(recs, "eurosat")
    assert "fine-tuned" in side.columns and "linear probe" in side.columns
    resnet = side[side["model"] == "torchvision:resnet18"].iloc[0]
    assert isinstance(resnet["fine-tuned"], float) and resnet["fine-tuned"] > 0.9  # trained, so shown
    written = report.build("offline")
    assert written["report.md"].is_file()


def test_records_name_cache_and_data_folders_by_variable_and_read_back_as_this_machines(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLIPLAB_DATA", str(tmp_path / "data"))
    ckpt = tmp_path / "cache" / "models" / "x.pt"
    rec = records.make_record("06_clip_finetune", {"top1": 0.5},
                              dataset={"name": "d", "split": "test", "root": str(tmp_path / "data" / "birds")},
                              model={"spec": f"file:{ckpt}", "status": "trained"}, protocol={"checkpoint": ckpt})
    path = records.append_record(rec, folder=tmp_path / "results")
    text = path.read_text()
    assert str(tmp_path) not in text  # no folder of this machine in the committed file
    assert '"file:$CLIPLAB_CACHE/models/x.pt"' in text and '"$CLIPLAB_DATA/birds"' in text
    back = records.read_records(tmp_path / "results")[0]
    assert back["model"]["spec"] == f"file:{ckpt}" and back["dataset"]["root"] == str(tmp_path / "data" / "birds")
    assert back["key"] == rec["key"]
