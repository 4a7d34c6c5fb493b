"""Model specs, offline behaviour for OpenAI weights, and checkpoints in OpenAI's two file formats."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import clip
import pytest
import torch
from clip.model import build_model

from helpers import models
from helpers.core import storage
from helpers.models import ModelSpecError, WeightsNotFoundError

TINY = ("tiny-vit", "tiny-rn")


def _clip_load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clip.load(str(path), device="cpu", jit=False, **kw)


def _assert_same_weights(a: dict, b: dict):
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different[:5]}"


def _assert_fp32(model: torch.nn.Module):
    dtypes = {p.dtype for p in model.parameters()} | {b.dtype for b in model.buffers() if b.is_floating_point()}
    assert dtypes == {torch.float32}


# ------------------------------------------------------------------------------------------ specs
def test_scratch_spec_defaults_and_overrides():
    cfg, seed = models.parse_scratch("tiny-vit")
    assert (cfg, seed) == (models.SCRATCH_CONFIGS["tiny-vit"], 0)
    cfg, seed = models.parse_scratch("tiny-vit,res=64,layers=4@3")
    assert (cfg["res"], cfg["layers"], cfg["patch"], seed) == (64, 4, 8, 3)
    cfg, seed = models.parse_scratch("tiny-rn,layers=(2,1,1,1),res=64@7")
    assert (cfg["layers"], cfg["res"], seed) == ([2, 1, 1, 1], 64, 7)
    # the table itself is not modified by overrides
    assert models.SCRATCH_CONFIGS["tiny-vit"]["res"] == 32


def test_scratch_overrides_reach_the_model():
    rn = models.load_model("scratch:tiny-rn,layers=(2,1,1,1),res=64@3")
    assert type(rn.model.visual).__name__ == "ModifiedResNet"
    assert len(rn.model.visual.layer1) == 2 and rn.resolution == 64
    vit = models.load_model("scratch:tiny-vit,res=48,layers=3")
    assert type(vit.model.visual).__name__ == "VisionTransformer"
    assert vit.resolution == 48 and len(vit.model.visual.transformer.resblocks) == 3
    with torch.inference_mode():
        assert vit.model.encode_image(torch.randn(1, 3, 48, 48)).shape == (1, 64)


def test_spec_kinds_and_status(tmp_path):
    scratch = models.load_model("scratch:tiny-vit")
    assert (scratch.status, scratch.source_file, scratch.trained) == ("untrained", None, False)
    path = models.save_openai_state_dict(scratch.model, tmp_path / "tiny.pt")
    loaded = models.load_model(f"file:{path}")
    assert (loaded.status, loaded.source_file, loaded.trained) == ("checkpoint", str(path.resolve()), True)
    assert loaded.weights_sha256 == storage.sha256_file(path)
    assert loaded.card()["spec"] == f"file:{path}"


@pytest.mark.parametrize("spec, message", [
    ("", r"no kind; use <kind>:<name>, one of: .*openai:<name>.*file:<path>.*scratch:<config>"),
    ("ViT-B/32", r"'ViT-B/32': no kind; use <kind>:<name>"),
    ("openai:", r"'openai:': no name after the kind"),
    ("hub:ViT-B/32", r"unknown kind 'hub'"),
    ("openai:ViT-B/99", r"openai:ViT-B/99 is not an OpenAI CLIP model; available: .*ViT-B/32"),
    ("scratch:huge-vit", r"scratch:huge-vit is not a known config; known: .*tiny-vit"),
    ("scratch:tiny-vit,res", r"override 'res': use key=value"),
    ("scratch:tiny-vit,depth=3", r"override 'depth=3': use key=value with key in .*layers"),
    ("scratch:tiny-vit,res=abc", r"override 'res=abc': the value must be an integer"),
    ("scratch:tiny-vit,layers=1.5", r"override 'layers=1.5': the value must be an integer"),
    ("scratch:tiny-vit@abc", r"seed after '@' must be an integer, got 'abc'"),
    ("scratch:tiny-vit,width=96", r"multiples of 64"),
    ("scratch:tiny-vit,patch=None", r"scratch:tiny-vit,patch=None: this config does not build a CLIP model"),
])
def test_bad_specs_raise_model_spec_error(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        models.load_model(spec)


def test_scratch_seed_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = models.load_model("scratch:tiny-vit@5")
    assert torch.equal(torch.rand(3), expected), "building a scratch model consumed the global RNG"
    b = models.load_model("scratch:tiny-vit@5")
    c = models.load_model("scratch:tiny-vit@6")
    d = models.load_model("scratch:tiny-vit")  # no @seed means seed 0
    e = models.load_model("scratch:tiny-vit@0")
    assert a.weights_sha256 == b.weights_sha256
    _assert_same_weights(a.model.state_dict(), b.model.state_dict())
    assert c.weights_sha256 != a.weights_sha256
    assert not torch.equal(a.model.visual.conv1.weight, c.model.visual.conv1.weight)
    assert d.weights_sha256 == e.weights_sha256 != a.weights_sha256
    assert a.weights_sha256 == storage.sha256_state_dict(a.model.state_dict())


@pytest.mark.parametrize("name", TINY)
def test_tiny_configs_work_end_to_end(name):
    loaded = models.load_model(f"scratch:{name}@1")
    _assert_fp32(loaded.model)
    assert not loaded.model.training
    res, dim = loaded.resolution, loaded.embed_dim
    assert (res, dim, loaded.context_length) == (32, 64, 32)
    transform, card = loaded.transform()
    from PIL import Image

    x = transform(Image.new("RGB", (50, 70), (10, 200, 30)))
    assert x.shape == (3, res, res) and card["resize"] == res
    tokens = loaded.tokenize(["a photo of a cat", "forest " * 100])  # second one is truncated, not an error
    assert tokens.shape == (2, 32)
    with torch.inference_mode():
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        img = loaded.model.encode_image(torch.stack([x, noise, torch.zeros_like(x)]))
        txt = loaded.model.encode_text(tokens)
    assert img.shape == (3, dim) and txt.shape == (2, dim)
    assert img.dtype == txt.dtype == torch.float32
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()
    assert not torch.allclose(img[0], img[1])  # the image actually reaches the output
    card = loaded.card()
    assert card["image_tower"] == ("VisionTransformer" if name == "tiny-vit" else "ModifiedResNet")
    assert card["n_params"] == sum(p.numel() for p in loaded.model.parameters())


# --------------------------------------------------------------------------- openai:, offline
def _clip_cache() -> Path:
    return Path(os.environ["CLIPLAB_CACHE"]).resolve() / "clip"


def test_openai_weights_absent_offline_names_model_file_and_folder(no_network):
    folder = _clip_cache()
    with pytest.raises(WeightsNotFoundError) as info:
        models.load_model("openai:ViT-B/32")
    msg = str(info.value)
    assert "openai:ViT-B/32" in msg and "ViT-B-32.pt" in msg and str(folder) in msg
    assert "CLIPLAB_CACHE" in msg
    assert isinstance(info.value, FileNotFoundError)
    assert len(no_network) == 1 and no_network[0].endswith("/ViT-B-32.pt")  # tried once, then gave up
    assert not (folder / "ViT-B-32.pt").exists(), "a failed download left a file behind"

    missing = models.missing_weights("openai:ViT-B/32")
    assert missing is not None
    assert "ViT-B-32.pt" in missing and str(folder) in missing and "openai:ViT-B/32" in missing
    assert models.missing_weights("scratch:tiny-vit") is None


def test_openai_weights_with_wrong_checksum_count_as_missing(no_network):
    folder = _clip_cache()
    folder.mkdir(parents=True)
    (folder / "RN50.pt").write_bytes(b"not the released weights")
    assert "RN50.pt" in (models.missing_weights("openai:RN50") or "")
    with pytest.raises(WeightsNotFoundError, match=r"RN50\.pt"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clip warns that the checksum does not match
        models.load_model("openai:RN50")
    assert len(no_network) == 1
    assert (folder / "RN50.pt").read_bytes() == b"not the released weights"


def test_file_spec_with_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(WeightsNotFoundError, match=r"nowhere/model\.pt does not exist"):
        models.load_model(f"file:{path}")
    assert str(path) in models.missing_weights(f"file:{path}")
    assert models.missing_weights(f"file:{Path(__file__)}") is None


# ------------------------------------------------------------------------------ checkpoint files
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny scratch model saved as OpenAI state dict (fp16) and as TorchScript archive.

    The archive is traced from the model read back from the state dict, so both files hold exactly
    the same (fp16-representable) numbers and must load to identical fp32 weights.
    """
    folder = tmp_path_factory.mktemp("ckpt")
    original = models.load_model("scratch:tiny-vit@2")
    sd_path = models.save_openai_state_dict(original.model, folder / "tiny-vit.pt")
    from_sd = models.load_model(f"file:{sd_path}")
    ts_path = models.save_torchscript_archive(from_sd.model, folder / "tiny-vit-jit.pt")
    rn = models.load_model("scratch:tiny-rn@2")
    rn_path = models.save_openai_state_dict(rn.model, folder / "tiny-rn.pt")
    return {"original": original, "sd": sd_path, "ts": ts_path, "rn": rn, "rn_sd": rn_path}


def test_state_dict_file_is_fp16_like_releases(checkpoints):
    raw = torch.load(checkpoints["sd"], map_location="cpu", weights_only=True)
    assert {v.dtype for v in raw.values() if v.is_floating_point()} == {torch.float16}
    assert not models.is_torchscript_archive(checkpoints["sd"])
    assert models.is_torchscript_archive(checkpoints["ts"])


@pytest.mark.parametrize("fmt", ["sd", "ts"])
def test_checkpoint_loads_fp32_with_original_weights_up_to_fp16(checkpoints, fmt):
    loaded = models.load_model(f"file:{checkpoints[fmt]}")
    _assert_fp32(loaded.model)
    assert loaded.status == "checkpoint"
    original = checkpoints["original"].model.state_dict()
    got = loaded.model.state_dict()
    assert set(got) == set(original)
    for k, v in original.items():
        torch.testing.assert_close(got[k], v, rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def test_state_dict_and_torchscript_archive_give_the_same_model(checkpoints):
    a = models.load_model(f"file:{checkpoints['sd']}")
    b = models.load_model(f"file:{checkpoints['ts']}")
    _assert_same_weights(a.model.state_dict(), b.model.state_dict())
    assert a.weights_sha256 != b.weights_sha256  # a file's sha256 names the file, not the numbers
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = a.tokenize(["a satellite photo of a river", "forest"])
    with torch.inference_mode():
        assert torch.equal(a.model.encode_image(x), b.model.encode_image(x))
        assert torch.equal(a.model.encode_text(tokens), b.model.encode_text(tokens))


def test_clip_load_reads_the_archive_like_helpers(checkpoints):
    ref, preprocess = _clip_load(checkpoints["ts"])
    ours = models.load_model(f"file:{checkpoints['ts']}")
    _assert_fp32(ref)
    _assert_same_weights(ref.state_dict(), ours.model.state_dict())
    assert ref.visual.input_resolution == ours.resolution


@pytest.mark.parametrize("which", ["sd", "rn_sd"])
def test_state_dict_loads_like_clip_would(checkpoints, which):
    """helpers = clip.load's state-dict branch (torch.load + build_model + float on CPU).

    ``clip.load`` itself cannot read state dicts on current torch (it re-reads a consumed file handle,
    openai/CLIP#396); where it can, its weights must match too.
    """
    path = checkpoints[which]
    ours = models.load_model(f"file:{path}")
    ref = build_model(torch.load(path, map_location="cpu")).float()
    _assert_same_weights(ref.state_dict(), ours.model.state_dict())
    try:
        via_clip, _ = _clip_load(path)
    except EOFError:
        pass  # openai/CLIP#396 on this torch
    else:
        _assert_same_weights(via_clip.state_dict(), ours.model.state_dict())


def test_training_checkpoint_wrappers_and_sidecar(tmp_path, checkpoints):
    sd = torch.load(checkpoints["sd"], map_location="cpu", weights_only=True)
    expected = models.load_model(f"file:{checkpoints['sd']}").model.state_dict()
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    _assert_same_weights(models.load_model(f"file:{wrapped}").model.state_dict(), expected)

    trained = models.save_openai_state_dict(checkpoints["original"].model, tmp_path / "ft.pt",
                                            meta={"trained": True, "epochs": 2})
    loaded = models.load_model(f"file:{trained}")
    assert loaded.status == "trained" and loaded.meta["epochs"] == 2
    standin = models.save_openai_state_dict(checkpoints["original"].model, tmp_path / "standin.pt",
                                            meta={"untrained": True})  # as scripts/paper_standins.py writes
    assert not models.load_model(f"file:{standin}").trained  # its accuracies are masked


@pytest.mark.parametrize("fmt", ["sd", "ts"])
def test_truncated_checkpoint_is_a_model_spec_error_naming_the_file(tmp_path, checkpoints, fmt):
    data = checkpoints[fmt].read_bytes()
    bad = tmp_path / f"truncated-{fmt}.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSpecError, match=str(bad)):
        models.load_model(f"file:{bad}")


@pytest.mark.parametrize("fmt", ["sd", "ts"])
def test_damaged_checkpoint_is_not_loaded_silently(tmp_path, checkpoints, fmt):
    """Bytes zeroed inside the stored tensors: torch would load it with wrong weights; the zip CRC catches it."""
    data = bytearray(checkpoints[fmt].read_bytes())
    mid = len(data) // 4  # inside the token embedding, far from the zip directory at the end
    data[mid: mid + 4096] = b"\x00" * 4096
    damaged = tmp_path / f"damaged-{fmt}.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelSpecError, match=f"{damaged}.*fails the zip CRC check"):
        models.load_model(f"file:{damaged}")


def test_non_checkpoints_are_model_spec_errors(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(1000))
    not_clip = tmp_path / "not_clip.pt"
    torch.save({"weight": torch.zeros(3)}, not_clip)
    for path, reason in ((garbage, "corrupt or not a checkpoint"), (not_clip, "holds no CLIP state dict")):
        with pytest.raises(ModelSpecError, match=str(path)) as info:
            models.load_model(f"file:{path}")
        assert reason in str(info.value)
