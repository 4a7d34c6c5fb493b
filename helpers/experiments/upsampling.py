"""Notebook 03: how the upsampler in front of a model changes what it sees and how well it does.

Protocol. High-resolution images are the dataset's own (EuroSAT: 64x64). With ``factor`` s > 1 they
are first downscaled by s (PIL bicubic, antialiased) and every upsampler restores them to the target
size (restoration: PSNR/SSIM against the originals are meaningful); with s = 1 the originals are
upsampled to the target size directly (e.g. 64 -> 224 for a pretrained CLIP). Restored images are
written once per (upsampler, factor, target, split) as lossless PNGs in the cache and used like any
image folder, so the feature cache, probes and training loop of the other notebooks apply unchanged.
"""

from __future__ import annotations

import json
import shutil
import tempfile
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
from helpers.data import Samples, transforms
from helpers.eval import metrics, zeroshot
from helpers.eval.probes import kshot_rows
from helpers.experiments import Experiment, Pivot, clip_finetune
from helpers.experiments.common import Outcome, encode, save_stamped, slug, train_config
from helpers.models import backbones, upsamplers
from helpers.profiles import Profile
from helpers.results import plots, records
from helpers.train import super_resolution, supervised

EXPERIMENT = Experiment("03_upsampling", "03 — Upsampling before the model: interpolation, SRGAN, learned SR",
                        section="upsampling", pivot=Pivot(rows=("upsampler",), columns=("model", "head")))


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


def restored(samples: Samples, upsampler, factor: int, target: int, high: torch.Tensor | None = None,
             chunk: int = 512) -> Samples:
    """``samples`` downscaled by ``factor`` and restored to ``target`` by ``upsampler``: PNGs written once
    (atomically, with a manifest checked on every load) and returned as :class:`Samples`."""
    card = {"upsampler": upsampler.card(), "factor": factor, "target": target,
            "downscale": "PIL bicubic (antialiased)" if factor > 1 else None}
    key = storage.sha256_json({**card, "data": samples.fingerprint()})[:16]
    root = config.cache_dir() / "upsampled" / f"{slug(samples.name, samples.split, upsampler.name)}-{key}"
    names = [f"{i:06d}.png" for i in range(len(samples))]
    if not _valid(root, names):
        root.parent.mkdir(parents=True, exist_ok=True)
        high = load_pixels(samples) if high is None else high
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
        sizes = {}
        for start in tqdm(range(0, len(high), chunk), desc=f"{upsampler.name} {samples.split}", leave=False):
            batch = high[start:start + chunk]
            low = upsamplers.downscale(batch, factor) if factor > 1 else batch
            out = upsamplers.to_uint8(upsampler(low, (target, target)))
            for j, img in enumerate(out):
                path = tmp / names[start + j]
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(path, format="PNG", compress_level=1)
                sizes[names[start + j]] = path.stat().st_size
        storage.atomic_write_text(tmp / "manifest.json", json.dumps({"card": card, "sizes": sizes}, default=str))
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    return replace(samples, root=root, paths=[root / n for n in names], layout=f"{samples.layout}+restored",
                   split_protocol={**samples.split_protocol, "restored": card, "original_root": str(samples.root)},
                   _fingerprint=None)


def _valid(root: Path, names: list[str]) -> bool:
    """A restored folder is used only when its manifest lists every image with its size on disk."""
    try:
        sizes = json.loads((root / "manifest.json").read_text())["sizes"]
        return len(sizes) == len(names) and all((root / n).stat().st_size == sizes[n] for n in names)
    except (OSError, KeyError, ValueError):
        return False


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
    model of the parameters and the accuracy of a classifier trained on the restored images."""
    s = P["upsampling"]
    factor, test = int(s["factor"]), splits["test"]
    timer = records.Timer()
    ups = build(P, s, splits, progress)
    recs, figs, extra = [], {}, {}
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
            recs.append(records.make_record(
                EXPERIMENT.id, {k: row[k] for k in ("psnr", "psnr_ci95", "ssim", "ssim_ci95", "n")},
                dataset=q_samples.card(), model={"spec": row["upsampler"], "status": "n/a", **ups[row["upsampler"]].card()},
                profile=P.name, variant=f"quality|{row['upsampler']}|x{qf}", seeds=[P.seed], wall_time_s=timer.seconds,
                figures=saved, protocol={**base_protocol, "task": f"restore {qf}x-downscaled test images",
                                         "metrics": "PSNR (dB, peak 1.0) and SSIM (skimage, gaussian sigma 1.5)"},
                facets={"task": "quality", "upsampler": row["upsampler"], "factor": qf}))

    rows = []
    pixels = {k: (high_test if k == "test" else None) for k in ("train", "val", "test")}
    for spec in s.get("clip_models", []):
        spec = clip_finetune.checkpoint_spec(P, splits, spec, progress)
        loaded = models.load_model(spec)
        target = int(s.get("target_size") or loaded.resolution)
        for name, up in ups.items():
            t = records.Timer()
            r = {k: restored(splits[k], up, factor, target, pixels[k]) for k in ("train", "val", "test")}
            f = {k: encode(P, loaded, r[k]) for k in r}
            zs = zeroshot.evaluate(loaded, f["test"].features, f["test"].labels, test.classnames, s["templates"])["metrics"]
            probe = kshot_rows(f["train"], f["val"], f["test"], test.num_classes, ["all"], [P.seed],
                                max_iter=int(s.get("probe_max_iter", 1000)))[0]
            for head, m, extra_protocol in (("zero-shot", zs, {"templates": s["templates"]}),
                                            ("linear probe", probe["metrics"], {"C": probe["C"], "probe": "all train, C on val, refit train+val"})):
                recs.append(records.make_record(
                    EXPERIMENT.id, m, dataset=r["test"].card(), model=loaded.card(), profile=P.name,
                    variant=f"{head}|{name}|x{factor}|{target}px", seeds=[P.seed], wall_time_s=t.seconds,
                    protocol={**base_protocol, "head": head, "upsampler": name, "target": target, **extra_protocol},
                    facets={"head": head, "upsampler": name, "factor": factor, "size": target}))
                rows.append({"model": spec, "upsampler": name, "head": head, "top1": m["top1"], "untrained": not loaded.trained})

    c = s.get("classifier")
    if c:
        size = int(c.get("input_size") or s.get("target_size") or high_test.shape[-1])
        for name in c.get("upsamplers") or list(ups):
            up, t = ups[name], records.Timer()
            r = {k: restored(splits[k], up, factor, size, pixels[k]) for k in ("train", "val", "test")}
            bb = backbones.load_backbone(c["backbone"], seed=P.seed)
            card = bb.card()  # the starting weights, before training changes them
            net = bb.classifier(test.num_classes)
            cfg = train_config(c["train"], P.seed)
            batch = int(c["train"].get("batch_size", 128))
            train_tf, train_card = transforms.image_transform(size, "bicubic", bb.mean, bb.std, train=True,
                                                              aerial=bool(c.get("aerial", True)))
            eval_tf, _ = transforms.image_transform(size, "bicubic", bb.mean, bb.std)
            run_card = {"spec": c["backbone"], "upsampler": up.card(), "data": r["train"].fingerprint(), "transform": train_card}
            ft = supervised.train_classifier(net, r, train_tf, eval_tf, cfg, batch, run_card, progress=progress)
            status = "fine-tuned" if bb.trained else "trained from scratch"
            recs.append(records.make_record(
                EXPERIMENT.id, {**ft.test_metrics, "best_val_top1": ft.result.best_metric}, dataset=r["test"].card(),
                model={**card, "status": status}, profile=P.name, variant=f"classifier|{name}|x{factor}|{size}px",
                seeds=[P.seed], wall_time_s=t.seconds,
                protocol={**base_protocol, "head": f"classifier ({status})", "upsampler": name, "input_size": size,
                          "train": cfg.card(), "batch_size": batch, "train_transform": train_card,
                          "epochs_run": len(ft.result.history), "best_epoch": ft.result.best_epoch,
                          "train_seconds": ft.result.seconds, "history": ft.result.history},
                facets={"head": "classifier", "upsampler": name, "factor": factor, "size": size}))
            rows.append({"model": c["backbone"], "upsampler": name, "head": f"classifier ({status})",
                         "top1": ft.test_metrics["top1"], "untrained": False})

    table = pd.DataFrame(rows)
    if not table.empty:
        wide = table.assign(column=table["model"] + " · " + table["head"]).pivot_table(
            index="upsampler", columns="column", values="top1", sort=False)
        untrained_cols = sorted({f"{r['model']} · {r['head']}" for r in rows if r["untrained"]})
        fig = plots.grouped_bars(wide.reset_index(), "upsampler", list(wide.columns),
                                 title=f"downstream top-1 after x{factor} restoration" if factor > 1 else "downstream top-1")
        figs["downstream"] = fig
        saved = [save_stamped(fig, P, slug("03_upsampling", test.name, f"downstream-x{factor}"), ", ".join(untrained_cols),
                       bool(untrained_cols))]
        for rec in recs:
            if not rec["variant"].startswith("quality"):
                rec["figures"] = saved
        shown = wide.astype(object).where(wide.notna(), "not run")
        for col in untrained_cols:
            shown[col] = "untrained"
        extra["downstream"] = shown
    for rec in recs:
        records.append_record(rec)
    return Outcome(recs, extra.get("quality", pd.DataFrame()), figs, extra)
