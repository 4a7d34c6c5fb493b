"""The shared training loop: learning, best weights, early stopping, schedules, accumulation, weight
decay groups, determinism, checkpoints (resume after a kill, corrupt or foreign checkpoints, atomic
writes) and non-finite losses. Tiny models on synthetic tensors, fp32, no loader workers."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers.core import storage
from helpers.train import loop
from helpers.train.loop import TrainConfig

CPU = torch.device("cpu")
PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fp32(monkeypatch):
    """Exact arithmetic comparisons need fp32 (no autocast) and no loader workers."""
    monkeypatch.setenv("CLIPLAB_AUTOCAST", "fp32")
    monkeypatch.setenv("CLIPLAB_WORKERS", "0")


def blobs(n: int = 96, d: int = 12, c: int = 3, seed: int = 0, spread: float = 2.0, noise_seed: int | None = None):
    """Gaussian blobs: a learnable classification problem on tensors (``noise_seed``: other samples, same centres)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * spread
    if noise_seed is not None:
        g = torch.Generator().manual_seed(noise_seed)
    y = torch.arange(n) % c
    return centers[y] + torch.randn(n, d, generator=g), y


def val_nll(seed: int = 0, spread: float = 2.0):
    """evaluate(): accuracy and negative log-likelihood on a fixed validation draw of the blobs."""
    xv, yv = blobs(n=60, seed=seed, spread=spread, noise_seed=1234)

    def evaluate(model):
        logits = model(xv)
        return {"top1": float((logits.argmax(1) == yv).float().mean()), "loss": float(F.cross_entropy(logits, yv)),
                "nll": -float(F.cross_entropy(logits, yv))}
    return evaluate


def mlp(d: int = 12, c: int = 3, seed: int = 0, dropout: float = 0.2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                               torch.nn.Linear(32, c))


def ce_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def scripted(values, key: str = "top1", snapshots: list | None = None):
    """evaluate() returning the given metric sequence (one value per epoch); optionally snapshots weights."""
    it = iter(values)

    def evaluate(model):
        if snapshots is not None:
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {key: next(it)}
    return evaluate


def increasing():
    return scripted(range(1, 10_000))  # best epoch = last epoch


def assert_same_state(a: dict, b: dict):
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different}"


def run(model=None, cfg=None, evaluate=None, ckpt=None, batch_size=16, data=None, loss_fn=ce_loss, **kw):
    x, y = data if data is not None else blobs()
    model = model if model is not None else mlp()
    cfg = cfg or TrainConfig(epochs=3, lr=0.01, seed=0)
    loader = loop.train_loader(torch.utils.data.TensorDataset(x, y), batch_size, cfg.seed, workers=0)
    result = loop.train(model, loader, loss_fn, evaluate or increasing(), cfg, ckpt, device=CPU,
                            progress=False, **kw)
    return model, result


# ------------------------------------------------------------------------------------- learning
def test_tiny_model_learns_and_val_metric_improves():
    x, y = blobs(n=192, seed=0, spread=1.0)
    evaluate = val_nll(seed=0, spread=1.0)
    cfg = TrainConfig(epochs=8, lr=3e-3, warmup_epochs=0.5, seed=0)
    model, res = run(mlp(), cfg, evaluate, data=(x, y))
    h = res.history
    assert [r["epoch"] for r in h] == list(range(1, 9))
    assert h[-1]["val_loss"] < h[0]["val_loss"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert res.best_metric >= 0.9 and res.best_metric > h[0]["val_top1"]  # epoch 1 is about 0.7
    assert res.best_metric == max(r["val_top1"] for r in h)
    assert res.best_epoch == 1 + [r["val_top1"] for r in h].index(res.best_metric)  # first of equals
    assert res.stopped == "epochs" and res.resumed_from is None
    assert res.steps == 8 * (192 // 16)
    assert_same_state(res.best_state, model.state_dict())


def test_best_epoch_weights_are_loaded_at_the_end():
    snaps = []
    model, res = run(cfg=TrainConfig(epochs=5, lr=0.01), evaluate=scripted([0.1, 0.5, 0.9, 0.3, 0.2], snapshots=snaps))
    assert res.best_epoch == 3 and res.best_metric == 0.9
    assert_same_state(model.state_dict(), snaps[2])
    assert_same_state(res.best_state, snaps[2])
    assert not torch.equal(model.state_dict()["3.weight"], snaps[-1]["3.weight"])  # not the last epoch's
    assert res.stopped == "epochs" and len(res.history) == 5


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_on_a_falling_metric(patience):
    model, res = run(cfg=TrainConfig(epochs=10, lr=0.01, patience=patience),
                     evaluate=scripted([0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -1, -2, -3, -4]))
    assert len(res.history) == 1 + patience
    assert res.best_epoch == 1 and res.best_metric == 0.5
    assert res.stopped.startswith("early stop") and str(patience) in res.stopped


def test_no_early_stop_when_metric_keeps_improving():
    _, res = run(cfg=TrainConfig(epochs=4, lr=0.01, patience=1))
    assert len(res.history) == 4 and res.stopped == "epochs"


def test_metric_key_selects_the_best_epoch():
    def evaluate_factory():
        seq = iter([(0.9, 0.1), (0.2, 0.8), (0.5, 0.5)])

        def evaluate(model):
            a, b = next(seq)
            return {"top1": a, "auc": b}
        return evaluate

    _, res = run(cfg=TrainConfig(epochs=3, lr=0.01, metric="auc"), evaluate=evaluate_factory())
    assert res.best_epoch == 2 and res.best_metric == 0.8
    assert res.history[1]["val_top1"] == 0.2 and res.history[1]["val_auc"] == 0.8


# ------------------------------------------------------------------------------------- schedules
def test_lr_lambda_warmup_then_cosine_to_zero():
    cfg = TrainConfig(epochs=10, warmup_epochs=1, schedule="cosine")
    f = loop.lr_lambda(cfg, steps_per_epoch=10)
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warmup
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)  # half way through the cosine
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert f(99) < 1e-3
    after = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))  # monotone decay after warmup
    assert f(150) == pytest.approx(0.0, abs=1e-12)  # clamped past the end


def test_lr_lambda_linear_and_constant():
    lin = loop.lr_lambda(TrainConfig(epochs=10, warmup_epochs=2, schedule="linear"), 5)
    assert lin(0) == pytest.approx(0.1) and lin(9) == pytest.approx(1.0)
    assert lin(10) == pytest.approx(1.0)
    assert lin(30) == pytest.approx(0.5)
    assert lin(50) == pytest.approx(0.0)
    const = loop.lr_lambda(TrainConfig(epochs=10, warmup_epochs=2, schedule="constant"), 5)
    assert const(0) == pytest.approx(0.1)
    assert [const(s) for s in (10, 30, 49, 50)] == [1.0, 1.0, 1.0, 1.0]
    nowarm = loop.lr_lambda(TrainConfig(epochs=2, warmup_epochs=0, schedule="cosine"), 4)
    assert nowarm(0) == 1.0 and nowarm(4) == pytest.approx(0.5)


def test_loop_applies_the_schedule_per_optimiser_step():
    """The lr the optimiser actually uses at step i is cfg.lr x lr_lambda(i); the last epoch ends at ~0."""
    used = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            used.append(self.param_groups[0]["lr"])
            return super().step(closure)

    cfg = TrainConfig(epochs=3, lr=0.2, warmup_epochs=1, schedule="cosine", clip_grad=None)
    _, res = run(cfg=cfg, optimizer_factory=lambda groups: RecordingSGD(groups, lr=cfg.lr))
    spe = 96 // 16
    f = loop.lr_lambda(cfg, spe)
    assert len(used) == 3 * spe == res.steps
    assert used == pytest.approx([cfg.lr * f(i) for i in range(3 * spe)])
    assert used[0] == pytest.approx(cfg.lr / spe)
    assert res.history[0]["lr"] == pytest.approx(cfg.lr)  # end of warmup
    assert res.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


# -------------------------------------------------------------------------- gradient accumulation
def _linear_run(batch_size: int, accumulate: int):
    torch.manual_seed(0)
    model = torch.nn.Linear(12, 3)
    cfg = TrainConfig(epochs=3, lr=0.1, accumulate=accumulate, clip_grad=None, warmup_epochs=0.5, seed=4)
    model, res = run(model, cfg, batch_size=batch_size,
                     optimizer_factory=lambda groups: torch.optim.SGD(groups, lr=cfg.lr))
    return model.state_dict(), res


def test_accumulation_matches_a_twice_larger_batch():
    big, res_big = _linear_run(batch_size=32, accumulate=1)
    acc, res_acc = _linear_run(batch_size=16, accumulate=2)
    small, _ = _linear_run(batch_size=16, accumulate=1)
    assert res_big.steps == res_acc.steps == 3 * 3
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-5, atol=1e-6)
    # the comparison is sensitive: without accumulation the update differs clearly
    assert not torch.allclose(small["weight"], big["weight"], atol=1e-3)


# --------------------------------------------------------------------------------- param groups
class WithEverything(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.token_embedding = torch.nn.Embedding(10, 4)
        self.positional_embedding = torch.nn.Parameter(torch.zeros(5, 4))
        self.ln = torch.nn.LayerNorm(4)
        self.fc = torch.nn.Linear(4, 2)
        self.logit_scale = torch.nn.Parameter(torch.ones([]))
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_decay_only_on_kernels_and_matrices():
    m = WithEverything()
    decay, no_decay = loop.param_groups(m, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in m.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["conv.weight", "fc.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted([
        "conv.bias", "bn.weight", "bn.bias", "token_embedding.weight", "positional_embedding", "ln.weight",
        "ln.bias", "fc.bias", "logit_scale"])


def test_param_groups_on_a_clip_model():
    from helpers import models

    clip_model = models.load_model("scratch:tiny-vit", device="cpu").model
    decay, no_decay = loop.param_groups(clip_model, 0.1)
    names = {id(p): n for n, p in clip_model.named_parameters()}
    dec = {names[id(p)] for p in decay["params"]}
    nod = {names[id(p)] for p in no_decay["params"]}
    assert dec | nod == set(names.values()) and not dec & nod
    for n in ("logit_scale", "token_embedding.weight", "positional_embedding", "visual.positional_embedding",
              "visual.class_embedding", "ln_final.weight", "ln_final.bias"):
        assert n in nod, n
    assert "visual.conv1.weight" in dec and "text_projection" in dec
    assert all(not n.endswith(".bias") for n in dec)
    assert any(n.endswith("attn.in_proj_weight") for n in dec)


# ---------------------------------------------------------------------------------- determinism
def test_same_seed_same_weights_other_seed_other_weights():
    a, ra = run(mlp(seed=1), TrainConfig(epochs=3, lr=0.01, seed=7))
    b, rb = run(mlp(seed=1), TrainConfig(epochs=3, lr=0.01, seed=7))
    c, _ = run(mlp(seed=1), TrainConfig(epochs=3, lr=0.01, seed=8))
    assert_same_state(a.state_dict(), b.state_dict())
    assert [r["train_loss"] for r in ra.history] == [r["train_loss"] for r in rb.history]
    assert not torch.equal(a.state_dict()["0.weight"], c.state_dict()["0.weight"])


def test_epoch_sampler_is_a_permutation_fixed_by_seed_and_epoch():
    s = loop.EpochSampler(20, seed=3)
    e0 = list(s)
    assert sorted(e0) == list(range(20)) and len(s) == 20
    assert list(s) == e0
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e1) == list(range(20)) and e1 != e0
    other = loop.EpochSampler(20, seed=3)
    other.set_epoch(1)
    assert list(other) == e1


def test_loop_reshuffles_each_epoch_in_the_sampler_order():
    x = torch.arange(32, dtype=torch.float32).unsqueeze(1)
    y = torch.zeros(32, dtype=torch.long)
    seen = []

    def loss_fn(model, batch):
        seen.append(batch[0][:, 0].long().tolist())
        return model(batch[0]).sum() * 0

    cfg = TrainConfig(epochs=3, lr=0.01, seed=6, clip_grad=None)
    run(torch.nn.Linear(1, 1), cfg, batch_size=8, data=(x, y), loss_fn=loss_fn)
    orders = [sum(seen[e * 4:(e + 1) * 4], []) for e in range(3)]
    for epoch, order in enumerate(orders):
        s = loop.EpochSampler(32, cfg.seed)
        s.set_epoch(epoch)
        assert order == list(s)
    assert orders[0] != orders[1] != orders[2]


# ---------------------------------------------------------------------------------- checkpoints
RESUME_SCRIPT = r'''
import json, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers.train import loop

torch.set_num_threads(1)
ckpt_dir, out_dir, hang_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

g = torch.Generator().manual_seed(1)
centers = torch.randn(3, 12, generator=g) * 1.5
y = torch.arange(96) % 3
x = centers[y] + torch.randn(96, 12, generator=g)
yv = torch.arange(48) % 3
xv = centers[yv] + torch.randn(48, 12, generator=g)

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 3))
cfg = loop.TrainConfig(epochs=6, lr=0.02, warmup_epochs=1, schedule="cosine", seed=5, metric="nll", keep_last=True)
loader = loop.train_loader(torch.utils.data.TensorDataset(x, y), 16, cfg.seed, workers=0)
calls = 0


def loss_fn(model, batch):
    global calls
    calls += 1
    if calls == hang_at:  # stuck mid-epoch: the test kills the process here
        (out_dir / "hanging").write_text(str(calls))
        time.sleep(300)
    xb, yb = batch
    xb = xb + 0.2 * torch.randn_like(xb)  # global-RNG noise (like augmentation) must replay on resume
    return F.cross_entropy(model(xb), yb)


def evaluate(model):
    time.sleep(0.05)
    logits = model(xv)
    return {"top1": float((logits.argmax(1) == yv).float().mean()), "nll": -float(F.cross_entropy(logits, yv))}


res = loop.train(model, loader, loss_fn, evaluate, cfg, ckpt_dir, run_card={"test": "resume"},
                     device=torch.device("cpu"), progress=False)
torch.save({"final": model.state_dict(), "best_state": res.best_state}, out_dir / "final.pt")
(out_dir / "result.json").write_text(json.dumps({
    "resumed_from": res.resumed_from, "best_epoch": res.best_epoch, "best_metric": res.best_metric,
    "steps": res.steps, "stopped": res.stopped,
    "history": [{k: v for k, v in r.items() if k not in loop.TIMING_KEYS} for r in res.history]}))
'''


def _script_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(CLIPLAB_AUTOCAST="fp32", CLIPLAB_WORKERS="0", CLIPLAB_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1", PYTHONPATH=str(PROJECT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _run_script(script: Path, ckpt: Path, out: Path, env: dict, hang_at: int = 0) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(script), str(ckpt), str(out), str(hang_at)], cwd=str(PROJECT),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 60) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{out}\n{err}"


def _checkpoint_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # not there yet
        return None


def test_resume_after_kill_gives_the_uninterrupted_result(tmp_path):
    script = tmp_path / "train_tiny.py"
    script.write_text(RESUME_SCRIPT)
    env = _script_env(tmp_path)
    steps_per_epoch = 96 // 16

    # killed run: it hangs in epoch 4 (index 3), after last.pt recorded epoch index 2
    ckpt, out = tmp_path / "ckpt_killed", tmp_path / "out_killed"
    proc = _run_script(script, ckpt, out, env, hang_at=3 * steps_per_epoch + 3)
    try:
        deadline = time.monotonic() + 60
        while (_checkpoint_epoch(ckpt / "last.pt") or -1) < 2:
            assert proc.poll() is None, f"script ended early: {proc.communicate()}"
            assert time.monotonic() < deadline, "no checkpoint with epoch >= 2 within 60 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "result.json").exists()
    state = torch.load(ckpt / "last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and not state["done"] and len(state["history"]) == 3
    assert [p.name for p in ckpt.iterdir()] == ["last.pt"]

    # the same script again resumes and finishes
    _finish(_run_script(script, ckpt, out, env))
    # an uninterrupted run for reference
    ref_ckpt, ref_out = tmp_path / "ckpt_ref", tmp_path / "out_ref"
    _finish(_run_script(script, ref_ckpt, ref_out, env))

    resumed = json.loads((out / "result.json").read_text())
    ref = json.loads((ref_out / "result.json").read_text())
    assert resumed["resumed_from"] == 3
    assert ref["resumed_from"] is None
    assert len(resumed["history"]) == 6
    assert resumed["history"] == ref["history"]  # same losses, lrs and val metrics per epoch, bit for bit
    for key in ("best_epoch", "best_metric", "steps", "stopped"):
        assert resumed[key] == ref[key], key
    assert ref["steps"] == 6 * steps_per_epoch

    a = torch.load(out / "final.pt", weights_only=True)
    b = torch.load(ref_out / "final.pt", weights_only=True)
    assert_same_state(a["final"], b["final"])
    assert_same_state(a["best_state"], b["best_state"])
    # also the last epoch's weights and the optimiser state, not only the (possibly early) best epoch
    last_a = torch.load(ckpt / "last.pt", map_location="cpu", weights_only=False)
    last_b = torch.load(ref_ckpt / "last.pt", map_location="cpu", weights_only=False)
    assert_same_state(last_a["model"], last_b["model"])
    for pid, st in last_b["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(last_a["optimizer"]["state"][pid][k], v), (pid, k)
    assert last_a["scheduler"]["last_epoch"] == last_b["scheduler"]["last_epoch"] == 6 * steps_per_epoch


def test_resume_in_process_matches_uninterrupted(tmp_path):
    """Training 2 of 4 epochs, then the 4-epoch config with the checkpoint, equals 4 epochs straight.

    (The interrupted run is simulated by a loss that raises at the first step of epoch 3.)"""
    cfg = TrainConfig(epochs=4, lr=0.02, seed=3, metric="nll")
    calls = {"n": 0}

    class Interrupted(Exception):
        pass

    def failing_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 2 * 6 + 1:
            raise Interrupted
        return ce_loss(model, batch)

    with pytest.raises(Interrupted):
        run(mlp(seed=2), cfg, val_nll(), ckpt=tmp_path / "ck", loss_fn=failing_loss)
    # another initialisation: the checkpoint must replace it
    model, res = run(mlp(seed=11), cfg, val_nll(), ckpt=tmp_path / "ck")
    ref, ref_res = run(mlp(seed=2), cfg, val_nll())
    assert res.resumed_from == 2
    assert_same_state(model.state_dict(), ref.state_dict())
    strip = [{k: v for k, v in r.items() if k not in loop.TIMING_KEYS} for r in res.history]
    assert strip == [{k: v for k, v in r.items() if k not in loop.TIMING_KEYS} for r in ref_res.history]


def test_finished_checkpoint_is_not_trained_again(tmp_path):
    cfg = TrainConfig(epochs=3, lr=0.02, patience=1)
    first_model, first = run(mlp(), cfg, scripted([0.3, 0.2, 0.1]), ckpt=tmp_path / "ck")
    assert first.stopped.startswith("early stop") and len(first.history) == 2

    def no_training(model, batch):
        raise AssertionError("a finished run must not train again")

    model, again = run(mlp(seed=5), cfg, scripted([]), ckpt=tmp_path / "ck", loss_fn=no_training)
    assert again.resumed_from == 2 and again.stopped == first.stopped
    assert again.history == first.history and again.best_epoch == 1
    assert_same_state(model.state_dict(), first_model.state_dict())


def test_a_completed_run_keeps_only_the_compact_checkpoint_unless_asked(tmp_path):
    """last.pt (weights, optimiser moments, best copy) is replaced by done.pt (best weights + history) when
    the run completes; keep_last keeps it; keep_last does not change the run's key (same result reused)."""
    model, first = run(mlp(), TrainConfig(epochs=2, lr=0.02), ckpt=tmp_path / "compact")
    assert sorted(p.name for p in (tmp_path / "compact").iterdir()) == ["done.pt"]
    run(mlp(), TrainConfig(epochs=2, lr=0.02, keep_last=True), ckpt=tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["last.pt"]
    assert (tmp_path / "compact" / "done.pt").stat().st_size < 0.5 * (tmp_path / "full" / "last.pt").stat().st_size

    def no_training(model, batch):
        raise AssertionError("a completed run must not train again")

    again_model, again = run(mlp(seed=9), TrainConfig(epochs=2, lr=0.02, keep_last=True), scripted([]),
                             ckpt=tmp_path / "compact", loss_fn=no_training)
    assert again.history == first.history and again.resumed_from == 2
    assert_same_state(again_model.state_dict(), model.state_dict())


def test_corrupt_checkpoint_warns_and_trains_from_scratch(tmp_path):
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "last.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    cfg = TrainConfig(epochs=2, lr=0.02)
    with pytest.warns(UserWarning, match="unreadable"):
        model, res = run(mlp(), cfg, ckpt=ckpt)
    ref, _ = run(mlp(), cfg)
    assert res.resumed_from is None and len(res.history) == 2
    assert_same_state(model.state_dict(), ref.state_dict())
    assert _checkpoint_epoch(ckpt / "done.pt") == 1 and not (ckpt / "last.pt").exists()  # replaced by a good one


def test_truncated_checkpoint_warns_and_trains_from_scratch(tmp_path):
    ckpt = tmp_path / "ck"
    cfg = TrainConfig(epochs=2, lr=0.02)
    run(mlp(), cfg, ckpt=ckpt)
    data = (ckpt / "done.pt").read_bytes()
    (ckpt / "done.pt").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="unreadable"):
        _, res = run(mlp(), cfg, ckpt=ckpt)
    assert res.resumed_from is None and len(res.history) == 2


def test_checkpoint_of_another_config_is_ignored(tmp_path):
    ckpt = tmp_path / "ck"
    run(mlp(), TrainConfig(epochs=2, lr=0.05), ckpt=ckpt)
    other = TrainConfig(epochs=2, lr=0.01)
    model, res = run(mlp(), other, ckpt=ckpt)
    ref, _ = run(mlp(), other)
    assert res.resumed_from is None and len(res.history) == 2
    assert_same_state(model.state_dict(), ref.state_dict())
    # another run card (same cfg) is another configuration too
    _, res2 = run(mlp(), other, ckpt=ckpt, run_card={"data": "other"})
    assert res2.resumed_from is None
    _, res3 = run(mlp(), other, ckpt=ckpt, run_card={"data": "other"})
    assert res3.resumed_from == 2


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    ckpt = tmp_path / "ck"
    run(mlp(), TrainConfig(epochs=2, lr=0.02), ckpt=ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["done.pt"]  # no temp or probe files left

    # a write that fails half way (here: at fsync of epoch 2) leaves the previous checkpoint intact
    ckpt2 = tmp_path / "ck2"
    real_fsync, calls = os.fsync, {"n": 0}

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="(?i)no space left"):
        run(mlp(), TrainConfig(epochs=3, lr=0.02), ckpt=ckpt2)
    assert sorted(p.name for p in ckpt2.iterdir()) == ["last.pt"]
    assert _checkpoint_epoch(ckpt2 / "last.pt") == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_raises(bad):
    def loss_fn(model, batch):
        return ce_loss(model, batch) * bad

    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at epoch 1, step 0.*learning rate"):
        run(cfg=TrainConfig(epochs=2, lr=0.01), loss_fn=loss_fn)


def test_zero_epochs_is_an_error():
    with pytest.raises(RuntimeError, match="no epoch"):
        run(cfg=TrainConfig(epochs=0))


def test_curves_figure_has_both_panels():
    import matplotlib

    matplotlib.use("Agg")
    _, res = run(cfg=TrainConfig(epochs=2, lr=0.01))
    fig = loop.curves_figure(res.history, title="t")
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_gradient_accumulation_steps_on_the_remainder_of_each_epoch():
    """5 micro-batches with accumulate=4: two optimiser steps per epoch (4 + the remaining 1), the
    last one on that single micro-batch's loss; a dataset smaller than one effective batch still trains."""
    from helpers.train import loop

    torch.manual_seed(0)
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    data = torch.utils.data.TensorDataset(x, y)
    model = torch.nn.Linear(4, 2)
    loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=False)
    cfg = loop.TrainConfig(epochs=1, lr=0.1, warmup_epochs=0, accumulate=4, clip_grad=None, schedule="constant")
    res = loop.train(model, loader, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                     lambda m: {"top1": 0.0}, cfg, None, progress=False, device=torch.device("cpu"))
    assert res.steps == 2
    tiny = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:2], y[:2]), batch_size=2)
    before = torch.nn.Linear(4, 2)
    after = copy.deepcopy(before)
    res = loop.train(after, tiny, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                     lambda m: {"top1": 0.0}, cfg, None, progress=False, device=torch.device("cpu"))
    assert res.steps == 1 and not torch.equal(before.weight, after.weight)


def test_resumed_cs_fine_tuning_draws_the_same_prompts_and_ends_bit_identical(tmp_path):
    """Issue 17: an interrupted CS run resumed from its checkpoint ends with exactly the weights of
    the uninterrupted run (the prompt sampler's random state travels in the checkpoint)."""
    from helpers import models
    from helpers.train import clip_objectives, loop

    names = ["red circle", "green square", "blue triangle"]
    x, y = torch.randn(12, 3, 32, 32), torch.arange(12) % 3

    def run(ckpt, stop_at=None):
        torch.manual_seed(0)
        tuner = clip_objectives.FineTuner(models.load_model("scratch:tiny-rn", device="cpu").model, "CS", names,
                                          ["a photo of {}.", "art of {}.", "a {}."], seed=0)
        loader = loop.train_loader(torch.utils.data.TensorDataset(x, y), 4, seed=0, workers=0)
        calls = {"n": 0}

        def loss_fn(m, b):
            calls["n"] += 1
            if stop_at is not None and calls["n"] > stop_at:
                raise KeyboardInterrupt
            return m(b[0], b[1])

        cfg = loop.TrainConfig(epochs=3, lr=0.01, warmup_epochs=0, seed=0)
        later_is_better = iter(range(100))  # the last epoch is the best: its weights are the result
        loop.train(tuner, loader, loss_fn, lambda m: {"top1": float(next(later_is_better))}, cfg, ckpt,
                   run_card={"t": 1}, progress=False, device=torch.device("cpu"))
        return {k: v for k, v in tuner.clip.state_dict().items()}

    whole = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=5)  # dies in epoch 2 (3 steps an epoch), after epoch 1's checkpoint
    resumed = run(tmp_path / "b")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_second_run_of_the_same_training_fails_at_once_naming_the_first(tmp_path):
    """Issue 17: two processes on one run folder: the second is refused with the owner's pid, never
    adopting the first's half-written checkpoint."""
    import textwrap

    from helpers.core import storage
    from helpers.core.errors import RunInProgressError

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from helpers.core import storage
        with storage.owned_folder({str(tmp_path)!r}, "training run"):
            print("holding", flush=True)
            time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunInProgressError, match=rf"training run in progress \(pid {holder.pid}: "):
            with storage.owned_folder(tmp_path, "training run"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with storage.owned_folder(tmp_path, "training run"):  # free again once the owner is gone
        pass
