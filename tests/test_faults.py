"""Issue 17's fault matrix on the real thing: ``scripts/finetune_clip.py`` (notebook 06's fine-tuning) run as
a subprocess on the smoke profile (synthetic data, ``scratch:tiny-rn``, CS objective), then

- SIGKILL once its first epoch's checkpoint exists, and the same command again: it resumes and ends with
  the final weights (sha256), the test metrics and the per-epoch history of an uninterrupted run;
- SIGINT to its process group (Ctrl-C in a terminal): it stops leaving no temporary file and no lock
  behind, and the same command again resumes to the uninterrupted result;
- the same configuration started while it trains: the second run stops with a message naming the
  first's pid, and the first is untouched.

Every run has its own CLIPLAB_CACHE and CLIPLAB_OUT (one fp32 torch thread, no loader workers), so the
runs compared differ only in the interruption.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.core import storage
from helpers.train import loop

PROJECT = Path(__file__).resolve().parents[1]
EPOCHS = 6  # ~0.4 s an epoch here: the kill lands with most of the run still to do
ARGS = ["--profile", "smoke", "-p", "clip_finetune.objectives=[CS]", "-p", "clip_finetune.wise_ft=null"]


def _env(base: Path) -> dict:
    env = dict(os.environ)
    env.update(CLIPLAB_CACHE=str(base / "cache"), CLIPLAB_OUT=str(base / "out"), CLIPLAB_WORKERS="0",
               CLIPLAB_AUTOCAST="fp32", CLIPLAB_DEVICE="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(PROJECT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _start(base: Path, epochs: int = EPOCHS, tag: str = "run") -> subprocess.Popen:
    """``python scripts/finetune_clip.py ...`` in its own session (so a signal can go to its process
    group, as Ctrl-C does); its output goes to ``base/<tag>.log`` (a pipe nobody reads could fill)."""
    base.mkdir(parents=True, exist_ok=True)
    log = open(base / f"{tag}.log", "w")  # noqa: SIM115 (closed by _finish / the OS)
    cmd = [sys.executable, "scripts/finetune_clip.py", *ARGS, "-p", f"clip_finetune.train.epochs={epochs}",
           "--weights-report", str(base / f"{tag}.weights.json")]
    return subprocess.Popen(cmd, cwd=PROJECT, env=_env(base), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,  # SIGINT as in a terminal, even under a shell that ignores it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _log(base: Path, tag: str = "run") -> str:
    return (base / f"{tag}.log").read_text()


def _finish(proc: subprocess.Popen, base: Path, tag: str = "run", timeout: float = 120) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        _stop(proc)
    assert proc.returncode == 0, f"finetune_clip.py failed ({proc.returncode}):\n{_log(base, tag)[-3000:]}"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _checkpoint(base: Path) -> Path | None:
    found = sorted((base / "cache" / "checkpoints").glob("*/last.pt"))
    return found[0] if found else None


def _wait_for_checkpoint(proc: subprocess.Popen, base: Path, tag: str = "run", timeout: float = 90) -> Path:
    """The first epoch's checkpoint (written atomically: once it is there, it is whole)."""
    deadline = time.monotonic() + timeout
    while (path := _checkpoint(base)) is None:
        assert proc.poll() is None, f"the run ended before its first checkpoint:\n{_log(base, tag)[-3000:]}"
        assert time.monotonic() < deadline, f"no checkpoint within {timeout} s:\n{_log(base, tag)[-3000:]}"
        time.sleep(0.01)
    return path


def _outcome(base: Path, tag: str = "run") -> dict:
    """What a finished run leaves: its final weights (file and in-memory hash), the fine-tuned record's
    test metrics and per-epoch history (wall seconds left out), and where it resumed from."""
    report = json.loads((base / f"{tag}.weights.json").read_text())["runs"]["CS"]
    lines = (base / "out" / "supplementary" / "smoke" / "results" / "06_clip_finetune.jsonl").read_text().splitlines()
    rec = [r for r in map(json.loads, lines) if r["variant"] == "CS|fine-tuned"][-1]
    return {"file_sha256": storage.sha256_file(report["checkpoint"]), "trained_sha256": report["trained_sha256"],
            "steps": report["steps"], "metrics": rec["metrics"], "best_epoch": rec["protocol"]["best_epoch"],
            "history": [{k: v for k, v in h.items() if k not in loop.TIMING_KEYS} for h in rec["protocol"]["history"]],
            "resumed_from": rec["protocol"]["resumed_from_epoch"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("uninterrupted")
    _finish(_start(base), base)
    out = _outcome(base)
    assert out["resumed_from"] is None and len(out["history"]) == EPOCHS
    return out


def _assert_same_result(resumed: dict, ref: dict) -> None:
    assert resumed["file_sha256"] == ref["file_sha256"]  # the saved fine-tuned model, byte for byte
    assert resumed["trained_sha256"] == ref["trained_sha256"]
    assert resumed["metrics"] == ref["metrics"]  # the recorded test metrics, every one
    assert resumed["history"] == ref["history"]  # each epoch's train loss, lr and val metrics, bit for bit
    assert (resumed["steps"], resumed["best_epoch"]) == (ref["steps"], ref["best_epoch"])


def _interrupted_state(ckpt: Path) -> int:
    """The epoch index the checkpoint left by the interruption holds; the run was really cut short."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert not state["done"] and state["epoch"] < EPOCHS - 1, "the run finished before the signal landed"
    return int(state["epoch"])


def test_sigkill_after_the_first_checkpoint_then_rerun_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    proc = _start(tmp_path)
    try:
        ckpt = _wait_for_checkpoint(proc, tmp_path)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _stop(proc)
    assert proc.returncode == -signal.SIGKILL
    epoch = _interrupted_state(ckpt)
    assert not (tmp_path / "run.weights.json").exists()  # it never got to the end

    _finish(_start(tmp_path), tmp_path)  # the same command; the killed run's lock died with it
    resumed = _outcome(tmp_path)
    assert resumed["resumed_from"] == epoch + 1
    assert f"epoch {epoch + 2}: train loss" in _log(tmp_path) and "epoch 1: train loss" not in _log(tmp_path)
    _assert_same_result(resumed, uninterrupted)


def test_sigint_stops_cleanly_and_a_rerun_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    proc = _start(tmp_path)
    try:
        ckpt = _wait_for_checkpoint(proc, tmp_path)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process group
        proc.wait(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode != 0 and "KeyboardInterrupt" in _log(tmp_path)
    epoch = _interrupted_state(ckpt)
    leftovers = [p.name for p in ckpt.parent.iterdir() if p.name != "last.pt"]
    assert leftovers == [], f"temporary files left in the checkpoint folder: {leftovers}"

    _finish(_start(tmp_path), tmp_path)
    resumed = _outcome(tmp_path)
    assert resumed["resumed_from"] == epoch + 1
    _assert_same_result(resumed, uninterrupted)


def test_the_same_training_started_twice_the_second_stops_naming_the_first(tmp_path):
    first = _start(tmp_path, epochs=60, tag="first")  # long enough to still be training when the second arrives
    try:
        _wait_for_checkpoint(first, tmp_path, "first")
        second = _start(tmp_path, epochs=60, tag="second")
        try:
            second.wait(timeout=90)
        finally:
            _stop(second)
        out = _log(tmp_path, "second")
        assert second.returncode not in (0, None), out[-3000:]
        assert f"training run in progress (pid {first.pid}: " in out and "scripts/finetune_clip.py" in out
        assert "Traceback" not in out  # one message, not a stack trace
        assert first.poll() is None  # the first run goes on, untouched
    finally:
        _stop(first)
