"""Encoding beyond one device: under ``torchrun --nproc_per_node 2`` (gloo, CPU) each rank encodes a
shard, rank 0 assembles them in dataset order and writes the one cache entry, rank 1 reads it; the
features equal a one-process run at fp32."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

from helpers import models
from helpers.data import load_image_folder
from helpers.eval import features

SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import torch
    from helpers import models
    from helpers.core import distributed
    from helpers.data import load_image_folder
    from helpers.eval import features

    root, out = sys.argv[1], sys.argv[2]
    assert distributed.setup() and distributed.world_size() == 2
    samples = load_image_folder(root)["test"].subset(range(45), selection="first 45")  # shards of 22 and 23
    loaded = models.load_model("scratch:tiny-vit@0", device="cpu")
    f = features.image_features(loaded, samples, batch_size=8, progress=False, compile=False)
    again = features.image_features(loaded, samples, batch_size=8, progress=False, compile=False)
    torch.save({"features": f.features, "labels": torch.as_tensor(f.labels), "path": str(f.path),
                "encoded_with": f.encoded_with, "again_from_cache": again.from_cache,
                "again_equal": torch.equal(again.features, f.features)}, out.format(rank=distributed.rank()))
    distributed.cleanup()
''')


def test_two_ranks_encode_shards_that_rank_0_assembles_like_one_process(tmp_path, synthetic_root, monkeypatch):
    script = tmp_path / "encode_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "CLIPLAB_CACHE": str(tmp_path / "ddp-cache"), "CLIPLAB_AUTOCAST": "fp32",
           "OMP_NUM_THREADS": "1", "CLIPLAB_WORKERS": "0", "CLIPLAB_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join([str(features.config.PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(synthetic_root), str(tmp_path / "rank{rank}.pt")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    # one process, the same inputs, fp32
    monkeypatch.setenv("CLIPLAB_AUTOCAST", "fp32")
    samples = load_image_folder(synthetic_root)["test"].subset(range(45), selection="first 45")
    single = features.image_features(models.load_model("scratch:tiny-vit@0", device="cpu"), samples,
                                     batch_size=8, progress=False, compile=False)
    torch.testing.assert_close(r0["features"], single.features, rtol=1e-5, atol=1e-6)
    assert torch.equal(r0["features"], r1["features"])  # rank 1 read what rank 0 wrote
    assert np.array_equal(r0["labels"].numpy(), samples.labels)
    assert r0["path"] == r1["path"] and os.path.basename(r0["path"]) == single.path.name  # the same key
    entries = list((tmp_path / "ddp-cache" / "features").glob("*.pt"))
    assert [p.name for p in entries] == [single.path.name]  # one entry, in the usual format
    entry, reason = features.load_cache_entry(entries[0], torch.load(entries[0], weights_only=True)["meta"])
    assert entry is not None, reason
    info = r0["encoded_with"]
    assert info["world_size"] == 2 and [s["batches"] for s in info["shards"]] == [3, 3]  # 22 and 23 rows
    assert r0["again_from_cache"] and r1["again_from_cache"] and r0["again_equal"] and r1["again_equal"]
