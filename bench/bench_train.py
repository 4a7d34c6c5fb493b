"""Training-step speed with bf16 autocast vs fp32, measured in one run on this machine.

    python bench/bench_train.py [--model torchvision:resnet18] [--size 64] [--batch-size 128] [--steps 8]

A step is forward + backward + AdamW update on random inputs of the given size (the data pipeline is
not part of it). Both precisions run alternately in the same process, after warm-up steps, so the
ratio is not skewed by a machine that gets busier or quieter. The numbers are written as a record
(``supplementary/bench/results/bench_train.jsonl``).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from helpers import models
from helpers.core import config
from helpers.models import backbones
from helpers.results import records


def build(spec: str) -> tuple[torch.nn.Module, callable, dict]:
    """(model, loss_fn(model, x) -> loss, card) for a torchvision backbone or a CLIP spec."""
    if spec.startswith("torchvision:"):
        bb = backbones.load_backbone(spec)
        net = bb.classifier(10).train()
        return net, lambda m, x: F.cross_entropy(m(x), torch.randint(0, 10, (x.shape[0],))), bb.card()
    loaded = models.load_model(spec)
    clip_model = loaded.model.train()
    tokens = loaded.tokenize([f"a photo of class {i}" for i in range(10)])

    def clip_loss(m, x):  # the CS objective: image embeddings vs class-prompt embeddings
        img = F.normalize(m.encode_image(x), dim=-1)
        txt = F.normalize(m.encode_text(tokens), dim=-1)
        return F.cross_entropy(m.logit_scale.exp() * img @ txt.T, torch.randint(0, 10, (x.shape[0],)))

    return clip_model, clip_loss, loaded.card()


def steps_per_second(model, loss_fn, x, dtype, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    for _ in range(steps):
        with config.autocast(torch.device("cpu"), dtype):
            loss = loss_fn(model, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - start)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="torchvision:resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model, loss_fn, card = build(args.model)
    size = getattr(getattr(model, "visual", None), "input_resolution", args.size)
    x = torch.randn(args.batch_size, 3, size, size)
    precisions = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for dtype in precisions.values():  # warm-up: oneDNN picks and caches kernels per precision
        steps_per_second(model, loss_fn, x, dtype, 2)
    rates = {name: [] for name in precisions}
    for _ in range(args.rounds):  # alternate so drift in machine load hits both precisions alike
        for name, dtype in precisions.items():
            rates[name].append(steps_per_second(model, loss_fn, x, dtype, args.steps))
    best = {name: max(r) for name, r in rates.items()}
    out = {f"{name}_images_per_s": round(best[name] * args.batch_size, 1) for name in best}
    out["bf16_over_fp32"] = round(best["bf16"] / best["fp32"], 2)
    print(f"{args.model} at {size}px, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {config.cpu_supports_bf16()}")
    for name in precisions:
        print(f"  {name}: {out[f'{name}_images_per_s']:8.1f} images/s (training step, best of {args.rounds} rounds)")
    print(f"  bf16 / fp32 step speed: {out['bf16_over_fp32']:.2f}x")
    rec = records.make_record("bench_train", out, dataset={"name": "random tensors", "split": f"{size}px"},
                              model=card, profile="bench", variant=f"batch={args.batch_size}",
                              protocol=vars(args))
    rec["untrained"] = False  # a speed measurement, not an accuracy
    records.append_record(rec)
    return out


if __name__ == "__main__":
    main()
