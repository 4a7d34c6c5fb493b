"""Training-step speed: eager vs the optimised step of the training loop, bf16 autocast vs fp32, and the
data-wait share of a real loader, measured in one run on this machine.

    python bench/bench_train.py [--model scratch:rn18-small] [--batch-size 128] [--steps 8] [--rounds 3]
                                [--compile auto|true|false] [--data DIR | --no-data] [--threads N] [--no-record]

A step is forward + backward + AdamW update on fixed random inputs (CLIP specs: the CS objective of
notebook 06, a fresh random prompt per class every step; torchvision/timm specs: cross-entropy on a
new linear head). *eager*: contiguous weights and inputs, the per-tensor AdamW. *optimised*: what
:func:`helpers.train.loop.train` does — channels-last for convolutional models, fused AdamW where this
torch has it, the image tower compiled when ``--compile`` asks (``auto``: on CUDA only, like the loop).
*memory returned*: the optimised step with glibc's own handling of freed memory (as it settles: blocks
over 32 MiB mapped and unmapped each time) instead of the suite's (:mod:`helpers.core.memory`: kept for
reuse). The variants run alternately in the same process, after warm-up steps, so a machine that gets
busier or quieter skews no ratio. With ``--data DIR`` (a folder holding ``eurosat_rgb/``), optimised steps also
run on EuroSAT train images through the loop's own loader (its workers, augmentation), and the share of
that time spent blocked on the loader is reported; without ``--data``, the data folder
(``CLIPLAB_DATA``) is used when it holds ``eurosat_rgb/`` (``--no-data`` skips the measurement). The
last line prints the ratios; the numbers are written as a record (``supplementary/bench/results/bench_train.jsonl``) unless ``--no-record``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers import models
from helpers.core import config, layout, memory
from helpers.models import backbones
from helpers.results import records
from helpers.train import clip_objectives, loop

CLASSES = 10  # EuroSAT's class count, so the same head/prompt set serves random and real batches


def build(spec: str, classnames: list[str]) -> tuple[torch.nn.Module, int, tuple, dict]:
    """(model whose ``forward(images, labels)`` is the loss, input size, (mean, std), card)."""
    if spec.startswith(("torchvision:", "timm:")):
        bb = backbones.load_backbone(spec)

        class Classifier(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = bb.classifier(len(classnames))

            def forward(self, x, y):
                return F.cross_entropy(self.net(x), torch.as_tensor(y).to(x.device, non_blocking=True))

        return Classifier().train(), 64, (bb.mean, bb.std), bb.card()
    loaded = models.load_model(spec)
    tuner = clip_objectives.FineTuner(loaded.model, "CS", classnames, "centered-satellite", seed=0,
                                      tokenize=loaded.tokenize, embed_dim=loaded.embed_dim)
    return tuner.train(), loaded.resolution, loaded.normalization, loaded.card()


class Variant:
    """One way of running the step on its own copy of the model (so no variant warms another's caches)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, optimised: bool, compile_setting):
        self.model = copy.deepcopy(model).to(device)
        self.device = device
        self.channels_last = optimised and layout.is_convolutional(self.model)
        layout.set_memory_format(self.model, self.channels_last)
        groups = loop.param_groups(self.model, 0.05)
        self.opt = (loop.adamw(groups, 1e-4, (0.9, 0.999), device) if optimised
                    else torch.optim.AdamW(groups, lr=1e-4))
        self.compiled = None
        if optimised and loop.wants_compile(compile_setting, device):
            self.compiled = loop.Compiled(loop.compile_target(self.model))
            self.compiled.on()

    def steps(self, batches, dtype: torch.dtype, n: int) -> tuple[float, float]:
        """(images per second, share of the time blocked on ``batches``) over ``n`` steps; the device
        is read once, at the end, like the loop reads it once per epoch."""
        clock = batches if isinstance(batches, loop.Batches) else None
        waited0, start = (clock.waited if clock else 0.0), time.perf_counter()
        images, last = 0, None
        for _ in range(n):
            x, y = loop.to_device(next(batches), self.device, self.channels_last)[:2]  # (image, label, path)
            with config.autocast(self.device, dtype):
                loss = self.model(x, y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            images, last = images + x.shape[0], loss.detach()
        float(last)  # wait for the device before stopping the clock
        seconds = time.perf_counter() - start
        return images / seconds, ((clock.waited - waited0) / seconds if clock else 0.0)


def repeat(batch):
    while True:
        yield batch


def data_wait(variant: Variant, train, size: int, norm: tuple, batch_size: int, dtype, steps: int) -> tuple[float, float]:
    """(share of optimised steps on EuroSAT train images (``train``: its Samples) spent waiting for the
    batches notebook 06 trains on, seconds of the one-time decode into memory before them): decoded once,
    augmented per batch (:func:`supervised.train_batches`). The decode is timed apart, as a run pays it
    once, not per step (a training record's first epoch includes it in its ``data_wait``)."""
    from helpers.data import in_memory, transforms
    from helpers.train import supervised

    tf, _ = transforms.image_transform(size, "bicubic", *norm, train=True)
    loader = supervised.train_batches(train, tf, batch_size, seed=0, progress=False)
    start = time.perf_counter()
    if isinstance(loader.dataset, in_memory.InMemory):
        loader.dataset.tensors  # noqa: B018 (decodes every image, once)
    decode_s = time.perf_counter() - start
    batches = loop.Batches(loader)
    variant.steps(batches, dtype, min(steps, len(loader)))
    return batches.wait_share(), decode_s


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="scratch:rn18-small")
    ap.add_argument("--size", type=int, default=None, help="input size (default: the model's resolution)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                    help="compile the optimised step's image tower (auto: on CUDA only, like the loop)")
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--data", default=None,
                        help="folder holding eurosat_rgb/ for the data-wait share (default: CLIPLAB_DATA when it holds it)")
    source.add_argument("--no-data", action="store_true", help="random tensors only: do not measure the data wait")
    ap.add_argument("--data-steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default torch's; 1 is steadier on a CPU shared with other jobs)")
    ap.add_argument("--no-record", action="store_true", help="print only; write no record")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    compile_setting = {"auto": "auto", "true": True, "false": False}[args.compile]

    if args.data is None and not args.no_data and (config.data_root() / "eurosat_rgb").is_dir():
        args.data = str(config.data_root())
    elif args.data is None and not args.no_data:
        print(f"no eurosat_rgb/ in {config.data_root()} (CLIPLAB_DATA) and no --data: the data wait is not measured")
    torch.manual_seed(0)
    device = config.device()
    classnames, train = [f"class {i}" for i in range(CLASSES)], None
    if args.data:
        from helpers import data

        train = data.load_eurosat(Path(args.data).expanduser() / "eurosat_rgb")["train"]
        classnames = train.classnames
    model, size, norm, card = build(args.model, classnames)
    size = args.size or size
    batch = (torch.randn(args.batch_size, 3, size, size), torch.arange(args.batch_size) % len(classnames))
    fast = config.autocast_dtype(device)
    variants = {"eager": Variant(model, device, False, compile_setting),
                "optimised": Variant(model, device, True, compile_setting)}
    fname = config.dtype_name(fast)
    # (variant, precision, allocator): "returned" is glibc's own handling of freed memory, as it settles
    runs = {f"eager {fname}": ("eager", fast, "keep"), f"optimised {fname}": ("optimised", fast, "keep"),
            "optimised fp32": ("optimised", torch.float32, "keep"),
            f"optimised {fname}, memory returned": ("optimised", fast, "system")}
    for v, dtype, allocator in runs.values():  # warm-up: oneDNN picks kernels per precision and layout, compiling happens
        memory.apply(allocator)
        variants[v].steps(repeat(batch), dtype, 2)
    rates = {name: [] for name in runs}
    for _ in range(args.rounds):  # alternate so drift in machine load hits every variant alike
        for name, (v, dtype, allocator) in runs.items():
            memory.apply(allocator)
            rates[name].append(variants[v].steps(repeat(batch), dtype, args.steps)[0])
    memory.apply("keep")
    best = {name: max(r) for name, r in rates.items()}
    out = {f"{name.replace(' ', '_')}_images_per_s": round(best[name], 1) for name in best}
    out["optimised_over_eager"] = round(best[f"optimised {fname}"] / best[f"eager {fname}"], 2)
    out[f"{fname}_over_fp32"] = round(best[f"optimised {fname}"] / best["optimised fp32"], 2)
    out["memory_kept_over_returned"] = round(best[f"optimised {fname}"] / best[f"optimised {fname}, memory returned"], 2)
    if args.data:
        wait, decode_s = data_wait(variants["optimised"], train, size, norm, args.batch_size, fast, args.data_steps)
        out["data_wait"], out["decode_into_memory_s"] = round(wait, 3), round(decode_s, 2)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    how = {"channels_last": variants["optimised"].channels_last,
           "fused_adamw": bool(variants["optimised"].opt.defaults.get("fused")),
           "compiled": variants["optimised"].compiled is not None}
    print(f"{args.model} at {size}px, batch {args.batch_size}, {device}, {torch.get_num_threads()} threads, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {config.cpu_supports_bf16()}, "
          f"load average {' '.join(f'{x:.2f}' for x in load) if load else '?'}")
    print(f"  optimised step: {', '.join(k for k, v in how.items() if v) or 'nothing applies'}")
    for name in runs:
        print(f"  {name:>30}: {best[name]:8.1f} images/s (training step, best of {args.rounds} rounds)")
    if args.data:
        print(f"  data wait: {out['data_wait']:.1%} of optimised steps on EuroSAT train images, after decoding "
              f"them into memory once in {out['decode_into_memory_s']:.1f} s ({config.decode_workers()} workers)")
    print(f"ratios: optimised/eager={out['optimised_over_eager']:.2f} {fname}/fp32={out[f'{fname}_over_fp32']:.1f}"
          f" kept/returned={out['memory_kept_over_returned']:.2f}"
          + (f" data_wait={out['data_wait']:.2f}" if args.data else ""))
    if not args.no_record:
        rec = records.make_record("bench_train", out, dataset={"name": "EuroSAT train + random tensors" if args.data
                                                                 else "random tensors", "split": f"{size}px"},
                                  model=card, profile="bench", variant=f"batch={args.batch_size}",
                                  protocol={**vars(args), "size": size, "data": bool(args.data), "optimised": how,
                                            "device": str(device), "load_average": list(load) if load else None})
        rec["untrained"] = False  # a speed measurement, not an accuracy
        records.append_record(rec)
    return out


if __name__ == "__main__":
    main()
