"""Encode once, cache on disk: batched image/text encoding with autocast and a validated feature cache.

A cache entry is keyed by everything that changes the numbers: the encoder (model spec + weights
sha256), the transform card, the dataset fingerprint (file list, sizes, mtimes, labels) and the
autocast dtype. Entries are written atomically and carry a checksum of their tensor; a stale,
truncated or tampered entry is detected on load, reported, and rebuilt -- never silently used.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from helpers.core import config, storage
from helpers.core.errors import StaleCacheWarning  # noqa: F401 (re-exported)
from helpers.data import Samples

CACHE_VERSION = 1


@dataclass
class Features:
    """Encoder outputs for a dataset, in dataset order, as float32 (not normalised)."""

    features: torch.Tensor
    labels: np.ndarray
    key: str
    path: Path | None
    from_cache: bool
    seconds: float

    def __len__(self) -> int:
        return self.features.shape[0]

    def normalized(self) -> torch.Tensor:
        return torch.nn.functional.normalize(self.features, dim=-1)


def features_dir() -> Path:
    return config.cache_dir() / "features"


def _checksum(t: torch.Tensor) -> str:
    return storage.sha256_bytes(t.contiguous().view(torch.uint8).numpy().tobytes())


def load_cache_entry(path: Path, meta: dict) -> tuple[dict | None, str]:
    """(entry, "") when ``path`` holds a valid entry for ``meta``; (None, reason) otherwise."""
    if not path.is_file():
        return None, "absent"
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...: all mean "rebuild"
        return None, f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    if not isinstance(entry, dict) or entry.get("meta") != meta:
        return None, "written for other inputs"
    feats = entry.get("features")
    if not isinstance(feats, torch.Tensor) or feats.dtype != torch.float32 or feats.ndim != 2:
        return None, "malformed tensor"
    if feats.shape[0] != meta["n"]:
        return None, f"holds {feats.shape[0]} rows, expected {meta['n']}"
    if entry.get("checksum") != _checksum(feats):
        return None, "checksum mismatch"
    return entry, ""


def cached(meta: dict, compute: Callable[[], tuple[torch.Tensor, np.ndarray]], name: str,
           use_cache: bool = True) -> Features:
    """Return the cached tensor for ``meta`` or compute it, save it atomically and return it."""
    meta = {**meta, "cache_version": CACHE_VERSION}
    key = storage.sha256_json(meta)
    folder = features_dir()
    path = folder / f"{name}-{key[:20]}.pt"
    if use_cache:
        storage.ensure_writable_dir(folder, "feature cache", "CLIPLAB_CACHE")
        entry, reason = load_cache_entry(path, meta)
        if entry is not None:
            return Features(entry["features"], entry["labels"].numpy(), key, path, True, 0.0)
        if reason != "absent":
            warnings.warn(f"feature cache {path} is {reason}; rebuilding it", StaleCacheWarning, stacklevel=3)
    t0 = time.perf_counter()
    feats, labels = compute()
    seconds = time.perf_counter() - t0
    feats = feats.float().contiguous()
    if not torch.isfinite(feats).all():
        raise FloatingPointError(f"encoder produced non-finite features for {name}; nothing was cached")
    if use_cache:
        storage.atomic_torch_save({"meta": meta, "features": feats, "labels": torch.as_tensor(labels),
                                   "checksum": _checksum(feats)}, path)
    return Features(feats, np.asarray(labels), key, path if use_cache else None, False, seconds)


def encode_dataset(encode: Callable[[torch.Tensor], torch.Tensor], encoder_card: dict, samples: Samples,
                   transform, transform_card: dict, *, device: torch.device, batch_size: int = 64,
                   workers: int | None = None, use_cache: bool = True, progress: bool = True,
                   name: str | None = None) -> Features:
    """Run ``encode`` over every image of ``samples`` in batches under autocast, through the cache."""
    dtype = config.autocast_dtype(device)
    meta = {"kind": "image", "encoder": encoder_card, "transform": transform_card,
            "dataset": samples.fingerprint(), "n": len(samples), "autocast": config.dtype_name(dtype)}
    label = name or f"{samples.name}-{samples.split}-{_slug(encoder_card.get('spec', 'encoder'))}"

    def compute():
        workers_ = config.encode_workers(device) if workers is None else workers
        dataset = samples.dataset(transform)
        if workers_:
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, shuffle=False, num_workers=workers_,
                pin_memory=device.type == "cuda", prefetch_factor=4, persistent_workers=False)
        else:
            loader = _decode_in_threads(dataset, batch_size, torch.get_num_threads())
        out: torch.Tensor | None = None
        with torch.inference_mode(), config.autocast(device, dtype):
            for images, _, idx in tqdm(loader, desc=f"encode {label}", disable=not progress, leave=False,
                                       total=math.ceil(len(dataset) / batch_size)):
                f = encode(images.to(device, non_blocking=True)).float().cpu()
                if out is None:
                    out = torch.empty(len(samples), f.shape[1], dtype=torch.float32)
                out[idx] = f
        return out, samples.labels

    return cached(meta, compute, label, use_cache)


def _decode_in_threads(dataset, batch_size: int, threads: int):
    """Batches like a ``DataLoader`` without workers, each batch decoded by ``threads`` threads of this
    process while the model waits (PIL and torch release the GIL while decoding and transforming).

    On CPU the forward pass keeps every core busy; a worker process can only decode by preempting one
    of torch's threads, which stalls the others at OpenMP barriers: -10 to -15% images/s for ViT-B/32
    on 2 cores, against ~2% for decoding in parallel between forward passes (bench/bench_encode.py).
    """
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode") as pool:
        for start in range(0, len(dataset), batch_size):
            items = range(start, min(len(dataset), start + batch_size))
            yield default_collate(list(pool.map(dataset.__getitem__, items)))


def image_features(loaded, samples: Samples, interpolation: str | None = None, **kwargs) -> Features:
    """CLIP image embeddings of ``samples`` (``loaded``: :class:`helpers.models.LoadedModel`)."""
    transform, card = loaded.transform(interpolation)
    encoder = {"spec": loaded.spec, "weights_sha256": loaded.weights_sha256, "output": "encode_image"}
    return encode_dataset(loaded.model.encode_image, encoder, samples, transform, card,
                          device=loaded.device, **kwargs)


def text_features(loaded, texts: list[str], batch_size: int = 256, use_cache: bool = True) -> torch.Tensor:
    """CLIP text embeddings (float32, not normalised) of ``texts``, cached like image features."""
    dev = loaded.device
    dtype = config.autocast_dtype(dev)
    meta = {"kind": "text", "encoder": {"spec": loaded.spec, "weights_sha256": loaded.weights_sha256},
            "texts": storage.sha256_json(list(texts)), "n": len(texts), "autocast": config.dtype_name(dtype),
            "context_length": loaded.context_length}

    def compute():
        chunks = []
        with torch.inference_mode(), config.autocast(dev, dtype):
            for i in range(0, len(texts), batch_size):
                tokens = loaded.tokenize(list(texts[i:i + batch_size])).to(dev)
                chunks.append(loaded.model.encode_text(tokens).float().cpu())
        return torch.cat(chunks), np.arange(len(texts))

    return cached(meta, compute, f"text-{_slug(loaded.spec)}", use_cache).features


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:60]
