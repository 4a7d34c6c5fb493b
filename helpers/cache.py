"""What the lab keeps under ``$CLIPLAB_CACHE``, by category, and how much disk a profile run will add.

    python -m helpers.cache --report                          # categories, items, files, sizes, free space
    python -m helpers.cache --prune features upsampled        # what would be deleted (nothing is, yet)
    python -m helpers.cache --prune checkpoints --older-than 30 --yes   # delete it

Everything under the cache can be recomputed (features, restored images, synthetic data) or fetched
again (weights, datasets); training checkpoints and fine-tuned exports cost a training run each, so
nothing is deleted without ``--yes`` (no prompt: CI has no stdin). A run folder that a running training
holds the lock of (:func:`helpers.core.storage.owned_folder`) is never deleted, nor a temporary file of
a write that may still be in progress. :func:`disk_needed` is the suite's disk preflight.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers.core import config

# category -> (what it holds, top-level folders under the cache (glob patterns), depth of one item)
CATEGORIES: dict[str, tuple[str, tuple[str, ...], int]] = {
    "features": ("cached image and text features", ("features",), 1),
    "checkpoints": ("training run folders (resume checkpoints, done.pt)", ("checkpoints",), 1),
    "exports": ("fine-tuned models saved by notebook 06 (models/<profile>/)", ("models",), 2),
    "upsampled": ("restored images of notebook 03", ("upsampled",), 1),
    "weights": ("downloaded weights (CLIP, OpenCLIP, Hugging Face, torchvision, SRGAN)",
                ("clip", "open_clip", "hf", "torch", "weights"), 1),
    "inductor": ("torch.compile / inductor / triton caches", ("inductor", "torchinductor*", "triton"), 1),
    "synthetic": ("synthetic datasets", ("synthetic",), 1),
    "datasets": ("datasets downloaded under the cache (the default CLIPLAB_DATA)", ("data",), 1),
    "other": ("anything else", (), 0),
}
TEMP_GRACE_S = 600  # a hidden temporary younger than this may be a write in progress: kept


@dataclass
class Item:
    """One deletable unit: a feature file, a run folder, an export, a weights file or folder..."""

    path: Path
    category: str
    size: int = 0
    files: int = 0
    mtime: float = 0.0  # newest modification inside
    temporary: bool = False  # a hidden leftover of an atomic write (``.name.xxx.tmp``)

    def lock_files(self) -> list[Path]:
        """The locks that guard it: ``.<name>.owner.lock`` (run folders), ``.<name>.lock`` and ``<name>.lock``."""
        p = self.path
        found = [p.parent / f".{p.name}.owner.lock", p.parent / f".{p.name}.lock", p.with_name(p.name + ".lock")]
        return [f for f in found if f.is_file()]


@dataclass
class Inventory:
    root: Path
    items: list[Item] = field(default_factory=list)

    def by_category(self) -> dict[str, list[Item]]:
        out = {name: [] for name in CATEGORIES}
        for it in self.items:
            out[it.category].append(it)
        return out

    def size(self, categories=None) -> int:
        return sum(it.size for it in self.items if categories is None or it.category in categories)


def _category_of(top: str) -> str:
    for name, (_, patterns, _) in CATEGORIES.items():
        if any(fnmatch.fnmatch(top, p) for p in patterns):
            return name
    return "other"


def _measure(item: Item) -> Item:
    """Size (bytes of regular files, symlinks not followed), file count and newest mtime of an item."""
    st = item.path.lstat()
    item.mtime = st.st_mtime
    if not item.path.is_dir() or item.path.is_symlink():
        item.size, item.files = st.st_size, 1
        return item
    for folder, _, names in os.walk(item.path):
        for n in names:
            with contextlib.suppress(OSError):
                s = os.lstat(os.path.join(folder, n))
                item.size += s.st_size
                item.files += 1
                item.mtime = max(item.mtime, s.st_mtime)
    return item


def inventory(root: Path | None = None) -> Inventory:
    """Every item under the cache, by category; lock files belong to the item they guard."""
    root = Path(root or config.cache_dir())
    inv = Inventory(root)
    if not root.is_dir():
        return inv

    def visit(path: Path, category: str, depth: int):
        if depth == 0 or not path.is_dir() or path.is_symlink():
            inv.items.append(_measure(Item(path, category, temporary=path.name.startswith("."))))
            return
        for child in sorted(path.iterdir()):
            if child.name.endswith(".lock") and child.name.startswith("."):
                continue  # a lock file: part of the item it guards
            if child.name.startswith("."):  # a temporary of an atomic write: an item of its own
                inv.items.append(_measure(Item(child, category, temporary=True)))
            else:
                visit(child, category, depth - 1)

    for top in sorted(root.iterdir()):
        if top.name.endswith(".lock"):
            continue
        category = _category_of(top.name) if top.is_dir() else "other"
        visit(top, category, CATEGORIES[category][2])
    return inv


@contextlib.contextmanager
def _unless_in_use(item: Item):
    """Yield None while holding every lock of ``item`` (nobody can start using it meanwhile), or yield
    the owner's description when another process holds one."""
    held = []
    try:
        for lock in item.lock_files():
            f = open(lock, "a+")  # never truncate: the owner's pid is written in it
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                owner = f.read().strip() or "another process"
                f.close()
                yield owner
                return
            held.append((lock, f))
        yield None
    finally:
        for _, f in held:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()


def in_use(item: Item) -> str | None:
    """The owner (pid and command) of a lock another process holds on ``item``, else None."""
    with _unless_in_use(item) as owner:
        return owner


def select(inv: Inventory, categories: list[str], older_than_days: float | None = None,
           now: float | None = None) -> list[Item]:
    """The items of ``categories`` (older than the given days, by their newest file)."""
    now = time.time() if now is None else now
    out = []
    for it in inv.items:
        if it.category not in categories:
            continue
        if older_than_days is not None and now - it.mtime < older_than_days * 86400:
            continue
        out.append(it)
    return out


def prune(items: list[Item], now: float | None = None) -> tuple[list[Item], list[tuple[Item, str]]]:
    """Delete ``items`` except those in use or possibly being written; returns (deleted, kept with why)."""
    now = time.time() if now is None else now
    deleted, kept = [], []
    for it in items:
        if it.temporary and now - it.mtime < TEMP_GRACE_S:
            kept.append((it, f"a temporary written {now - it.mtime:.0f} s ago (a write may be in progress)"))
            continue
        with _unless_in_use(it) as owner:
            if owner is not None:
                kept.append((it, f"in use: {owner}"))
                continue
            if it.path.is_dir() and not it.path.is_symlink():
                shutil.rmtree(it.path)
            else:
                it.path.unlink(missing_ok=True)
            for lock in it.lock_files():  # still held by us: nobody is waiting on a folder that is gone
                lock.unlink(missing_ok=True)
            deleted.append(it)
    return deleted, kept


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def report(inv: Inventory) -> str:
    """One line per category: items, files, size, what it holds (and how many are in use)."""
    lines = [f"cache {inv.root} (CLIPLAB_CACHE)"]
    if inv.root.exists():
        du = shutil.disk_usage(inv.root)
        lines[0] += f": {human(du.free)} free of {human(du.total)} on its filesystem"
    lines += [f"{'category':<12} {'items':>6} {'files':>8} {'size':>10}  what", "-" * 72]
    for name, items in inv.by_category().items():
        busy = sum(1 for it in items if it.lock_files() and in_use(it))
        note = f" ({busy} in use)" if busy else ""
        lines.append(f"{name:<12} {len(items):>6} {sum(i.files for i in items):>8} "
                     f"{human(sum(i.size for i in items)):>10}  {CATEGORIES[name][0]}{note}")
    lines.append(f"{'total':<12} {len(inv.items):>6} {sum(i.files for i in inv.items):>8} {human(inv.size()):>10}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- disk preflight
# (parameters, feature dimension, input side) of the architectures the specs name; what is not listed
# gets the conservative default of its family (a ViT-L/14@336-sized CLIP, a ViT-B-sized backbone)
CLIP_ARCHS = {"RN50": (102.0e6, 1024, 224), "RN101": (119.7e6, 512, 224), "RN50x4": (178.3e6, 640, 288),
              "RN50x16": (291.0e6, 768, 384), "RN50x64": (623.3e6, 1024, 448), "ViT-B/32": (151.3e6, 512, 224),
              "ViT-B/16": (149.6e6, 512, 224), "ViT-L/14": (427.6e6, 768, 224), "ViT-L/14@336px": (427.9e6, 768, 336)}
BACKBONES = {"resnet18": (11.7e6, 512, 224), "resnet34": (21.8e6, 512, 224), "resnet50": (25.6e6, 2048, 224),
             "resnet101": (44.5e6, 2048, 224), "efficientnet_b0": (5.3e6, 1280, 224),
             "convnext_tiny": (28.6e6, 768, 224), "vit_b_16": (86.6e6, 768, 224)}
DEFAULT_CLIP = (430e6, 1024, 336)
DEFAULT_BACKBONE = (90e6, 2048, 224)
LEARNED_SR_PARAMS = 1e6  # notebook 03's ESPCN-style network (well under this)


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_CLIP_BY_NORM = {_norm(k): v for k, v in CLIP_ARCHS.items()}


def model_facts(spec: str) -> tuple[float, int, int]:
    """(parameters, feature dim, input side) of a spec without loading it: the tables above, a
    ``scratch:`` config's own numbers (parameters counted on the meta device: no memory, no weights),
    a ``file:`` checkpoint's size (fp32: 4 bytes a parameter), else the family's default."""
    kind, _, body = str(spec).partition(":")
    if kind in ("torchvision", "timm"):
        return BACKBONES.get(body.partition("@")[0], DEFAULT_BACKBONE)
    if kind == "scratch":
        import torch

        from helpers.models import clip_models

        cfg, _ = clip_models.parse_scratch(body)
        try:
            with torch.device("meta"):
                params = sum(p.numel() for p in clip_models._build_scratch(cfg).parameters())
        except Exception:  # noqa: BLE001 (an estimate: fall back to the family's default)
            params = DEFAULT_CLIP[0]
        return float(params), int(cfg["embed"]), int(cfg["res"])
    if kind == "open_clip":
        body = body.partition(":")[0]
    if _norm(body) in _CLIP_BY_NORM:
        return _CLIP_BY_NORM[_norm(body)]
    if kind == "file" and Path(body).expanduser().is_file():
        return Path(body).expanduser().stat().st_size / 4, DEFAULT_CLIP[1], DEFAULT_CLIP[2]
    return DEFAULT_CLIP


@dataclass
class DiskEstimate:
    parts: dict[str, float]  # what the run leaves in the cache, by category
    peak: float  # extra bytes while the largest training runs
    reusable: float  # already in those categories (a rerun reuses its own)

    @property
    def needed(self) -> float:
        return max(0.0, sum(self.parts.values()) + self.peak - self.reusable)


def disk_needed(settings: dict, n_images: dict[str, int], notebooks: list[str] | None = None,
                root: Path | None = None) -> DiskEstimate:
    """What a profile run adds to the cache, from the profile's settings and its split sizes (no model
    loaded). ``n`` = images of the splits used, P = parameters, d = feature dim, s = image side:

    - features (float32): n x d x 4 per model and split set: 01 test, 02 val+test, 04 train+val+test
      (one cache: the union per model); 05 each backbone train+val+test; 06 its model and each objective's
      fine-tuned model train+val+test, WiSE-FT each alpha val+test; 07 base, anti-expert and expert
      val+test; 03 each CLIP model x upsampler train+val+test (restored images are new images);
    - restored images (03, lossless WebP, bounded by raw RGB): n(train+val+test) x s^2 x 3 per distinct (upsampler,
      side): each CLIP model's input side (or target_size), each classifier upsampler at its input size;
    - checkpoints: each training run keeps done.pt (~ P x 4) and, while it runs, last.pt = weights + AdamW's
      two moments (3 x P x 4) rewritten atomically each epoch (a second copy for a moment): a peak of
      6 x P x 4 for the largest run. Runs: 05 baselines.finetune, 06 each objective (+ retrieval), 03 the
      learned upsamplers and the classifier of each of its upsamplers;
    - exports: 06 each objective's fine-tuned weights, fp32: P x 4.

    Already cached features, checkpoints, exports and restored images are subtracted (a rerun reuses its
    own; this may credit another profile's, so the estimate is a guide, not a promise).
    """
    wanted = set(notebooks) if notebooks is not None else {"01", "02", "03", "04", "05", "06", "07"}
    n = {s: int(n_images.get(s, 0)) for s in ("train", "val", "test")}
    n_all = sum(n.values())
    feats: dict[str, set[str]] = {}  # spec -> splits encoded

    def encode(spec, splits):
        if spec:
            feats.setdefault(spec, set()).update(splits)

    s = settings
    ft, up, proxy = s.get("clip_finetune") or {}, s.get("upsampling") or {}, s.get("proxy") or {}
    for nb, splits in (("01", ["test"]), ("02", ["val", "test"]), ("04", ["train", "val", "test"])):
        for spec in s.get("models", []) if nb in wanted else []:
            encode(spec, splits)
    features = sum(sum(n[x] for x in splits) * model_facts(spec)[1] * 4 for spec, splits in feats.items())
    runs: list[float] = []  # parameters of each training run
    exports = restored = 0.0
    if "05" in wanted:
        base = s.get("baselines") or {}
        features += sum(n_all * model_facts(b)[1] * 4 for b in base.get("backbones", []))
        runs += [model_facts(b)[0] for b in base.get("finetune", [])]
    if "06" in wanted and ft.get("model"):
        P, d, _ = model_facts(ft["model"])
        objectives = list(ft.get("objectives", []))
        alphas = len((ft.get("wise_ft") or {}).get("alphas", []))
        features += n_all * d * 4 * (1 + len(objectives)) + (n["val"] + n["test"]) * d * 4 * alphas
        runs += [P] * (len(objectives) + (1 if ft.get("retrieval") else 0))
        exports += P * 4 * len(objectives)
    if "07" in wanted:
        for role in ("base", "anti_expert", "expert"):
            spec = proxy.get(role) or ""
            if spec.startswith("06:"):
                spec = spec.split(":", 2)[2] if spec.count(":") >= 2 else ft.get("model")
            if spec:
                features += (n["val"] + n["test"]) * model_facts(spec)[1] * 4
    if "03" in wanted:
        ups = list(up.get("upsamplers", []))
        written = set()  # (upsampler, side): one cache entry, whichever model or classifier reads it
        for spec in up.get("clip_models", []):
            _, d, side = model_facts(spec)
            written |= {(u, int(up.get("target_size") or side)) for u in ups}
            features += n_all * d * 4 * len(ups)
        runs += [LEARNED_SR_PARAMS for u in ups if u.startswith("learned")]
        clf = up.get("classifier") or {}
        if clf.get("backbone"):
            clf_ups = clf.get("upsamplers") or ups
            side = int(clf.get("input_size") or model_facts(clf["backbone"])[2])
            written |= {(u, side) for u in clf_ups}
            runs += [model_facts(clf["backbone"])[0]] * len(clf_ups)
        restored = sum(n_all * side * side * 3 for _, side in written)
    parts = {"features": features, "checkpoints": sum(P * 4 for P in runs), "exports": exports,
             "upsampled": restored}
    peak = 6 * 4 * max(runs, default=0.0)
    reusable = inventory(root).size(set(parts))
    return DiskEstimate(parts, peak, reusable)


def disk_problem(settings: dict, n_images: dict[str, int], notebooks: list[str] | None = None) -> str | None:
    """The preflight's refusal when the cache's filesystem lacks what the run needs (else None)."""
    root = config.cache_dir()
    est = disk_needed(settings, n_images, notebooks, root)
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if est.needed <= free:
        return None
    shown = ", ".join(f"{k} {human(v)}" for k, v in est.parts.items() if v) or "nothing"
    return (f"not enough disk for the cache {root}: this run needs about {human(est.needed)} ({shown}; "
            f"{human(est.peak)} more while the largest training runs; {human(est.reusable)} already cached "
            f"and reused) but its filesystem has {human(free)} free. Free space there, prune the cache "
            "(python -m helpers.cache --report, then python -m helpers.cache --prune features upsampled --yes), "
            "set CLIPLAB_CACHE to a folder on a larger disk, or start anyway with --skip-preflight")


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.cache", description=__doc__.split("\n")[0])
    ap.add_argument("--report", action="store_true", help="sizes and counts by category (the default)")
    ap.add_argument("--prune", nargs="+", choices=list(CATEGORIES), metavar="CATEGORY",
                    help=f"free these categories: {', '.join(CATEGORIES)}")
    ap.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                    help="only items whose newest file is older than this many days")
    ap.add_argument("--yes", action="store_true", help="delete (without it --prune only lists what it would delete)")
    args = ap.parse_args(argv)
    if args.older_than is not None and args.older_than < 0:
        ap.error("--older-than takes a number of days >= 0")
    inv = inventory()
    if not args.prune:
        print(report(inv))
        return 0
    items = select(inv, args.prune, args.older_than)
    age = f" older than {args.older_than:g} days" if args.older_than is not None else ""
    if not items:
        print(f"nothing to prune in {', '.join(args.prune)}{age} under {inv.root}")
        return 0
    now = time.time()
    if not args.yes:
        print(f"would delete {len(items)} item(s), {human(sum(i.size for i in items))}, of {', '.join(args.prune)}"
              f"{age} under {inv.root}:")
        for it in items:
            owner = in_use(it)
            why = f"  (kept: in use: {owner})" if owner else "  (kept: a write may be in progress)" \
                if it.temporary and now - it.mtime < TEMP_GRACE_S else ""
            print(f"  {it.path.relative_to(inv.root)}  {human(it.size)}  {(now - it.mtime) / 86400:.1f} days old{why}")
        print("nothing was deleted: add --yes to delete them")
        return 0
    deleted, kept = prune(items, now)
    for it in deleted:
        print(f"deleted {it.path.relative_to(inv.root)}  {human(it.size)}")
    for it, why in kept:
        print(f"kept    {it.path.relative_to(inv.root)}: {why}")
    print(f"freed {human(sum(i.size for i in deleted))} ({len(deleted)} item(s)); {len(kept)} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
