"""Data-parallel training across processes (``torchrun --nproc_per_node N``) with the code path of a
single process: gloo on CPU, nccl on CUDA, a DistributedSampler per rank, only rank 0 writes.

Outside torchrun every function here is a no-op, so notebooks never need to know.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); True when distributed."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return is_distributed()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (e.g. the spec of a checkpoint only rank 0 wrote); after a barrier."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when distributed (gradients averaged over ranks), else itself."""
    if not is_distributed():
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP does this at the start
    of each forward, so after the last step of an epoch the ranks' statistics still differ; call this
    before evaluating or saving so all ranks hold one model."""
    if is_distributed():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def sampler(n_or_dataset, seed: int):
    """Each rank's shard of a seeded per-epoch shuffle (``set_epoch`` like :class:`training.EpochSampler`)."""
    return torch.utils.data.DistributedSampler(n_or_dataset, num_replicas=world_size(), rank=rank(),
                                               shuffle=True, seed=seed, drop_last=True)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
