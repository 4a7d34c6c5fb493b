"""Tables rebuilt from records: results aggregated over seeds (mean and 95% CI), untrained masked."""

from __future__ import annotations

import pandas as pd

from helpers.eval import probes
from helpers.results import records


def seed_summary(recs: list[dict], metric: str = "top1") -> pd.DataFrame:
    """Mean and 95% CI of ``metric`` over seeds, one row per model and facets other than the seed."""
    groups: dict[tuple, list[float]] = {}
    flags: dict[tuple, bool] = {}
    for r in recs:
        facets = {k: v for k, v in records.facets(r).items() if k != "seed"}
        key = (r["model"].get("spec"), tuple(sorted((k, str(v)) for k, v in facets.items())))
        groups.setdefault(key, []).append(r["metrics"][metric])
        flags[key] = bool(r.get("untrained"))
    rows = []
    for (spec, facets), values in groups.items():
        mean, lo, hi = probes.mean_ci(values)
        rows.append({"model": spec, **dict(facets), "seeds": len(values), f"{metric}_mean": round(mean, 4),
                     "ci95_low": round(lo, 4), "ci95_high": round(hi, 4), "untrained": flags[(spec, facets)]})
    return records.mask_untrained(pd.DataFrame(rows), [f"{metric}_mean", "ci95_low", "ci95_high"])
