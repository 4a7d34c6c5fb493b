"""Fine-tune CLIP exactly as notebook 06 does, on one process or on several with DDP.

    python scripts/finetune_clip.py --profile offline
    torchrun --nproc_per_node 2 scripts/finetune_clip.py --profile offline -p objectives=[CS] -p train.epochs=5

``-p key=value`` overrides the profile's ``clip_finetune`` settings (dotted keys reach nested ones;
values are YAML). Under torchrun each process trains on its shard of every batch (gloo on CPU, nccl on
CUDA), gradients are averaged, and only rank 0 writes checkpoints, records and figures. With
``--weights-report PATTERN`` each rank writes the hash of its final weights to PATTERN.format(rank=r).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import clip_experiments, config, distributed, profiles  # noqa: E402


def overrides(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"-p {item!r}: use key=value (dotted keys for nested settings)")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=config.profile_name(), choices=profiles.available())
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--weights-report", default=None, help="per-rank JSON with the final weights' hash")
    args = ap.parse_args(argv)
    distributed.setup()
    try:
        P = profiles.load(args.profile, clip_finetune=overrides(args.param))
        outcome = clip_experiments.clip_finetune(P, P.dataset(), progress=distributed.is_main())
        if distributed.is_main():
            print(outcome.table.to_string(index=False))
        if args.weights_report:
            report = {"rank": distributed.rank(), "world_size": distributed.world_size(),
                      "runs": {o: {"trained_sha256": r.trained_sha256, "initial_sha256": r.initial_sha256,
                                   "steps": r.tuned.result.steps, "checkpoint": r.checkpoint}
                               for o, r in outcome.extra["runs"].items()}}
            Path(args.weights_report.format(rank=distributed.rank())).write_text(json.dumps(report, indent=2))
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
