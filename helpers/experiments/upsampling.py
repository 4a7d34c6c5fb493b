"""Notebook 03: how the upsampler in front of a model changes what it sees and how well it does.

Protocol. High-resolution images are the dataset's own (EuroSAT: 64x64). With ``factor`` s > 1 they
are first downscaled by s (PIL bicubic, antialiased) and every upsampler restores them to the target
size (restoration: PSNR/SSIM against the originals are meaningful); with s = 1 the originals are
upsampled to the target size directly (e.g. 64 -> 224 for a pretrained CLIP). Restored images are
written once per (upsampler, factor, target, split) as lossless WebP files in the cache (the same uint8
pixels as the PNGs written before, 40% smaller) and used like any image folder, so the feature cache,
probes and training loop of the other notebooks apply unchanged.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from helpers import data, models
from helpers.core import config, storage
from helpers.core.errors import StaleCacheWarning
from helpers.data import Samples, transforms
from helpers.eval import metrics, zeroshot
from helpers.eval.probes import kshot_rows
from helpers.experiments import Experiment, Pivot, clip_finetune
from helpers.experiments.common import (
    Outcome,
    encode,
    figure_ref,
    fingerprint,
    recorded,
    save_stamped,
    say_skipped,
    slug,
    train_config,
)
from helpers.models import backbones, upsamplers
from helpers.profiles import Profile
from helpers.results import plots, records
from helpers.train import super_resolution, supervised

EXPERIMENT = Experiment("03_upsampling", "03 — Upsampling before the model: interpolation, SRGAN, learned SR",
                        section="upsampling", pivot=Pivot(rows=("upsampler",), columns=("model", "head")),
                        headline=lambda path: "-downstream_" in path)


def downstream_figure(table: pd.DataFrame, factor: int):
    """(figure, wide table, untrained columns): top-1 of each model · head after each upsampler, from
    rows of ``model`` (spec), ``upsampler``, ``head``, ``top1``, ``untrained``; models by short name."""
    table = table.assign(column=table["model"].map(records.short_model) + " · " + table["head"])
    wide = table.pivot_table(index="upsampler", columns="column", values="top1", sort=False)
    untrained_cols = sorted(set(table.loc[table["untrained"].astype(bool), "column"]))
    fig = plots.grouped_bars(wide.reset_index(), "upsampler", list(wide.columns),
                             title=f"downstream top-1 after x{factor} restoration" if factor > 1 else "downstream top-1")
    return fig, wide, untrained_cols


def load_pixels(samples: Samples, threads: int | None = None) -> torch.Tensor:
    """Every image of ``samples`` as one uint8 [N, 3, H, W] tensor (all images must share a size)."""
    def read(p):
        return np.asarray(data.load_rgb(p))

    with ThreadPoolExecutor(max_workers=threads or max(1, torch.get_num_threads())) as pool:
        arrays = list(pool.map(read, samples.paths))
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise data.DatasetError(f"{samples.name}/{samples.split}: images differ in size ({sorted(sizes)[:3]}...); "
                                "the restoration protocol needs one size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def build(P: Profile, s: dict, splits: dict[str, Samples], progress: bool = True) -> dict:
    """The upsamplers the parameters name; ``srgan`` and ``learned`` take the factor (or x4 when the
    factor is 1, followed by a resize to the target)."""
    net_scale = upsamplers.network_scale(s)
    out = {}
    for name in s["upsamplers"]:
        if name.startswith(("pil-", "torch-")):
            backend, mode = name.split("-", 1)
            out[name] = upsamplers.Interpolation(backend, mode)
        elif name == "srgan":
            path = upsamplers.srgan_file(s["srgan_dir"], net_scale)
            net = upsamplers.load_srgan(path, net_scale, (s.get("srgan_sha256") or {}).get(f"x{net_scale}"))
            out[f"srgan-x{net_scale}"] = upsamplers.NetworkUpsampler(
                f"srgan-x{net_scale}", net, net_scale, {"weights": str(path), "trained_on": "VOC2012 subset (natural photos)"})
        elif name == "learned":
            cfg = train_config(s["learned"]["train"], P.seed)
            high = {k: load_pixels(splits[k]) for k in ("train", "val")}
            out[f"learned-x{net_scale}"] = super_resolution.train_learned(
                high["train"], high["val"], net_scale, cfg, int(s["learned"]["train"].get("batch_size", 64)),
                progress=progress, seed=P.seed)
        else:
            raise ValueError(f"upsampler {name!r}: use pil-<mode>, torch-<mode>, srgan or learned")
    return out


# Lossless WebP: bit-exact uint8 RGB like PNG. Measured on 250 EuroSAT images upsampled 64 -> 224
# (pil-bicubic), per image and CPU-second: PNG compress_level 1 (the old store) 44 KB, 333/s; WebP method 0
# 32 KB, 385/s; method 1 26 KB, 132/s; method 2 26 KB, 119/s. Method 1: 41% less disk (27,000 images x 7
# upsamplers: ~5 GB instead of ~8.4 GB); the encoder releases the GIL, so the thread pool spreads it over
# the cores and the wall time stays near the old single-threaded PNG writer's.
IMAGE_STORE = {"format": "WEBP", "lossless": True, "method": 1, "quality": 0}


def restored(samples: Samples, upsampler, factor: int, target: int, high: torch.Tensor | None = None,
             chunk: int = 512, threads: int | None = None) -> Samples:
    """``samples`` downscaled by ``factor`` and restored to ``target`` by ``upsampler``, returned as
    :class:`Samples` of image files written once (encoded on a thread pool, see :data:`IMAGE_STORE`).

    A manifest lists every file's size and sha256 and is checked on every load, like the feature cache:
    a missing manifest (or one of another store) rebuilds the folder; a truncated, changed or missing file
    rebuilds, with a warning, only the chunks of ``chunk`` images holding such files (the same batches as
    the first build, so the same pixels)."""
    card = {"upsampler": upsampler.card(), "factor": factor, "target": target,
            "downscale": "PIL bicubic (antialiased)" if factor > 1 else None}
    key = storage.sha256_json({**card, "data": samples.fingerprint()})[:16]
    root = config.cache_dir() / "upsampled" / f"{slug(samples.name, samples.split, upsampler.name)}-{key}"
    names = [f"{i:06d}.webp" for i in range(len(samples))]
    with ThreadPoolExecutor(max_workers=threads or max(2, torch.get_num_threads())) as pool:
        entries = _manifest(root, names)
        bad = [] if entries is None else _damaged(root, entries, pool)
        if entries is None or bad:
            high = load_pixels(samples) if high is None else high
            writer = _ChunkWriter(high, upsampler, factor, target, chunk, names, pool)
        if entries is None:
            root.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
            entries = {}
            for start in tqdm(range(0, len(names), chunk), desc=f"{upsampler.name} {samples.split}", leave=False):
                entries.update(writer.write(start, tmp))
            storage.atomic_write_text(tmp / "manifest.json", json.dumps(
                {"card": card, "store": IMAGE_STORE, "entries": entries}, default=str))
            if root.exists():
                shutil.rmtree(root)
            tmp.rename(root)
        elif bad:
            starts = sorted({int(Path(n).stem) // chunk * chunk for n in bad})
            warnings.warn(f"restored images in {root}: {len(bad)} file(s) truncated, changed or missing "
                          f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); rebuilding the {len(starts)} "
                          f"chunk(s) of {chunk} images that hold them", StaleCacheWarning, stacklevel=2)
            for start in starts:
                entries.update(writer.write(start, root))
            storage.atomic_write_text(root / "manifest.json", json.dumps(
                {"card": card, "store": IMAGE_STORE, "entries": entries}, default=str))
    return replace(samples, root=root, paths=[root / n for n in names], layout=f"{samples.layout}+restored",
                   split_protocol={**samples.split_protocol, "restored": card, "original_root": str(samples.root)},
                   _fingerprint=None)


class _ChunkWriter:
    """Restores chunk ``[start, start + chunk)`` of ``high`` and writes its files through ``pool``."""

    def __init__(self, high, upsampler, factor, target, chunk, names, pool):
        self.high, self.up, self.factor, self.target = high, upsampler, factor, target
        self.chunk, self.names, self.pool = chunk, names, pool

    def write(self, start: int, folder: Path) -> dict[str, list]:
        batch = self.high[start:start + self.chunk]
        low = upsamplers.downscale(batch, self.factor) if self.factor > 1 else batch
        out = upsamplers.to_uint8(self.up(low, (self.target, self.target))).permute(0, 2, 3, 1).numpy()
        names = self.names[start:start + len(out)]
        return dict(self.pool.map(lambda job: _write_image(folder / job[0], job[1]), zip(names, out, strict=True)))


def encode_image(pixels: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> the stored file's bytes (lossless: decoding gives these pixels back)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, **IMAGE_STORE)
    return buf.getvalue()


def _write_image(path: Path, pixels: np.ndarray) -> tuple[str, list]:
    """Write beside, then rename (a reader never sees half a file); (name, [size, sha256])."""
    data = encode_image(pixels)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path.name, [len(data), storage.sha256_bytes(data)]


def _manifest(root: Path, names: list[str]) -> dict | None:
    """The manifest's ``{name: [size, sha256]}`` when it is this store's and lists exactly ``names``."""
    try:
        found = json.loads((root / "manifest.json").read_text())
        entries = found["entries"]
        if found.get("store") != IMAGE_STORE or set(entries) != set(names):
            return None
        return entries
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _damaged(root: Path, entries: dict, pool) -> list[str]:
    """The files whose size or sha256 differs from the manifest (or that are gone), hashed in ``pool``."""
    def bad(item):
        name, (size, sha) = item
        path = root / name
        try:
            return path.stat().st_size != size or storage.sha256_bytes(path.read_bytes()) != sha
        except OSError:
            return True

    return sorted(name for name, broken in zip(entries, pool.map(bad, entries.items()), strict=True) if broken)


def quality(ups: dict, high: torch.Tensor, factor: int) -> pd.DataFrame:
    """PSNR and SSIM (mean, and 95% CI of the mean over images) of each upsampler restoring ``high``."""
    low = upsamplers.downscale(high, factor)
    ref = upsamplers.to_float(high)
    rows = []
    for name, up in ups.items():
        pred = up(low, tuple(high.shape[-2:]))
        p, q = metrics.psnr(pred, ref).numpy(), metrics.ssim(pred, ref)
        rows.append({"upsampler": name, "psnr": float(p.mean()), "psnr_ci95": float(1.96 * p.std(ddof=1) / np.sqrt(len(p))),
                     "ssim": float(q.mean()), "ssim_ci95": float(1.96 * q.std(ddof=1) / np.sqrt(len(q))), "n": len(p)})
    return pd.DataFrame(rows)


def crops_figure(ups: dict, high: torch.Tensor, factor: int, n: int = 4, seed: int = 0):
    """Side by side: the low-res input (shown with nearest), each upsampler, the original."""
    idx = np.random.default_rng(seed).choice(len(high), size=min(n, len(high)), replace=False)
    batch = high[idx]
    low = upsamplers.downscale(batch, factor)
    size = tuple(batch.shape[-2:])
    cols = [("low-res", upsamplers.Interpolation("pil", "nearest")(low, size))]
    cols += [(name, up(low, size)) for name, up in ups.items()]
    cols.append(("original", upsamplers.to_float(batch)))
    fig, axes = plots.plt.subplots(len(idx), len(cols), figsize=(1.5 * len(cols), 1.6 * len(idx)), squeeze=False)
    for c, (title, imgs) in enumerate(cols):
        for r in range(len(idx)):
            ax = axes[r][c]
            ax.imshow(imgs[r].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


def run(P: Profile, splits: dict[str, Samples], progress: bool = True) -> Outcome:
    """Quality table and crops; then, per upsampler, zero-shot and linear-probe accuracy of each CLIP
    model of the parameters and the accuracy of a classifier trained on the restored images.

    Each result is recorded the moment it exists; a rerun skips every (model, upsampler) and classifier
    whose records exist for the same protocol (settings, weights, upsampler, dataset fingerprints)."""
    s = P["upsampling"]
    factor, test = int(s["factor"]), splits["test"]
    timer = records.Timer()
    ups = build(P, s, splits, progress)
    recs, figs, extra = [], {}, {}
    downstream = slug("03_upsampling", test.name, f"downstream-x{factor}")
    data_fp = {k: splits[k].fingerprint() for k in ("train", "val", "test")}
    autocast = config.dtype_name(config.autocast_dtype())

    def emit(rec, resume=None):
        """Written now, naming the downstream figure drawn at the end (quality records name their own)."""
        if resume is not None:
            rec["protocol"]["resume"] = resume
            rec["figures"] = [figure_ref(P, downstream)]
        recs.append(rec)
        records.append_record(rec)

    def resumed(resume, variants, what) -> list[dict] | None:
        done = recorded(P, EXPERIMENT.id, resume, variants)
        if done is None:
            return None
        say_skipped(EXPERIMENT.id, what, done)
        recs.extend(done[v] for v in variants)
        return [done[v] for v in variants]
    high_test = load_pixels(test)
    n_q = min(int(s.get("n_quality", 500)), len(test))
    q_idx = np.linspace(0, len(test) - 1, n_q).round().astype(int)
    q_samples = test.subset(q_idx, selection=f"{n_q} test images evenly spaced in sorted order")
    base_protocol = {"factor": factor, "downscale": "PIL bicubic (antialiased)",
                     "upsamplers": {k: u.card() for k, u in ups.items()}}
    qf = upsamplers.network_scale(s)  # quality is measured on a restoration, where the original is known
    if qf > 1:
        qt = quality(ups, high_test[q_idx], qf)
        extra["quality"] = qt
        figs["crops"] = crops_figure(ups, high_test[q_idx], qf, seed=P.seed)
        saved = [save_stamped(figs["crops"], P, slug("03_upsampling", test.name, f"crops-x{qf}"), "", False)]
        for row in qt.to_dict("records"):
            up = ups[row["upsampler"]]
            protocol = {**base_protocol, "task": f"restore {qf}x-downscaled test images",
                        "metrics": "PSNR (dB, peak 1.0) and SSIM (skimage, gaussian sigma 1.5)"}
            if up.training:  # the learned SR, trained here: the suite lists the training
                protocol["training"] = up.training
            emit(records.make_record(
                EXPERIMENT.id, {k: row[k] for k in ("psnr", "psnr_ci95", "ssim", "ssim_ci95", "n")},
                dataset=q_samples.card(), model={"spec": row["upsampler"], "status": "n/a", **up.card()},
                profile=P.name, variant=f"quality|{row['upsampler']}|x{qf}", seeds=[P.seed], wall_time_s=timer.seconds,
                figures=saved, protocol=protocol, facets={"task": "quality", "upsampler": row["upsampler"], "factor": qf}))

    rows = []
    pixels = {k: (high_test if k == "test" else None) for k in ("train", "val", "test")}
    for spec in s.get("clip_models", []):
        spec = clip_finetune.checkpoint_spec(P, splits, spec, progress)
        loaded = models.load_model(spec)
        target = int(s.get("target_size") or loaded.resolution)
        for name, up in ups.items():
            t = records.Timer()
            resume = fingerprint(spec=spec, weights=loaded.weights_sha256, upsampler=up.card(), factor=factor,
                                 target=target, data=data_fp, templates=s["templates"], seed=P.seed,
                                 probe_max_iter=s.get("probe_max_iter"), autocast=autocast)
            heads = ("zero-shot", "linear probe")
            done = resumed(resume, [f"{head}|{name}|x{factor}|{target}px" for head in heads], f"{spec} after {name}")
            if done is not None:
                rows += [{"model": spec, "upsampler": name, "head": head, "top1": rec["metrics"]["top1"],
                          "untrained": rec["untrained"]} for head, rec in zip(heads, done, strict=True)]
                continue
            r = {k: restored(splits[k], up, factor, target, pixels[k]) for k in ("train", "val", "test")}
            f = {k: encode(P, loaded, r[k]) for k in r}
            zs = zeroshot.evaluate(loaded, f["test"].features, f["test"].labels, test.classnames, s["templates"])["metrics"]
            probe = kshot_rows(f["train"], f["val"], f["test"], test.num_classes, ["all"], [P.seed],
                                max_iter=int(s.get("probe_max_iter", 1000)),
                                backend=P["few_shot"]["probe_backend"])[0]
            for head, m, extra_protocol in (("zero-shot", zs, {"templates": s["templates"]}),
                                            ("linear probe", probe["metrics"], {"C": probe["C"], "probe": "all train, C on val, refit train+val",
                                                                               "probe_backend": probe["probe_backend"],
                                                                               "probe_threads": probe["probe_threads"]})):
                emit(records.make_record(
                    EXPERIMENT.id, m, dataset=r["test"].card(), model=loaded.card(), profile=P.name,
                    variant=f"{head}|{name}|x{factor}|{target}px", seeds=[P.seed], wall_time_s=t.seconds,
                    protocol={**base_protocol, "head": head, "upsampler": name, "target": target, **extra_protocol},
                    facets={"head": head, "upsampler": name, "factor": factor, "size": target}), resume)
                rows.append({"model": spec, "upsampler": name, "head": head, "top1": m["top1"], "untrained": not loaded.trained})

    c = s.get("classifier")
    if c:
        size = int(c.get("input_size") or s.get("target_size") or high_test.shape[-1])
        for name in c.get("upsamplers") or list(ups):
            up, t = ups[name], records.Timer()
            resume = fingerprint(classifier=c, upsampler=up.card(), factor=factor, size=size, data=data_fp, seed=P.seed,
                                 autocast=autocast)
            done = resumed(resume, [f"classifier|{name}|x{factor}|{size}px"], f"{c['backbone']} classifier on {name}")
            if done is not None:
                rows.append({"model": c["backbone"], "upsampler": name, "head": done[0]["protocol"]["head"],
                             "top1": done[0]["metrics"]["top1"], "untrained": False})
                continue
            r = {k: restored(splits[k], up, factor, size, pixels[k]) for k in ("train", "val", "test")}
            bb = backbones.load_backbone(c["backbone"], seed=P.seed)
            card = bb.card()  # the starting weights, before training changes them
            net = bb.classifier(test.num_classes, seed=P.seed)
            cfg = train_config(c["train"], P.seed)
            batch = int(c["train"].get("batch_size", 128))
            train_tf, train_card = transforms.image_transform(size, "bicubic", bb.mean, bb.std, train=True,
                                                              aerial=bool(c.get("aerial", True)))
            eval_tf, _ = transforms.image_transform(size, "bicubic", bb.mean, bb.std)
            run_card = {"spec": c["backbone"], "upsampler": up.card(), "data": r["train"].fingerprint(), "transform": train_card}
            ft = supervised.train_classifier(net, r, train_tf, eval_tf, cfg, batch, run_card, progress=progress)
            status = "fine-tuned" if bb.trained else "trained from scratch"
            rec = records.make_record(
                EXPERIMENT.id, {**ft.test_metrics, "best_val_top1": ft.result.best_metric}, dataset=r["test"].card(),
                model={**card, "status": status}, profile=P.name, variant=f"classifier|{name}|x{factor}|{size}px",
                seeds=[P.seed], wall_time_s=t.seconds,
                protocol={**base_protocol, "head": f"classifier ({status})", "upsampler": name, "input_size": size,
                          "train": cfg.card(), "batch_size": batch, "train_transform": train_card,
                          "epochs_run": len(ft.result.history), "best_epoch": ft.result.best_epoch,
                          "train_seconds": ft.result.seconds, "history": ft.result.history},
                facets={"head": "classifier", "upsampler": name, "factor": factor, "size": size})
            rec["protocol"]["training"] = ft.result.training_card(f"03 {c['backbone']} classifier on {name}-restored images")
            emit(rec, resume)
            rows.append({"model": c["backbone"], "upsampler": name, "head": f"classifier ({status})",
                         "top1": ft.test_metrics["top1"], "untrained": False})

    table = pd.DataFrame(rows)
    if not table.empty:
        fig, wide, untrained_cols = downstream_figure(table, factor)
        figs["downstream"] = fig
        save_stamped(fig, P, downstream, ", ".join(untrained_cols), bool(untrained_cols))  # the file its records name
        shown = wide.astype(object).where(wide.notna(), "not run")
        for col in untrained_cols:
            shown[col] = "untrained"
        extra["downstream"] = shown
    return Outcome(recs, extra.get("quality", pd.DataFrame()), figs, extra)
