"""Freed memory kept for reuse (helpers/core/memory.py): the setting is validated, stated in records, and
really spares the page faults of allocating the same large blocks again (measured in fresh processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.core import memory
from helpers.results import records

glibc = pytest.mark.skipif(memory._glibc() is None, reason="the allocator setting applies to glibc only")

FAULTS = r"""
import json, resource, sys
import torch
import helpers  # puts CLIPLAB_MALLOC in force
from helpers.core import memory
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # warm: the heap settles (aligned blocks split, then merge; 3-6 rounds seen)
    torch.ones(16 << 20).sum()
start = faults()
for _ in range(16):  # what a training step does: the same large blocks allocated, written, freed
    torch.ones(16 << 20).sum()
print(json.dumps({"faults": faults() - start, "card": memory.card()}))
"""


def _run(mode: str) -> dict:
    env = {**os.environ, "CLIPLAB_MALLOC": mode}
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_kept_memory_spares_the_page_faults_of_reallocating_large_blocks():
    kept, system = _run("keep"), _run("system")
    pages = (64 << 20) // 4096
    assert system["faults"] > 12 * pages, system  # glibc's default: each of the 16 blocks faulted in again
    # kept: reused; the heap still moves a block now and then (0-3 of 16 seen faulted afresh)
    assert kept["faults"] * 3 < system["faults"], (kept, system)
    assert kept["card"].startswith("glibc, freed memory kept") and system["card"] == "glibc defaults"


def test_unknown_setting_is_an_error_naming_the_choices(monkeypatch):
    monkeypatch.setenv("CLIPLAB_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match=r"CLIPLAB_MALLOC='jemalloc': use one of keep, system"):
        memory.requested()
    monkeypatch.setenv("CLIPLAB_MALLOC", " System ")
    assert memory.requested() == "system"
    monkeypatch.delenv("CLIPLAB_MALLOC")
    assert memory.requested() == "keep"
    with pytest.raises(ValueError, match="allocator mode 'fast'"):
        memory.apply("fast")


def test_records_state_the_allocator_in_force():
    assert records.environment()["allocator"] == memory.card()


def test_worker_counts_read_one_validated_setting(monkeypatch):
    from helpers.core import config

    monkeypatch.setenv("CLIPLAB_WORKERS", "3")
    assert config.num_workers() == config.decode_workers() == config.encode_workers("cpu") == 3
    monkeypatch.setenv("CLIPLAB_WORKERS", "two")
    with pytest.raises(ValueError, match=r"CLIPLAB_WORKERS='two': give a number of worker processes"):
        config.decode_workers()
    monkeypatch.delenv("CLIPLAB_WORKERS")
    assert config.encode_workers("cpu") == 0 and config.decode_workers() >= 1
