"""Encode once, cache on disk: batched image/text encoding with autocast and a validated feature cache.

A cache entry is keyed by everything that changes the numbers: the encoder (model spec + weights
sha256), the transform card, the dataset fingerprint (file list, sizes, mtimes, labels) and the
autocast dtype. Entries are written atomically and carry a checksum of their tensor; a stale,
truncated or tampered entry is detected on load, reported, and rebuilt -- never silently used.

Whether an entry was computed by a compiled or an eager encoder (setting ``encode.compile``, see
:mod:`helpers.core.compiled`) is *not* part of the key: the two agree within bf16 rounding (cosine
>= 0.999, same top-1; tests/test_compiled.py), so toggling the switch must not force a re-encode. It
is stored beside the key in the entry (``encoded_with``) and comes back as ``Features.encoded_with``,
so a record can state how its features were made even when they come from the cache.

Under ``torchrun --nproc_per_node N`` a dataset is encoded in N contiguous shards, one per rank;
rank 0 assembles them in dataset order, validates and writes the one cache entry, the other ranks
wait and read it (:func:`encode_dataset`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers.core import compiled as compiled_
from helpers.core import config, distributed, storage
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
    encoded_with: dict = field(default_factory=dict)  # compile mode and outcome, ranks (not in the key)

    @property
    def compiled(self) -> bool | None:
        """True/False: computed by a compiled/eager encoder; None: an entry written before this was kept."""
        return self.encoded_with.get("compiled")

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


def _entry_path(meta: dict, name: str) -> tuple[dict, str, Path]:
    meta = {**meta, "cache_version": CACHE_VERSION}
    key = storage.sha256_json(meta)
    return meta, key, features_dir() / f"{name}-{key[:20]}.pt"


def _lookup(meta: dict, key: str, path: Path, use_cache: bool) -> Features | None:
    """The valid entry at ``path`` as :class:`Features`; None (a stale one reported) otherwise."""
    if not use_cache:
        return None
    storage.ensure_writable_dir(path.parent, "feature cache", "CLIPLAB_CACHE")
    entry, reason = load_cache_entry(path, meta)
    if entry is not None:
        return Features(entry["features"], entry["labels"].numpy(), key, path, True, 0.0,
                        dict(entry.get("encoded_with") or {}))
    if reason != "absent":
        warnings.warn(f"feature cache {path} is {reason}; rebuilding it", StaleCacheWarning, stacklevel=4)
    return None


def _finish(meta: dict, key: str, path: Path, name: str, feats: torch.Tensor, labels, seconds: float,
            info: dict, use_cache: bool) -> Features:
    """Validate computed features and write them as the entry for ``meta``."""
    feats = feats.float().contiguous()
    if not torch.isfinite(feats).all():
        raise FloatingPointError(f"encoder produced non-finite features for {name}; nothing was cached")
    if use_cache:
        storage.atomic_torch_save({"meta": meta, "features": feats, "labels": torch.as_tensor(labels),
                                   "checksum": _checksum(feats), "encoded_with": info}, path)
    return Features(feats, np.asarray(labels), key, path if use_cache else None, False, seconds, info)


def cached(meta: dict, compute: Callable[[], tuple], name: str, use_cache: bool = True) -> Features:
    """Return the cached tensor for ``meta`` or compute it, save it atomically and return it.
    ``compute`` returns (features, labels) or (features, labels, encoded_with)."""
    meta, key, path = _entry_path(meta, name)
    hit = _lookup(meta, key, path, use_cache)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    feats, labels, *info = compute()
    return _finish(meta, key, path, name, feats, labels, time.perf_counter() - t0, info[0] if info else {},
                   use_cache)


def encode_dataset(encode: Callable[[torch.Tensor], torch.Tensor], encoder_card: dict, samples: Samples,
                   transform, transform_card: dict, *, device: torch.device, batch_size: int = 64,
                   workers: int | None = None, use_cache: bool = True, progress: bool = True,
                   name: str | None = None, compile: compiled_.Mode | None = None) -> Features:
    """Run ``encode`` over every image of ``samples`` in batches under autocast, through the cache.

    ``compile``: ``auto`` / True / False (default: the profile's ``encode.compile``). Under torchrun
    each rank encodes one contiguous shard and rank 0 writes the assembled entry (:func:`_sharded`).
    """
    dtype = config.autocast_dtype(device)
    meta = {"kind": "image", "encoder": encoder_card, "transform": transform_card,
            "dataset": samples.fingerprint(), "n": len(samples), "autocast": config.dtype_name(dtype)}
    label = name or f"{samples.name}-{samples.split}-{_slug(encoder_card.get('spec', 'encoder'))}"
    spec = encoder_card.get("spec", label)

    def compute(rows: range) -> tuple[torch.Tensor, dict]:
        """Features of the samples ``rows`` (contiguous), and how they were computed."""
        workers_ = config.encode_workers(device) if workers is None else workers
        dataset = samples.dataset(transform)
        if len(rows) != len(samples):
            dataset = torch.utils.data.Subset(dataset, rows)  # items keep their index in ``samples``
        if workers_:
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, shuffle=False, num_workers=workers_,
                pin_memory=device.type == "cuda", prefetch_factor=4, persistent_workers=False)
        else:
            loader = _decode_in_threads(dataset, batch_size, torch.get_num_threads())
        out: torch.Tensor | None = None
        with compiled_.Encoder(encode, len(rows), compile, name=spec) as run, torch.inference_mode(), \
                config.autocast(device, dtype):
            for images, _, idx in tqdm(loader, desc=f"encode {label}", disable=not progress, leave=False,
                                       total=math.ceil(len(dataset) / batch_size)):
                f = run(images.to(device, non_blocking=True)).float()
                if out is None:  # pinned on CUDA: the copies below do not wait for the device
                    out = torch.empty(len(rows), f.shape[1], dtype=torch.float32, pin_memory=device.type == "cuda")
                start = int(idx[0]) - rows.start  # batches are contiguous runs of rows, in order
                out[start:start + len(f)].copy_(f, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # once per run: the last copies have landed
        return (out if out is not None else torch.empty(0, 0)), run.card()  # empty: a rank with no rows

    if distributed.is_distributed():
        return _sharded(meta, label, compute, samples, use_cache)

    def whole():
        feats, info = compute(range(len(samples)))
        return feats, samples.labels, info

    return cached(meta, whole, label, use_cache)


def shard_rows(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` rows (sizes differ by at most one)."""
    return range(rank * n // world, (rank + 1) * n // world)


def _sharded(meta: dict, name: str, compute, samples: Samples, use_cache: bool) -> Features:
    """Encode under torchrun: every rank encodes :func:`shard_rows`, rank 0 gathers the shards,
    checks they tile the dataset in order and writes the usual entry; the others wait at a barrier
    and read it (or receive it, when the cache is off). A cache hit on rank 0 is a hit for all."""
    import torch.distributed as dist

    meta, key, path = _entry_path(meta, name)
    rank, world = distributed.rank(), distributed.world_size()
    hit = _lookup(meta, key, path, use_cache) if rank == 0 else None
    if distributed.broadcast_object(hit is not None):
        return hit if rank == 0 else _read_back(meta, key, path, name)
    t0 = time.perf_counter()
    rows = shard_rows(len(samples), rank, world)
    feats, info = compute(rows)
    shards = [None] * world if rank == 0 else None
    dist.gather_object((rows.start, rows.stop, feats, info), shards, dst=0)
    problem, out = None, None
    if rank == 0:
        problem = _check_shards(shards, len(samples))
        if problem is None:
            info = {**shards[0][3], "world_size": world, "shards": [s[3] for s in shards]}
            info["compiled"] = any(s[3].get("compiled") for s in shards)
            try:
                out = _finish(meta, key, path, name, torch.cat([s[2] for s in shards if len(s[2])]), samples.labels,
                              time.perf_counter() - t0, info, use_cache)
            except FloatingPointError as e:
                problem = str(e)
    problem = distributed.broadcast_object(problem)
    if problem is not None:
        raise RuntimeError(f"distributed encoding of {name}: {problem}")
    if not use_cache:
        feats, info = distributed.broadcast_object((out.features, out.encoded_with) if rank == 0 else None)
        return out if rank == 0 else Features(feats, np.asarray(samples.labels), key, None, False,
                                              time.perf_counter() - t0, info)
    distributed.barrier()  # rank 0 has written the entry
    if rank == 0:
        return out
    got = _read_back(meta, key, path, name)
    got.from_cache, got.seconds = False, time.perf_counter() - t0  # this rank encoded its shard of it
    return got


def _check_shards(shards: list, n: int) -> str | None:
    """None when the gathered (start, stop, features, info) shards tile rows 0..n in order."""
    expect, dims = 0, set()
    for r, (start, stop, feats, _) in enumerate(shards):
        if start == stop == expect:  # more ranks than rows
            continue
        if start != expect or not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != stop - start:
            return f"rank {r}'s shard (rows {start}:{stop}, shape {getattr(feats, 'shape', None)}) does not follow row {expect}"
        expect, dims = stop, dims | {feats.shape[1]}
    if expect != n or len(dims) > 1:
        return f"shards cover {expect} of {n} rows with feature sizes {sorted(dims)}"
    return None


def _read_back(meta: dict, key: str, path: Path, name: str) -> Features:
    entry, reason = load_cache_entry(path, meta)
    if entry is None:
        raise RuntimeError(f"distributed encoding of {name}: rank {distributed.rank()} cannot read the entry "
                           f"rank 0 wrote at {path} ({reason}); is CLIPLAB_CACHE on a filesystem every rank sees?")
    return Features(entry["features"], entry["labels"].numpy(), key, path, True, 0.0,
                    dict(entry.get("encoded_with") or {}))


def _decode_in_threads(dataset, batch_size: int, threads: int):
    """Batches like a ``DataLoader`` without workers, each batch decoded by ``threads`` threads of this
    process while the model waits (PIL and numpy release the GIL while decoding and transforming).

    On CPU the forward pass keeps every core busy; a worker process can only decode by preempting one
    of torch's threads, which stalls the others at OpenMP barriers: -10 to -15% images/s for ViT-B/32
    on 2 cores, against ~2% for decoding in parallel between forward passes (bench/bench_encode.py).
    Each thread decodes one contiguous share of the batch in a loop: one task per image (64 hand-offs
    and GIL switches per batch) cost 0.67-0.75 ms per EuroSAT image on 2 AMX cores against 0.57-0.60
    ms so, a tenth of a compiled ViT-B/32 forward (bench_encode's helpers/compiled 0.86 -> 0.87-0.91). Images are written straight into one of two batch buffers
    used in turn (no tensor per image, no stacking copy; :func:`helpers.data.transforms.apply_into`),
    so a batch stays valid until the one after the next is asked for -- the encode loop is done with
    it by then.
    """
    base, rows = dataset, range(len(dataset))
    if isinstance(dataset, torch.utils.data.Subset):
        base, rows = dataset.dataset, dataset.indices
    threads = max(1, threads)

    def decode(batch_rows: list[int], images: torch.Tensor) -> list[int]:
        return [base.decode_into(r, out) for r, out in zip(batch_rows, images, strict=True)]

    buffers: list[torch.Tensor] = []
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        for b, start in enumerate(range(0, len(rows), batch_size)):
            batch_rows = [int(r) for r in rows[start:start + batch_size]]
            first = None
            if not buffers:  # the transform fixes the shape: the first image, decoded once, gives it
                first, label, _ = base[batch_rows[0]]
                with torch.inference_mode(False):  # ordinary tensors: the decode threads are not in inference mode
                    buffers = [torch.empty((batch_size, *first.shape), dtype=torch.float32) for _ in range(2)]
            images = buffers[b % 2][:len(batch_rows)]
            labels, done = [], 0
            if first is not None:
                images[0].copy_(first)
                labels, done = [label], 1
            cuts = [done + (len(batch_rows) - done) * t // threads for t in range(threads + 1)]
            shares = [pool.submit(decode, batch_rows[a:z], images[a:z]) for a, z in pairwise(cuts) if z > a]
            labels += [y for share in shares for y in share.result()]
            yield images, torch.tensor(labels), torch.tensor(batch_rows)


def image_features(loaded, samples: Samples, interpolation: str | None = None, **kwargs) -> Features:
    """CLIP image embeddings of ``samples`` (``loaded``: :class:`helpers.models.LoadedModel`)."""
    transform, card = loaded.transform(interpolation)
    encoder = {"spec": loaded.spec, "weights_sha256": loaded.weights_sha256, "output": "encode_image"}
    return encode_dataset(loaded.model.encode_image, encoder, samples, transform, card,
                          device=loaded.device, **kwargs)


def text_features(loaded, texts: list[str], batch_size: int = 256, use_cache: bool = True,
                  compile: compiled_.Mode | None = None) -> torch.Tensor:
    """CLIP text embeddings (float32, not normalised) of ``texts``, cached like image features
    (``compile`` as in :func:`encode_dataset`; a prompt set rarely repays a compile under ``auto``)."""
    dev = loaded.device
    dtype = config.autocast_dtype(dev)
    meta = {"kind": "text", "encoder": {"spec": loaded.spec, "weights_sha256": loaded.weights_sha256},
            "texts": storage.sha256_json(list(texts)), "n": len(texts), "autocast": config.dtype_name(dtype),
            "context_length": loaded.context_length}

    def compute():
        chunks = []
        with compiled_.Encoder(loaded.model.encode_text, len(texts), compile, name=f"{loaded.spec} (text)") as run, \
                torch.inference_mode(), config.autocast(dev, dtype):
            for i in range(0, len(texts), batch_size):
                tokens = loaded.tokenize(list(texts[i:i + batch_size])).to(dev, non_blocking=True)
                chunks.append(run(tokens).float())
        return torch.cat(chunks).cpu(), np.arange(len(texts)), run.card()  # one device-to-host copy

    return cached(meta, compute, f"text-{_slug(loaded.spec)}", use_cache).features


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:60]
