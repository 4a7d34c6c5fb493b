"""Fine-tune CLIP exactly as notebook 06 does, on one process or on several with DDP.

    python scripts/finetune_clip.py --profile offline
    torchrun --nproc_per_node 2 scripts/finetune_clip.py --profile offline -p clip_finetune.objectives=[CS] \
        -p clip_finetune.train.epochs=5

``-p dotted.key=value`` sets any profile key, with the suite's grammar (YAML values; ``null`` switches
an optional feature such as ``clip_finetune.wise_ft`` off); the configuration is validated first. Under torchrun each process trains on its shard of every batch (gloo on CPU, nccl on
CUDA), gradients are averaged, and only rank 0 writes checkpoints, records and figures. With
``--weights-report PATTERN`` each rank writes the hash of its final weights to PATTERN.format(rank=r).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import profiles, settings  # noqa: E402
from helpers.core import config, distributed  # noqa: E402
from helpers.core.errors import (  # noqa: E402
    DatasetError,
    NotWritableError,
    RunInProgressError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from helpers.experiments import clip_finetune  # noqa: E402

# what a user can fix from the message alone: one line, no traceback
USER_ERRORS = (RunInProgressError, DatasetError, NotWritableError, WeightsNotFoundError, WeightsMismatchError)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=config.profile_name(),
                    help=f"a bundled profile ({', '.join(profiles.available())}) or the path of your own YAML")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting by dotted key, e.g. clip_finetune.train.epochs=3 (repeatable)")
    ap.add_argument("--weights-report", default=None, help="per-rank JSON with the final weights' hash")
    args = ap.parse_args(argv)
    try:  # a bad setting stops every rank before any process group or data is touched
        P = profiles.load(args.profile, args.param)
    except settings.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    distributed.setup()
    try:
        try:
            outcome = clip_finetune.run(P, P.dataset(), progress=distributed.is_main())
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
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
