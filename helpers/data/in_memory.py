"""Decode a dataset once and keep it in memory, when it fits: training reads its train images every
epoch and its validation images after every epoch, and on a small machine decoding them again costs
more than the step (EuroSAT train at 64 px is 243 MB as uint8). What is kept is exactly what the
dataset yields, so results do not depend on whether it was kept."""

from __future__ import annotations

import os

import torch
from tqdm.auto import tqdm

MEMORY_SHARE = 0.25  # of the memory available when training starts


def available_bytes() -> int:
    """Memory the system has available now (Linux ``MemAvailable``; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def materialise(dataset, workers: int = 0, batch_size: int = 256, what: str = "images",
                progress: bool = True) -> torch.utils.data.Dataset:
    """``dataset`` (items ``(image tensor, label, index)`` with a deterministic transform) as an in-memory
    ``TensorDataset`` of the same items, or ``dataset`` itself when its images would take more than
    ``MEMORY_SHARE`` of the available memory (sized from its first item; every image has that shape)."""
    n = len(dataset)
    if n == 0:
        return dataset
    first = dataset[0][0]
    if not torch.is_tensor(first) or first.numel() * first.element_size() * n > MEMORY_SHARE * available_bytes():
        return dataset
    images = torch.empty((n, *first.shape), dtype=first.dtype)
    labels, indices = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    start = 0
    for x, y, i in tqdm(loader, desc=f"decoding {what} into memory", disable=not progress, leave=False):
        images[start:start + len(x)], labels[start:start + len(x)], indices[start:start + len(x)] = x, y, i
        start += len(x)
    return torch.utils.data.TensorDataset(images, labels, indices)
