"""The speed scripts keep running: bench_train on a narrow small CLIP and on a torchvision backbone,
one step per variant, prints its ratio line (benchmarks are tools users rerun; a broken one is found
here, not the day someone needs the numbers). bench_encode needs a GEMM peak and a compile: too slow
for the test budget, it is run by hand (its record says when)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
RN18_SMALL = "scratch:rn18-small,width=16,embed=64,text_width=64,text_layers=2"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("model", "size"), [(RN18_SMALL, 64), ("torchvision:resnet18", 32)])
def test_bench_train_prints_its_ratios(model, size, capsys, monkeypatch):
    monkeypatch.setenv("CLIPLAB_WORKERS", "0")
    out = _load("bench_train").main(["--model", model, "--size", str(size), "--batch-size", "4", "--steps", "1",
                                     "--rounds", "1", "--no-data", "--no-record"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"ratios: optimised/eager=\d+\.\d\d (bf16|fp16|fp32)/fp32=\d+\.\d kept/returned=\d+\.\d\d", line), line
    assert out["optimised_over_eager"] > 0 and "data_wait" not in out
