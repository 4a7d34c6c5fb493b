"""Result records: one JSON line per result, numbers plus the protocol card that produced them.

Tables, figures and the report are rebuilt from these files only. A record states the dataset
(layout, split and how it was made, counts, fingerprint), the model (spec, weights sha256, whether
it was trained), the transform, prompts, seeds, profile, package versions, git commit and wall time.
Results of untrained weights carry ``"untrained": true`` and are never shown as accuracies. A record
made with the predictions also says which test images the model got right (``per_image``), so two
models measured on the same images can be tested against each other.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import json
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers.core import config, memory, storage
from helpers.core.errors import RecordError  # noqa: F401 (re-exported)

PACKAGES = ("torch", "torchvision", "openai-clip", "numpy", "scikit-learn", "pandas", "pillow", "matplotlib")


@functools.lru_cache(maxsize=1)
def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    out["torch"] = torch.__version__  # with its build tag (+cpu, +cu130): it changes the numbers
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> dict:
    """Commit of the project checkout and whether it had uncommitted changes."""
    def run(*args):
        done = subprocess.run(["git", *args], cwd=config.PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""  # no commit yet: stdout is "HEAD"
    try:
        commit = run("rev-parse", "HEAD") or None
        dirty = bool(run("status", "--porcelain", "--untracked-files=no")) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def environment() -> dict:
    dev = config.device()
    return {"device": str(dev), "autocast": config.dtype_name(config.autocast_dtype(dev)),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "allocator": memory.card(), "platform": platform.platform(), **cpu()}  # cpu(): read once per process


@functools.lru_cache(maxsize=1)
def cpu() -> dict:
    """The CPU's model name and whether it has AMX (bf16 speed-ups measured on one do not carry over to
    one without it), read from /proc/cpuinfo where there is one."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu": platform.processor() or None}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"cpu": model, "amx": "amx_bf16" in flags}


class Timer:
    """Wall time of an experiment, for its record."""

    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def make_record(experiment: str, metrics: dict, *, dataset: dict, model: dict | None = None,
                protocol: dict | None = None, seeds=None, profile: str | None = None,
                wall_time_s: float | None = None, variant: str = "", figures=(), facets: dict | None = None,
                predictions=None, labels=None, **extra) -> dict:
    """Assemble a record; ``dataset``/``model`` are the ``card()`` of a Samples / LoadedModel.

    ``facets`` say, as fields, what distinguishes this result within its experiment (``head``, ``k``,
    ``seed``, ``objective``, ``stage``, ``upsampler``, ``alpha``, ...): tables group and filter on
    them. ``variant`` is the same as a short human-readable label; with the experiment, dataset and
    model it forms the record's ``key``, so a re-run replaces it in tables. ``figures`` are the files
    (relative to the output folder) that show this result.

    ``predictions`` (class indices [N], or scores [N, C] whose argmax is the prediction) with the
    test ``labels`` add ``per_image``: which test images the model got right, packed one bit per
    image (:func:`per_image`), so the report can test two models on the same images against each
    other (McNemar). They must be the predictions the metrics were computed from: a top-1 that
    disagrees with them is an error.
    """
    untrained = bool(model and model.get("status") == "untrained")
    key = "|".join(str(x) for x in (experiment, dataset.get("name"), dataset.get("split"),
                                    (model or {}).get("spec", ""), variant))
    return {
        "experiment": experiment,
        "key": key,
        "variant": variant,
        "facets": {k: v for k, v in (facets or {}).items() if v is not None},
        "figures": [str(f) for f in figures],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "profile": profile or config.profile_name(),
        "untrained": untrained,
        "metrics": metrics,
        "dataset": dataset,
        "model": model or {},
        "protocol": protocol or {},
        "seeds": seeds if isinstance(seeds, (list, tuple)) or seeds is None else [seeds],
        "wall_time_s": wall_time_s,
        "environment": environment(),
        "versions": versions(),
        "git": git_commit(),
        **({"per_image": per_image(predictions, labels, dataset, metrics.get("top1"))}
           if predictions is not None or labels is not None else {}),
        **extra,
    }


def per_image(predictions, labels, dataset: dict, top1: float | None = None) -> dict:
    """Per-image correctness in a record: ``correct`` is base64 of the bits (1 = right, in the order
    of the dataset's images, ``numpy.packbits``), ``n`` the number of images and ``test_set`` the
    dataset's fingerprint, so only results on the very same images are ever paired."""
    if predictions is None or labels is None:
        raise ValueError("per-image correctness needs both predictions and labels")
    pred = predictions.detach().cpu().numpy() if isinstance(predictions, torch.Tensor) else np.asarray(predictions)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    pred = pred.argmax(axis=1) if pred.ndim == 2 else pred
    if pred.shape != y.shape or y.ndim != 1:
        raise ValueError(f"predictions {pred.shape} and labels {y.shape} do not pair image by image")
    correct = pred.astype(np.int64) == y.astype(np.int64)
    if top1 is not None and correct.size and abs(float(correct.mean()) - float(top1)) > 1e-6:
        raise ValueError(f"the predictions give top-1 {correct.mean():.6f}, the metrics say {top1:.6f}: "
                         "they are not the predictions these metrics were computed from")
    return {"correct": base64.b64encode(np.packbits(correct)).decode("ascii"), "n": int(correct.size),
            "test_set": dataset.get("fingerprint")}


def correctness(record: dict) -> np.ndarray | None:
    """A record's per-image correctness (bool [n]), or None when it was recorded without predictions."""
    found = record.get("per_image")
    if not isinstance(found, dict) or "correct" not in found:
        return None
    bits = np.frombuffer(base64.b64decode(found["correct"]), dtype=np.uint8)
    return np.unpackbits(bits, count=int(found["n"])).astype(bool)


def short_model(spec) -> str:
    """A model spec as tables and legends show it: every ``file:<path>`` by its file name (the folder
    is the machine's), anything else unchanged (``openai:RN50``, ``proxy[base=..., expert=...]``)."""
    return re.sub(r"file:([^\s,\]|]+)", lambda m: "file:" + Path(m.group(1)).name, str(spec))


def _paths(value, convert):
    """``value`` with ``convert`` (:func:`config.portable` on writing, :func:`config.local` on reading)
    applied to every string and path in it."""
    if isinstance(value, (str, Path)):
        return convert(str(value))
    if isinstance(value, dict):
        return {_paths(k, convert): _paths(v, convert) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_paths(v, convert) for v in value]
    return value


def append_record(record: dict, name: str | None = None, folder: Path | None = None) -> Path:
    """Append one record to ``<results>/<name>.jsonl`` atomically (lock + write-rename). Paths under the
    cache and data folders are written from ``$CLIPLAB_CACHE`` / ``$CLIPLAB_DATA`` (:func:`config.portable`),
    so committed records name no machine's folders; :func:`read_records` reads them back as this machine's."""
    record = _paths(record, config.portable)
    folder = storage.ensure_writable_dir(folder or config.results_dir(record.get("profile")), "results",
                                         "CLIPLAB_OUT")
    path = folder / f"{name or record['experiment']}.jsonl"
    storage.atomic_append_line(path, json.dumps(record, sort_keys=True, default=_json_default))
    return path


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"record field of type {type(o).__name__} is not JSON")


def read_records(folder: Path | None = None, pattern: str = "*.jsonl", profile: str | None = None,
                 skipped: list | None = None) -> list[dict]:
    """All records under ``folder`` (default: the profile's). A line that is not a record is an error
    naming file and line, or, when a ``skipped`` list is given, appended to it as ``(file, line,
    why)`` with a warning and passed over (the report lists them; one torn line never blocks it)."""
    import warnings

    folder = folder or config.results_dir(profile)
    out = []
    for path in sorted(Path(folder).glob(pattern)):
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                why = None if isinstance(rec, dict) else f"a {type(rec).__name__}, not an object"
            except json.JSONDecodeError as e:
                why = e.msg
            if why is None and skipped is not None and not {"experiment", "metrics", "dataset"} <= set(rec):
                why = f"lacks {sorted({'experiment', 'metrics', 'dataset'} - set(rec))}"
            if why is not None:
                if skipped is None:
                    raise RecordError(f"{path}:{i} is not a JSON record ({why})")
                skipped.append((path.name, i, why))
                warnings.warn(f"{path}:{i} is not a usable record ({why}); skipped", stacklevel=2)
                continue
            out.append(_paths(rec, config.local))  # this machine's folders again, as when it was measured
    return out


def records_table(records: list[dict] | None = None, folder: Path | None = None, latest: bool = True,
                  profile: str | None = None) -> pd.DataFrame:
    """Records flattened into a table: ``metrics.top1``, ``model.spec``, ``dataset.split``, ...

    With ``latest``, a result measured again (same ``key``) shows only its newest record.
    """
    records = read_records(folder, profile=profile) if records is None else records
    if not records:
        return pd.DataFrame()
    table = pd.json_normalize(records, sep=".")
    if latest and "key" in table:
        repeated = table["key"].notna() & table.duplicated("key", keep="last")
        table = table[~repeated].reset_index(drop=True)
    return table


RESULT_COLUMNS = {"experiment": "experiment", "dataset.name": "dataset", "dataset.split": "split",
                  "dataset.n_images": "images", "model.spec": "model", "model.status": "weights",
                  "variant": "variant", "metrics.top1": "top1", "metrics.top5": "top5",
                  "metrics.balanced_accuracy": "balanced_acc", "metrics.ece": "ece",
                  "metrics.val_top1": "val_top1", "metrics.mean_recall": "mean_recall",
                  "metrics.psnr": "psnr", "metrics.ssim": "ssim", "wall_time_s": "seconds"}
METRIC_COLUMNS = ("top1", "top5", "balanced_acc", "ece", "val_top1", "mean_recall", "psnr", "ssim")


def results_frame(records: list[dict] | None = None, profile: str | None = None) -> pd.DataFrame:
    """The user-facing results table: one row per result; numbers of untrained weights are masked."""
    table = records_table(records, profile=profile)
    if table.empty:
        return table
    cols = [c for c in RESULT_COLUMNS if c in table]
    out = table[cols].rename(columns=RESULT_COLUMNS)
    recall = sorted((c for c in table if c.startswith("metrics.") and "_R@" in c),  # retrieval, both ways
                    key=lambda c: (c.split("_R@")[0], int(c.split("_R@")[1])))
    for c in recall:
        short = c.removeprefix("metrics.").replace("image_to_text_", "i2t ").replace("text_to_image_", "t2i ")
        out[short] = table[c]
    metric_columns = [*METRIC_COLUMNS, *(c.removeprefix("metrics.").replace("image_to_text_", "i2t ")
                                         .replace("text_to_image_", "t2i ") for c in recall)]
    for col in metric_columns:
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").round(4)
    out["untrained"] = table["untrained"] if "untrained" in table else False
    out = mask_untrained(out, metric_columns).astype(object)
    return out.where(out.notna(), "")


def facets(record: dict) -> dict:
    """A record's structured facets. Records written before facets existed (a ``variant`` string such
    as ``linear probe|k=16|seed=0``) get them from that string, so old result files still load."""
    if record.get("facets") is not None:
        return dict(record["facets"])
    out: dict = {}
    for i, part in enumerate(p for p in str(record.get("variant", "")).split("|") if p):
        name, eq, value = part.partition("=")
        if eq and name.isidentifier():
            out[name] = _legacy_value(value)
        else:
            out.setdefault("label" if i == 0 else f"label{i}", part)
    return out


def _legacy_value(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(value, value)


UNTRAINED = "untrained"


def mask_untrained(table: pd.DataFrame, columns, flag: str = "untrained", drop_flag: bool = True) -> pd.DataFrame:
    """The one place where numbers of untrained weights are hidden: each of ``columns`` reads
    "untrained" on the rows whose ``flag`` column is true (such numbers prove a code path, they are
    not results). The flag column is dropped unless ``drop_flag`` is false."""
    if table.empty:
        return table
    out = table.copy()
    rows = out[flag].fillna(False).astype(bool) if flag in out else pd.Series(False, index=out.index)
    for col in [c for c in columns if c in out]:
        out[col] = out[col].astype(object)
        out.loc[rows, col] = UNTRAINED
    return out.drop(columns=flag) if drop_flag and flag in out else out
