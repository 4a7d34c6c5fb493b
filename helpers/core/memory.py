"""Freed memory kept for reuse by this process (glibc's malloc), instead of given back to the system.

Why: glibc serves large blocks (activations and gradients are MBs to GBs; over 32 MiB always) by a
fresh ``mmap`` and unmaps them when freed, so the next training step or batch faults the same amount in again, a page
at a time: 22,000-28,000 pages (90-110 MB) per training step of ResNet-18 or the small CLIP at 64 px,
batch 128, on a 2-core VM, and under 200 with freed memory kept, for steps 1.04x (ResNet-18) and
1.16x (small CLIP) faster (medians of 3 fresh processes each; ``bench/bench_train.py`` prints the
ratio); the eager ViT-B/32 forward in bf16 ran 1.3x faster on a 2-core AMX VM (105-108 -> 138-150
img/s, batch 64; a compiled copy, which plans its own buffers, 196-198 either way). PyTorch's CUDA
allocator keeps freed blocks the same way. The cost: the process holds on to its peak heap (up to ``TRIM_BYTES`` more at the top of it) until it exits.

``CLIPLAB_MALLOC``: ``keep`` (default) or ``system`` (glibc's own behaviour, untouched). Elsewhere than
glibc (macOS, musl) nothing changes. Every record states which was in force (``environment.allocator``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

MODES = ("keep", "system")
TRIM_BYTES = 1 << 30  # free memory at the top of the heap beyond this goes back to the system
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameters (malloc.h)
# where glibc's dynamic thresholds settle in a process that has freed large blocks (mmap threshold at its
# 64-bit maximum, trim at twice that): what "system" returns to after "keep" within one process
_GLIBC_SETTLED = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20, _M_MMAP_MAX: 65536}

_state = {"mode": "system", "touched": False}  # what this process runs with now; whether mallopt was called


def requested() -> str:
    """The mode ``CLIPLAB_MALLOC`` asks for (``keep`` when unset); anything else is an error."""
    value = os.environ.get("CLIPLAB_MALLOC", "").strip().lower() or "keep"
    if value not in MODES:
        raise ValueError(f"CLIPLAB_MALLOC={os.environ['CLIPLAB_MALLOC']!r}: use one of {', '.join(MODES)} "
                         "(keep: freed memory stays with the process for reuse; system: glibc's default)")
    return value


@functools.lru_cache(maxsize=1)
def _glibc():
    """glibc's ``mallopt`` and ``malloc_trim``, or None where the C library is another one."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None


def apply(mode: str | None = None) -> str:
    """Put ``mode`` (default :func:`requested`) in force for this process and its forked workers;
    returns it as :func:`card` states it. ``system`` after ``keep`` (a benchmark comparing both) sets the
    values glibc's dynamic thresholds settle at once large blocks were freed (blocks over 32 MiB mapped,
    trim above 64 MiB), since a setting made with ``mallopt`` turns the dynamic adjustment off."""
    mode = requested() if mode is None else mode
    if mode not in MODES:  # a caller's value; CLIPLAB_MALLOC's is checked by requested()
        raise ValueError(f"allocator mode {mode!r}: use one of {', '.join(MODES)}")
    glibc = _glibc()
    if glibc is None or mode == _state["mode"]:
        return card()
    mallopt, malloc_trim = glibc
    if mode == "keep":  # every block from the heap, and the heap not trimmed below TRIM_BYTES of free top
        ok = mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)
    else:
        ok = all(mallopt(param, value) for param, value in _GLIBC_SETTLED.items())
        malloc_trim(0)
    if not ok:
        raise OSError(f"glibc refused the allocator settings of mode {mode!r} (mallopt returned 0)")
    _state.update(mode=mode, touched=True)
    return card()


def card() -> str:
    """How freed memory is handled in this process, for records."""
    if _glibc() is None:
        return "system allocator (not glibc: unchanged)"
    if _state["mode"] == "keep":
        return f"glibc, freed memory kept for reuse (no mmap blocks, trim above {TRIM_BYTES >> 20} MiB)"
    if _state["touched"]:
        return (f"glibc defaults as they settle (blocks over {_GLIBC_SETTLED[_M_MMAP_THRESHOLD] >> 20} MiB mapped, "
                f"trim above {_GLIBC_SETTLED[_M_TRIM_THRESHOLD] >> 20} MiB)")
    return "glibc defaults"
