"""The one training loop of the suite (ImageNet baselines, CLIP fine-tuning, proxy experts, SR models).

What a task supplies: a model, data loaders, ``loss_fn(model, batch) -> loss`` and
``evaluate(model) -> {"metric": ..., ...}`` on validation. The loop does the rest: AdamW with weight
decay only on weights (not on gains, biases, embeddings or logit scales), warmup + cosine/linear
schedule per step, gradient accumulation and clipping, autocast (bf16 on CPU, fp16 + grad scaler on
CUDA; weights stay fp32), early stopping on the validation metric, the best weights kept, a
checkpoint written atomically every epoch, and resume from it after an interruption. Shuffling is
seeded per epoch, so a resumed run sees the same batches as an uninterrupted one. A completed run
leaves only ``done.pt`` (best weights + history; ``keep_last`` keeps the full ``last.pt``), which lets a
rerun of the same configuration skip training.

Speed without changing what is computed: convolutional models (ResNet towers, torchvision/timm CNNs,
SR nets) train in channels-last memory format, AdamW runs fused where this torch has the kernel, the
image tower is compiled where that pays (``compile``), and the step loop never waits for the device
(running loss, grad norm and the non-finite check stay on it and are read once per epoch), so an
accelerator is fed without a round trip per batch. Each epoch's history row states the share of its
training time spent blocked on the loader (``data_wait``).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from helpers.core import config, distributed, layout, storage
from helpers.core.compiled import parse_mode as parse_compile_mode


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    accumulate: int = 1  # micro-batches per optimiser step (effective batch = batch_size x accumulate)
    clip_grad: float | None = 1.0
    patience: int | None = None  # epochs without val improvement before stopping
    seed: int = 0
    max_minutes: float | None = None  # wall-time budget; training stops after the epoch that crosses it
    metric: str = "top1"  # key of evaluate()'s dict to select the best epoch (higher is better)
    betas: tuple[float, float] = (0.9, 0.999)
    # keep the full resume checkpoint (weights, optimiser, scheduler) after the run completes; by default
    # it is replaced by the compact ``done.pt`` (best weights + history), a quarter of its size
    keep_last: bool = False
    # torch.compile the image tower for training steps: "auto" on CUDA only (on CPU the compile time of a
    # short run outweighs its few percent over channels-last), True / False to force; eager on failure
    compile: str | bool = "auto"

    def card(self) -> dict:
        """What shapes the result; how it is executed (``keep_last``, ``compile``) is left out, so it
        never changes a run's key."""
        return {k: v for k, v in asdict(self).items() if k not in _EXECUTION_KEYS}


_EXECUTION_KEYS = ("keep_last", "compile")
TIMING_KEYS = ("seconds", "data_wait")  # history entries that measure the machine, not the run


@dataclass
class TrainResult:
    history: list[dict]
    best_epoch: int
    best_metric: float
    best_state: dict
    seconds: float
    stopped: str
    resumed_from: int | None = None
    steps: int = 0
    extra: dict = field(default_factory=dict)

    def training_card(self, what: str) -> dict:
        """``protocol.training`` of a record whose result needed this training: ``ran`` says whether epochs
        were trained by this call (False: a finished checkpoint was reused); the suite's summary lists them."""
        resumed = self.resumed_from or 0
        trained = max(0, len(self.history) - resumed)
        return {"what": what, "ran": trained > 0, "epochs_trained": trained, "epochs_run": len(self.history),
                "resumed_from_epoch": self.resumed_from, "seconds": self.seconds}


class EpochSampler(torch.utils.data.Sampler):
    """A random permutation per epoch from (seed, epoch): resuming at epoch e replays the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


def train_loader(dataset, batch_size: int, seed: int, workers: int | None = None, drop_last: bool = True):
    """A shuffling loader whose order and augmentation randomness depend only on (seed, epoch).

    Under torchrun each rank reads its own shard with ``batch_size / world size`` images per step, so
    the effective batch stays ``batch_size``.
    """
    workers = config.num_workers() if workers is None else workers
    if distributed.is_distributed():
        sampler, batch_size = distributed.sampler(dataset, seed), max(1, batch_size // distributed.world_size())
    else:
        sampler = EpochSampler(len(dataset), seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        persistent_workers=False, prefetch_factor=4 if workers else None,
        worker_init_fn=_seed_worker, pin_memory=torch.cuda.is_available())


def _seed_worker(worker_id: int):
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32  # set by the loader from the sampler epoch's generator state
    random.seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and kernels only; none on gains, biases, embeddings, logit scales."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "embedding" in name or name.endswith("logit_scale")
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 1.0

    return f


def count_trainable(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


# ------------------------------------------------------------------------------------------ speed
COMPILE_BACKEND = "inductor"  # what torch.compile uses (tests swap in a failing one for the fallback)


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel over all tensors where this torch has it for ``device`` (CUDA, CPU
    since torch 2.4): the same update with fewer passes over memory; the per-tensor loop otherwise.
    Fused AdamW also takes the grad scaler's inf check on the device, so fp16 steps do not sync."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        fused = device.type in _get_fused_kernels_supported_devices() and all(
            p.is_floating_point() for g in groups for p in g["params"])
    except ImportError:
        fused = False
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError):  # a torch that checks (and refuses) at construction
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def to_device(batch, device: torch.device, channels_last: bool = False):
    """The images of a batch (floating 4-D tensors) on ``device``, channels-last for conv nets, copied
    without blocking (from pinned memory on CUDA), so the host queues the step and moves on. Labels and
    strings stay on the host: losses move them themselves (the FLYP prompt sampler reads labels there)."""
    fmt = torch.channels_last if channels_last else torch.preserve_format

    def move(x):
        if torch.is_tensor(x) and x.is_floating_point() and x.ndim == 4:
            return x.to(device, non_blocking=True, memory_format=fmt)
        return x

    return type(batch)(move(x) for x in batch) if type(batch) in (list, tuple) else move(batch)


def wants_compile(setting: str | bool, device: torch.device) -> bool:
    """``compile: auto`` compiles training steps on CUDA only: on CPU a short run spends more compiling
    than it saves (the grammar of the setting is the encoders', :func:`helpers.core.compiled.parse_mode`)."""
    mode = parse_compile_mode(setting)
    return device.type == "cuda" if mode == "auto" else mode


def compile_target(model: torch.nn.Module) -> torch.nn.Module:
    """The module worth compiling: the image tower of a CLIP (bare or inside a fine-tuning wrapper,
    whose prompt sampling and tokenising stay eager), else the whole network."""
    inner = getattr(model, "clip", model)
    if isinstance(getattr(inner, "visual", None), torch.nn.Module):
        return inner.visual
    vision = getattr(getattr(inner, "model", None), "vision_model", None)
    return vision if isinstance(vision, torch.nn.Module) else model


class Batches:
    """One pass over a loader that clocks how long its consumer is blocked on it (starting the workers
    included): :meth:`wait_share` is the fraction of the pass spent waiting for data, not computing."""

    def __init__(self, loader):
        self.start = time.perf_counter()
        self._batches = iter(loader)
        self.waited = time.perf_counter() - self.start

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        try:
            return next(self._batches)
        finally:
            self.waited += time.perf_counter() - t

    def wait_share(self) -> float:
        """Waited / elapsed since the pass began; read it after the device has finished (a sync)."""
        return self.waited / max(time.perf_counter() - self.start, 1e-9)


class Compiled:
    """``torch.compile`` of one module's forward, switched on for training steps and off for evaluation
    (eval mode, no-grad and other batch sizes would each compile again). The weights and their
    state-dict keys are untouched: only the module's ``forward`` attribute is replaced while on."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.fn = torch.compile(module.forward, backend=COMPILE_BACKEND)
        self.proven = False  # a step has run through it (compiling happens in the first one)

    def on(self) -> None:
        self.module.forward = self.fn

    def off(self) -> None:
        self.module.__dict__.pop("forward", None)


def _random_state(model: torch.nn.Module) -> dict:
    """Every random state a step may draw from (torch, python, numpy, modules' extra states such as the
    prompt sampler), so a step that failed to compile reruns eagerly with the same draws."""
    import numpy as np

    return {"torch": torch.random.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "extra": {k: copy.deepcopy(v) for k, v in model.state_dict().items() if k.endswith("_extra_state")}}


def _restore_random_state(model: torch.nn.Module, state: dict) -> None:
    import numpy as np

    torch.random.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    if state["extra"]:
        model.load_state_dict(state["extra"], strict=False)


def _fingerprint(cfg: TrainConfig, model: torch.nn.Module, extra: dict) -> str:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_tensor(v)}
    return storage.sha256_json({"cfg": cfg.card(), "shapes": shapes, "extra": extra})


def train(model: torch.nn.Module, loader, loss_fn: Callable, evaluate: Callable[[torch.nn.Module], dict],
          cfg: TrainConfig, checkpoint_dir: Path | str | None = None, **kwargs) -> TrainResult:
    """Train ``model`` in place (see :func:`_train`). The checkpoint folder is owned by this run for
    its whole duration: the same configuration started twice fails at once instead of both runs
    adopting and overwriting one ``last.pt``."""
    if checkpoint_dir is None or not distributed.is_main():
        return _train(model, loader, loss_fn, evaluate, cfg, checkpoint_dir, **kwargs)
    with storage.owned_folder(checkpoint_dir, "training run"):
        return _train(model, loader, loss_fn, evaluate, cfg, checkpoint_dir, **kwargs)


def _train(model: torch.nn.Module, loader, loss_fn: Callable, evaluate: Callable[[torch.nn.Module], dict],
          cfg: TrainConfig, checkpoint_dir: Path | str | None = None, *, run_card: dict | None = None,
          device: torch.device | None = None, progress: bool = True, optimizer_factory=None) -> TrainResult:
    """Train ``model`` in place; returns the history and the best weights (by ``cfg.metric`` on val).

    ``checkpoint_dir``: ``last.pt`` is written atomically after every epoch; when it exists and was
    written by the same configuration (``run_card``, model shapes, cfg), training resumes from it.
    Under torchrun, ``loss_fn`` gets the model wrapped in DistributedDataParallel (so its ``forward``
    must compute the loss) and only rank 0 writes checkpoints; every rank reads them to resume.
    """
    device = device or config.device()
    model.to(device)
    # the trained model leaves as it came, also when stopped: its weights' layout, an eager forward
    with layout.channels_last(model) as channels_last:
        compiled = None
        if wants_compile(cfg.compile, device):
            try:
                compiled = Compiled(compile_target(model))
            except Exception as e:  # noqa: BLE001 (e.g. a Python this torch cannot compile on)
                _compile_failed(e)
        try:
            return _run(model, loader, loss_fn, evaluate, cfg, checkpoint_dir, run_card, device, progress,
                        optimizer_factory, channels_last, compiled)
        finally:
            if compiled:
                compiled.off()


def _compile_failed(e: Exception) -> None:
    """The one-line note of a compile that failed; training goes on eagerly."""
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    tqdm.write(f"torch.compile failed ({type(e).__name__}: {first}); training eagerly")


def _run(model, loader, loss_fn, evaluate, cfg: TrainConfig, checkpoint_dir, run_card, device, progress,
         optimizer_factory, channels_last: bool, compiled: Compiled | None) -> TrainResult:
    runner = distributed.wrap(model, device)
    dtype = config.autocast_dtype(device)
    params = param_groups(model, cfg.weight_decay)
    opt = (optimizer_factory or (lambda groups: adamw(groups, cfg.lr, cfg.betas, device)))(params)
    n_batches = len(loader)
    steps_per_epoch = max(1, math.ceil(n_batches / cfg.accumulate))  # the remainder steps too
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and dtype == torch.float16)
    fingerprint = _fingerprint(cfg, model, run_card or {})

    history: list[dict] = []
    best_metric, best_epoch, best_state, since_best = -math.inf, -1, None, 0
    start_epoch, resumed_from, steps, elapsed_before = 0, None, 0, 0.0
    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    done_path = Path(checkpoint_dir) / "done.pt" if checkpoint_dir else None
    if ckpt_path:
        if distributed.is_main():
            storage.ensure_writable_dir(ckpt_path.parent, "checkpoint", "CLIPLAB_CACHE")
        finished = _load_checkpoint(done_path, fingerprint)
        if finished is not None:  # this exact run completed before: its best weights, no training
            model.load_state_dict(finished["best_state"])
            return TrainResult(finished["history"], finished["best_epoch"], finished["best_metric"],
                               finished["best_state"], finished["seconds"], finished["stopped"],
                               finished["epoch"] + 1, finished["steps"])
        state = _load_checkpoint(ckpt_path, fingerprint)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            history, best_metric, best_epoch = state["history"], state["best_metric"], state["best_epoch"]
            best_state, since_best, steps = state["best_state"], state["since_best"], state["steps"]
            start_epoch = resumed_from = state["epoch"] + 1
            elapsed_before = state["seconds"]
            stopped = state["stopped"]
            if state["done"]:
                start_epoch = cfg.epochs

    def micro_step(batch, group: int) -> torch.Tensor:
        with config.autocast(device, dtype):
            loss = loss_fn(runner, batch)
        scaler.scale(loss / group).backward()  # the mean over the micro-batches really in this step
        return loss.detach().float()

    def first_compiled_step(batch, group: int) -> torch.Tensor:
        """Compiling happens here; when it fails, the step reruns eagerly with the same random draws."""
        nonlocal compiled
        before = _random_state(model)
        try:
            loss = micro_step(batch, group)
            compiled.proven = True
            return loss
        except Exception as e:  # noqa: BLE001 (any compiler failure; a real error recurs eagerly)
            compiled.off()
            compiled = None  # the caller's copy is off too: its finally finds nothing left to undo
            _compile_failed(e)
            opt.zero_grad(set_to_none=True)
            _restore_random_state(model, before)
            return micro_step(batch, group)

    t0 = time.perf_counter() - elapsed_before
    stopped = "epochs" if resumed_from is None else stopped
    sampler = getattr(loader, "sampler", None)
    for epoch in range(start_epoch, cfg.epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout etc. replay identically on resume
        model.train()
        if compiled:
            compiled.on()
        # running sums stay on the device (read once per epoch): loss, finite-grad-norm sum and count,
        # and the first non-finite loss (step index, value); float64 where the device has it, as exact as
        # the host floats they replace
        zero = torch.zeros((), device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)
        loss_sum, norm_sum, norm_count, bad_step, bad_loss = zero, zero, zero, zero - 1, zero
        opt.zero_grad(set_to_none=True)
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        batches, count = Batches(loader), 0
        for i, batch in enumerate(batches):
            batch = to_device(batch, device, channels_last)
            group = min(cfg.accumulate, n_batches - (i // cfg.accumulate) * cfg.accumulate)
            loss = (first_compiled_step if compiled and not compiled.proven else micro_step)(batch, group)
            newly_bad = (bad_step < 0) & ~torch.isfinite(loss)
            bad_step, bad_loss = torch.where(newly_bad, i, bad_step), torch.where(newly_bad, loss, bad_loss)
            loss_sum, count = loss_sum + loss, count + 1
            if (i + 1) % cfg.accumulate == 0 or i + 1 == n_batches:
                if cfg.clip_grad:
                    scaler.unscale_(opt)
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad).float()
                    finite = torch.isfinite(norm)  # fp16 overflow steps are skipped by the scaler
                    norm_sum, norm_count = norm_sum + torch.where(finite, norm, 0.0), norm_count + finite
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
                steps += 1
            bar.update(1)
        bar.close()
        loss_total, norm_total, norms, first_bad, bad_value = torch.stack(
            [loss_sum, norm_sum, norm_count, bad_step.float(), bad_loss]).tolist()  # the epoch's one sync
        data_wait = batches.wait_share()
        if compiled:
            compiled.off()
        if first_bad >= 0:
            raise FloatingPointError(f"loss is {bad_value} at epoch {epoch + 1}, step {int(first_bad)}; "
                                     "lower the learning rate or check the inputs")
        distributed.sync_buffers(model)
        model.eval()
        with torch.no_grad():
            val = evaluate(model)
        row = {"epoch": epoch + 1, "train_loss": loss_total / max(count, 1), "lr": opt.param_groups[0]["lr"],
               **({"grad_norm": norm_total / norms} if norms else {}),
               "seconds": round(time.perf_counter() - t0, 2),
               "data_wait": round(data_wait, 4),
               **{f"val_{k}": v for k, v in val.items()}}
        history.append(row)
        if val[cfg.metric] > best_metric:
            best_metric, best_epoch, since_best = float(val[cfg.metric]), epoch + 1, 0
            best_state = {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
                          if torch.is_tensor(v) else copy.deepcopy(v) for k, v in model.state_dict().items()}
        else:
            since_best += 1
        if progress:
            tqdm.write(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val {cfg.metric} "
                       f"{val[cfg.metric]:.4f} (best {best_metric:.4f} @ {best_epoch}), {row['seconds']:.0f} s, "
                       f"{row['data_wait']:.0%} waiting for data")
        done = False
        if cfg.patience is not None and since_best >= cfg.patience:
            stopped, done = f"early stop: no val improvement for {cfg.patience} epochs", True
        elif cfg.max_minutes is not None and row["seconds"] / 60 >= cfg.max_minutes:
            stopped, done = f"time budget of {cfg.max_minutes} min reached", True
        if ckpt_path and distributed.is_main():
            storage.atomic_torch_save({
                "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "history": history,
                "best_metric": best_metric, "best_epoch": best_epoch, "best_state": best_state,
                "since_best": since_best, "steps": steps, "seconds": row["seconds"],
                "done": done, "stopped": stopped}, ckpt_path)
        if done:
            break
    if best_state is None:
        raise RuntimeError("no epoch was trained (epochs = 0?)")
    model.load_state_dict(best_state)
    seconds = round(time.perf_counter() - t0, 2)
    if ckpt_path and distributed.is_main() and not cfg.keep_last:
        _compact(ckpt_path, done_path, {
            "fingerprint": fingerprint, "epoch": len(history) - 1, "history": history, "best_metric": best_metric,
            "best_epoch": best_epoch, "best_state": best_state, "steps": steps, "seconds": seconds,
            "stopped": stopped})
    how = {"channels_last": channels_last, "fused_adamw": bool(opt.defaults.get("fused")),
           "compiled": bool(compiled and compiled.proven)}
    return TrainResult(history, best_epoch, best_metric, best_state, seconds, stopped, resumed_from, steps, how)


def _compact(last: Path, done: Path, state: dict) -> None:
    """A completed run keeps only what a rerun needs to skip training (best weights, history): ``done.pt``
    is written atomically first, then ``last.pt`` (weights + optimiser moments + best copy) is removed."""
    storage.atomic_torch_save(state, done)
    last.unlink(missing_ok=True)


def _load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint at ``path`` when it is readable and from this same configuration, else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        import warnings

        warnings.warn(f"checkpoint {path} is unreadable ({type(e).__name__}); training from the start",
                      stacklevel=3)
        return None
    if state.get("fingerprint") != fingerprint:
        return None
    return state


def curves_figure(history: list[dict], title: str = "", metric: str = "top1"):
    """Train loss and validation metric per epoch (and val loss when the task reports one)."""
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    if "val_loss" in history[0]:
        ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(epochs, [h[f"val_{metric}"] for h in history], "o-", color="tab:green", label=f"val {metric}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(f"val {metric}")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig
