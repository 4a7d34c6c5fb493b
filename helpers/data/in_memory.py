"""Decode a dataset once and keep it in memory, when it fits: training reads its train images every
epoch and its validation images after every epoch, and on a small machine decoding them again costs
more than the step (EuroSAT train at 64 px is 243 MB as uint8). What is kept is exactly what the
dataset yields, so results do not depend on whether it was kept."""

from __future__ import annotations

import psutil
import torch
from tqdm.auto import tqdm

from helpers.core import config

MEMORY_SHARE = 0.25  # of the memory available when training starts


def available_bytes() -> int:
    """Memory the system can give without swapping, now."""
    return int(psutil.virtual_memory().available)


class InMemory(torch.utils.data.TensorDataset):
    """The items ``(image, label, index)`` of ``dataset`` as tensors, decoded on first use (a finished
    run that is only resumed to read its result never decodes them)."""

    def __init__(self, dataset, workers: int, batch_size: int, what: str, progress: bool):
        self.source, self.workers, self.batch_size, self.what, self.progress = dataset, workers, batch_size, what, progress
        self._tensors = None

    def __len__(self) -> int:
        return len(self.source)

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        if self._tensors is None:
            self._tensors = self._decode()
        return self._tensors

    def _decode(self) -> tuple[torch.Tensor, ...]:
        n, first = len(self.source), self.source[0][0]
        images = torch.empty((n, *first.shape), dtype=first.dtype)
        labels, indices = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
        loader = torch.utils.data.DataLoader(self.source, batch_size=self.batch_size, num_workers=self.workers,
                                             prefetch_factor=4 if self.workers else None)
        start = 0
        for x, y, i in tqdm(loader, desc=f"decoding {self.what} into memory", disable=not self.progress, leave=False):
            images[start:start + len(x)], labels[start:start + len(x)], indices[start:start + len(x)] = x, y, i
            start += len(x)
        return images, labels, indices


def materialise(dataset, workers: int | None = None, batch_size: int = 256, what: str = "images",
                progress: bool = True) -> torch.utils.data.Dataset:
    """``dataset`` (items ``(image tensor, label, index)`` with a deterministic transform) as an
    :class:`InMemory` dataset of the same items, or ``dataset`` itself when its images would take more
    than ``MEMORY_SHARE`` of the available memory (sized from its first item; every image has that shape).
    ``workers``: decoding processes (default :func:`config.decode_workers`: every core, as nothing else runs)."""
    workers = config.decode_workers() if workers is None else workers
    n = len(dataset)
    if n == 0:
        return dataset
    first = dataset[0][0]
    if not torch.is_tensor(first) or first.numel() * first.element_size() * n > MEMORY_SHARE * available_bytes():
        return dataset
    return InMemory(dataset, workers, batch_size, what, progress)
