"""The report is built from records alone and survives bad ones: a torn line or a record without
top-1 leaves a built report, a warning and an appendix line; no path of the machine appears in what
it shows; two datasets are never averaged together."""

from __future__ import annotations

import json

import pytest

from helpers import report
from helpers.core import config
from helpers.results import records


def _record(experiment="01_zero_shot", dataset="birds", spec="scratch:tiny-vit", top1=0.5, **extra):
    rec = records.make_record(experiment, {"top1": top1, "balanced_accuracy": top1} if top1 is not None else {},
                              dataset={"name": dataset, "split": "test", "n_images": 10},
                              model={"spec": spec, "status": "trained"}, profile="smoke", facets={"head": "zero-shot"},
                              **extra)
    records.append_record(rec)
    return rec


def test_torn_line_and_missing_top1_leave_a_built_report_and_a_warning():
    _record()
    _record(dataset="one-class", top1=None)
    path = config.results_dir("smoke") / "01_zero_shot.jsonl"
    with open(path, "a") as f:
        f.write('{"experiment": "01_zero_shot", "metr')  # a write cut off by a full disk or a kill
    with pytest.warns(UserWarning, match=r"01_zero_shot.jsonl:3 is not a usable record"):
        written = report.build("smoke")
    md = written["report.md"].read_text()
    assert "results/01_zero_shot.jsonl line 3: not a usable record" in md
    assert "no top-1 in its metrics" in md
    assert written["report.pdf"].stat().st_size > 1000
    with pytest.raises(records.RecordError, match="01_zero_shot.jsonl:3"):
        records.read_records(profile="smoke")  # strict reading still refuses it


def test_no_absolute_path_of_the_machine_in_the_report():
    ckpt = config.cache_dir() / "models" / "smoke" / "06_clip_finetune-CS-x.pt"
    _record(spec=f"file:{ckpt}", protocol={"checkpoint": str(ckpt), "elsewhere": "/srv/private/thing.pt"})
    written = report.build("smoke")
    for name in ("report.md", "report.html", "results.md", "results.csv"):
        text = written[name].read_text()
        assert str(config.cache_dir()) not in text and "/srv/private" not in text, name
    assert "file:$CLIPLAB_CACHE/models/smoke/06_clip_finetune-CS-x.pt" in written["report.md"].read_text()


def test_two_datasets_are_kept_apart():
    _record(dataset="birds", top1=0.9)
    _record(dataset="eurosat", top1=0.1)
    recs = records.read_records(profile="smoke")
    assert report.comparison_table(recs, "birds")["zero-shot"].tolist() == [0.9]
    assert report.comparison_table(recs, "eurosat")["zero-shot"].tolist() == [0.1]
    with pytest.raises(ValueError, match="several datasets"):
        report.comparison_table(recs)
    md = report.build("smoke")["report.md"].read_text()
    assert "Summary — birds" in md and "Summary — eurosat" in md


def test_report_cli_rebuilds_from_records(capsys):
    _record()
    assert report.main(["--profile", "smoke"]) == 0
    assert "report:" in capsys.readouterr().out
    assert json.loads((config.results_dir("smoke") / "01_zero_shot.jsonl").read_text().splitlines()[0])["facets"]
