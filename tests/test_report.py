"""The report is built from records alone and survives bad ones: a torn line or a record without
top-1 leaves a built report, a warning and an appendix line; no path of the machine appears in what
it shows; two datasets are never averaged together."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import report
from helpers.core import config
from helpers.results import records


def _record(experiment="01_zero_shot", dataset="birds", spec="scratch:tiny-vit", top1=0.5, model_override=None, **extra):
    rec = records.make_record(experiment, {"top1": top1, "balanced_accuracy": top1} if top1 is not None else {},
                              dataset={"name": dataset, "split": "test", "n_images": 10},
                              model={"spec": spec, "status": model_override or "trained"}, profile="smoke",
                              facets={"head": "zero-shot"},
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


def _pdf_page_text(path, index: int = 0) -> str:
    import pypdfium2 as pdfium

    page = pdfium.PdfDocument(str(path))[index]
    assert page.render(scale=0.5).to_pil().convert("L").getextrema()[0] < 128  # it renders to visible ink
    return page.get_textpage().get_text_range()


def test_the_pdf_first_page_holds_the_summary_table_with_numbers():
    _record(spec="file:/somewhere/expert.pt", top1=0.9123)
    _record(spec="scratch:tiny-vit", top1=0.5)
    _record(spec="scratch:tiny-rn", top1=0.25, model_override="untrained")
    first = _pdf_page_text(report.build("smoke")["report.pdf"])
    assert "Summary — birds" in first and "0.9123" in first and "★" in first
    assert "/somewhere" not in first and "expert.pt" in first


def _predicting(spec, correct, seed=0, dataset="birds", untrained=False):
    """A record whose per-image correctness is ``correct`` (labels all 0, predictions 0 where right)."""
    correct = np.asarray(correct, dtype=bool)
    labels = np.zeros(correct.size, dtype=int)
    pred = np.where(correct, 0, 1)
    rec = records.make_record("01_zero_shot", {"top1": float(correct.mean())},
                              dataset={"name": dataset, "split": "test", "n_images": correct.size, "fingerprint": "fp1"},
                              model={"spec": spec, "status": "untrained" if untrained else "trained"}, profile="smoke",
                              facets={"head": "zero-shot"}, seeds=[seed], predictions=pred, labels=labels)
    records.append_record(rec)
    return rec


def test_per_image_correctness_round_trips_and_must_match_the_metrics():
    rec = _predicting("file:a.pt", [1, 0, 1, 1, 0, 1, 1, 1, 0])
    assert records.correctness(rec).tolist() == [True, False, True, True, False, True, True, True, False]
    with pytest.raises(ValueError, match="not the predictions these metrics were computed from"):
        records.per_image(np.array([0, 0]), np.array([0, 1]), {"fingerprint": "x"}, top1=1.0)


def test_mcnemar_exact_and_paired_bootstrap_match_hand_computations():
    from scipy.stats import binom

    from helpers.eval import metrics

    a = np.array([1] * 30 + [0] * 5 + [1] * 60 + [0] * 5, dtype=bool)  # 30 only-A, 5 only-B, 60 both, 5 neither
    b = np.array([0] * 30 + [1] * 5 + [1] * 60 + [0] * 5, dtype=bool)
    t = metrics.mcnemar_exact(a, b)
    assert (t["a_only"], t["b_only"], t["n"]) == (30, 5, 100)
    assert t["p_value"] == pytest.approx(2 * binom.cdf(5, 35, 0.5))
    assert t["difference"] == pytest.approx(0.25)
    gap, lo, hi = metrics.paired_bootstrap_ci(a, b, seed=1)
    assert gap == pytest.approx(0.25) and lo < 0.25 < hi and lo > 0  # a real gap: the CI excludes 0
    same = metrics.mcnemar_exact(a, a)
    assert same["p_value"] == 1.0 and same["difference"] == 0.0


def test_the_summary_tests_the_best_against_the_runner_up_on_the_same_images():
    rng = np.random.default_rng(0)
    good = rng.random(400) < 0.9
    worse = good & (rng.random(400) < 0.8)  # right on a subset of the good one's images
    _predicting("file:/x/good.pt", good)
    _predicting("file:/x/worse.pt", worse)
    _predicting("scratch:tiny-vit", np.ones(400, dtype=bool), untrained=True)  # never a row, never the best
    recs = records.read_records(profile="smoke")
    paired = report.paired_rows(recs, "birds")
    row = paired.iloc[0]
    assert (row["best"], row["runner-up"]) == ("file:good.pt", "file:worse.pt")
    assert row["McNemar exact p"].startswith("< 1e-4") and "images" in row["McNemar exact p"]
    md = report.build("smoke")["report.md"].read_text()
    assert "McNemar" in md and "Left out" in md and "tiny-vit" in md


def test_experiment_tables_aggregate_seeds_and_leave_untrained_out():
    for seed, top1 in ((0, 0.5), (1, 0.7), (2, 0.6)):
        records.append_record(records.make_record(
            "04_few_shot", {"top1": top1}, dataset={"name": "birds", "split": "test", "n_images": 10},
            model={"spec": "file:m.pt", "status": "trained"}, profile="smoke", seeds=[seed],
            variant=f"linear probe|k=4|seed={seed}", facets={"head": "linear probe", "k": 4, "seed": seed}))
    records.append_record(records.make_record(
        "04_few_shot", {"top1": 0.1}, dataset={"name": "birds", "split": "test", "n_images": 10},
        model={"spec": "scratch:tiny-rn", "status": "untrained"}, profile="smoke", seeds=[0],
        variant="linear probe|k=4|seed=0", facets={"head": "linear probe", "k": 4, "seed": 0}))
    md = report.build("smoke")["report.md"].read_text()
    section = md[md.index("## 04"):]
    assert "0.6000 ± " in section  # mean of three seeds with its 95% CI half-width
    assert "k=4" in section and "over 3 seeds" in section
    assert "Left out of the tables: 1 result of untrained weights (scratch:tiny-rn)" in section
    assert "0.1000" not in section.split("## Appendix")[0]


def test_executed_notebooks_are_exported_beside_the_report_and_linked(tmp_path):
    import nbformat

    runs = tmp_path / "runs"
    runs.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="1\n")])])
    nbformat.write(nb, str(runs / "01_zero_shot.ipynb"))
    _record()
    written = report.build("smoke", runs=runs)
    page = config.supplementary_dir("smoke") / "notebooks" / "01_zero_shot.html"
    assert page.is_file() and "print" in page.read_text()
    assert "[Executed notebook: 01_zero_shot.html](notebooks/01_zero_shot.html)" in written["report.md"].read_text()
    assert 'href="notebooks/01_zero_shot.html"' in written["report.html"].read_text()
    # a later build from another machine's runs (none here) still links the page already exported
    again = report.build("smoke", runs=tmp_path / "elsewhere")
    assert "notebooks/01_zero_shot.html" in again["report.md"].read_text()
