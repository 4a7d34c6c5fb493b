"""Compiled encoders (setting ``encode.compile``): the same predictions and features as eager on real
EuroSAT images, a failing compile falls back to eager in one line, ``auto`` compiles only when it
pays, copies never outlive their weights, and a bad mode is refused by the configuration."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import data, models, profiles, settings
from helpers.core import compiled, config, layout
from helpers.eval import features

SPEC = "scratch:tiny-vit@0"
REAL_INDUCTOR_CACHE_DIR = compiled.inductor_cache_dir  # the fixture below replaces it for speed


@pytest.fixture(autouse=True)
def _shared_inductor_cache(monkeypatch):
    """Inductor's own default cache, not one under the per-test CLIPLAB_CACHE: a cold cache costs
    ~30 s of one-time C++ builds per process, a warm one a few seconds (real runs keep theirs under
    CLIPLAB_CACHE, which persists)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    shared = current if current and current != compiled._ours[0] else default_cache_dir()
    monkeypatch.setattr(compiled, "inductor_cache_dir", lambda: os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", shared))
    monkeypatch.setattr(compiled, "_default_mode", ["auto"])


@pytest.fixture(scope="module")
def tiny():
    return models.load_model(SPEC, device="cpu")


@pytest.fixture(scope="module")
def eurosat_few(eurosat_root):
    test = data.load_eurosat(eurosat_root, val_fraction=0)["test"]
    idx = np.linspace(0, len(test) - 1, 40).round().astype(int)
    return test.subset(idx, selection="40 images evenly spaced over the sorted test split")


def test_compiled_and_eager_agree_on_real_eurosat(tiny, eurosat_few):
    kw = {"batch_size": 16, "progress": False, "use_cache": False}  # 16, 16, 8: the last batch is padded
    eager = features.image_features(tiny, eurosat_few, compile=False, **kw)
    fast = features.image_features(tiny, eurosat_few, compile=True, **kw)
    assert eager.compiled is False and fast.compiled is True
    assert fast.encoded_with["compiled_batches"] == fast.encoded_with["batches"] == 3
    cos = F.cosine_similarity(eager.features, fast.features, dim=-1)
    assert cos.min() >= 0.999, cos.min()
    head = torch.randn(eager.features.shape[1], 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal((eager.normalized() @ head).argmax(1), (fast.normalized() @ head).argmax(1))

    prompts = [f"a satellite photo of {c}." for c in eurosat_few.classnames]
    t_eager = features.text_features(tiny, prompts, use_cache=False, compile=False)
    t_fast = features.text_features(tiny, prompts, use_cache=False, compile=True)
    assert F.cosine_similarity(t_eager, t_fast, dim=-1).min() >= 0.999
    zs_eager = (eager.normalized() @ F.normalize(t_eager, dim=-1).T).argmax(1)
    zs_fast = (fast.normalized() @ F.normalize(t_fast, dim=-1).T).argmax(1)
    assert torch.equal(zs_eager, zs_fast)


def test_compile_is_not_in_the_cache_key_but_is_recorded(tiny, synthetic_root):
    samples = data.load_image_folder(synthetic_root)["test"]
    first = features.image_features(tiny, samples, compile=False, progress=False)
    again = features.image_features(tiny, samples, compile=True, progress=False)
    assert again.from_cache and again.key == first.key and again.compiled is False  # how it was made


def test_a_failing_compile_falls_back_to_eager_with_one_line_naming_the_model(tiny, synthetic_root, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line of the compiler's complaint")

    monkeypatch.setattr(torch, "compile", broken)
    samples = data.load_image_folder(synthetic_root)["test"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = features.image_features(tiny, samples, compile=True, progress=False, use_cache=False, batch_size=32)
    notes = [w for w in caught if issubclass(w.category, compiled.CompileFallbackWarning)]
    assert len(notes) == 1
    msg = str(notes[0].message)
    assert "\n" not in msg and SPEC in msg and "no C++ compiler found" in msg and "eager" in msg
    assert out.compiled is False and out.encoded_with["decision"].startswith("failed")
    eager = features.image_features(tiny, samples, compile=False, progress=False, use_cache=False, batch_size=32)
    torch.testing.assert_close(out.features, eager.features, rtol=0, atol=0)
    compiled._copies(tiny.model).failed = None  # the module-scoped model may be compiled by later tests


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()


def _encode_all(enc, x, batch):
    with torch.inference_mode():
        return torch.cat([enc(b) for b in x.split(batch)])


def test_auto_compiles_only_when_the_saved_time_repays_the_compile(monkeypatch):
    # the rule: eager seconds per item x items left x (1 - 1/speedup) > expected compile seconds
    assert compiled.should_compile(0.01, 100_000, 30.0)  # 1000 s eager: compile
    assert not compiled.should_compile(0.01, 1_000, 30.0)  # 10 s eager can save ~3 s: not worth 30 s
    assert compiled.should_compile(0.01, 1_000, 2.0, speedup=1.4)

    net, x = _mlp(), torch.randn(96, 32)
    small = compiled.Encoder(net, 96, "auto", name="mlp")
    _encode_all(small, x, 32)
    assert not small.compiled and small.decision.startswith("auto: eager")

    monkeypatch.setattr(compiled, "expected_compile_seconds", lambda *a: 1e-9)  # as if compiling were free
    cheap = compiled.Encoder(net, 96, "auto", name="mlp")
    out = _encode_all(cheap, x, 32)
    assert cheap.decision.startswith("auto: compile") and cheap.compiled_batches == 2  # the first batch timed eager
    torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-5)
    monkeypatch.undo()
    with torch.inference_mode():
        assert compiled.expected_compile_seconds(net, "forward", x[:32]) == 0.0  # this copy is ready now
    ready = compiled.Encoder(net, 96, "auto", name="mlp")
    _encode_all(ready, x, 32)
    assert ready.decision == "auto: compiled copy ready" and ready.compiled_batches == 3

    one = compiled.Encoder(net, 20, "auto", name="mlp")  # fewer items than a batch: never compiled
    _encode_all(one, x[:20], 32)
    assert one.decision == "auto: one batch" and not one.compiled


def test_a_compiled_copy_never_outlives_the_weights_it_was_compiled_from():
    net, x = _mlp(), torch.randn(64, 32)
    first = compiled.Encoder(net, 64, True, name="mlp")
    _encode_all(first, x, 32)
    with torch.no_grad():
        net[0].weight.mul_(2)  # an optimiser step would do the same: _version moves on
    with torch.inference_mode():
        assert compiled.expected_compile_seconds(net, "forward", x[:32]) > 0
    second = compiled.Encoder(net, 64, True, name="mlp")
    out = _encode_all(second, x, 32)
    assert second.compiled and second.compile_seconds > 0
    with torch.inference_mode():
        torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-5)
    import copy

    twin = copy.deepcopy(net)  # a copy of the module does not inherit compiled copies of the original
    assert not compiled._copies(twin).entries and "_cliplab_compiled" not in twin.state_dict()


@pytest.mark.parametrize("mode", [False, True])
def test_a_conv_net_encodes_channels_last_and_is_given_back_contiguous(mode):
    """Inside ``with Encoder(...)`` a conv net fed images runs NHWC (eager or compiled, the short last
    batch padded in the same layout) with the contiguous run's values; outside, nothing changes."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    x = torch.rand(10, 3, 16, 16)
    with torch.inference_mode():
        expected = net(x)
        with compiled.Encoder(net, len(x), mode, name="two-conv") as run:
            got = torch.cat([run(b) for b in x.split(4)])  # 4, 4, 2
            assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert net[0].weight.is_contiguous() and run.card()["channels_last"] is True
        assert run.card()["compiled"] is mode
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        plain = compiled.Encoder(net, len(x), False)  # not as a context manager: the layout is left alone
        plain(x)
        assert plain.card()["channels_last"] is False and net[0].weight.is_contiguous()
        layout.set_memory_format(net, True)  # already channels-last, as during a training run: it stays so
        with compiled.Encoder(net, len(x), False) as run:
            run(x)
        assert run.card()["channels_last"] and not net[0].weight.is_contiguous()


def test_encode_compile_setting_is_validated_and_shown():
    with pytest.raises(settings.ConfigError, match=r"encode\.compile.*'bogus'.*auto, true or false"):
        profiles.load("smoke", overrides={"encode.compile": "bogus"})
    P = profiles.load("smoke", overrides=["encode.compile=false"])
    assert P.config.encode.compile is False and compiled.default_mode() is False
    assert "encode.compile = false" in settings.describe(P.config)
    assert profiles.load("smoke").config.encode.compile == "auto" and compiled.default_mode() == "auto"


def test_inductor_cache_goes_under_the_lab_cache_unless_the_user_set_one(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setattr(compiled, "_ours", [None])
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing clip leaves there
    assert REAL_INDUCTOR_CACHE_DIR() == str(config.cache_dir() / "inductor")
    monkeypatch.setenv("CLIPLAB_CACHE", str(tmp_path / "other"))
    assert REAL_INDUCTOR_CACHE_DIR() == str(tmp_path / "other" / "inductor")  # follows the lab's cache
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert REAL_INDUCTOR_CACHE_DIR() == str(tmp_path / "mine")  # the user's choice is kept


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_compiled_fp16_agrees_with_eager_and_returns_host_float32(synthetic_root):
    loaded = models.load_model(SPEC, device="cuda")
    samples = data.load_image_folder(synthetic_root)["test"]
    kw = {"batch_size": 32, "progress": False, "use_cache": False}
    eager = features.image_features(loaded, samples, compile=False, **kw)
    fast = features.image_features(loaded, samples, compile=True, **kw)
    assert fast.compiled and fast.features.device.type == "cpu" and fast.features.dtype == torch.float32
    assert F.cosine_similarity(eager.features, fast.features, dim=-1).min() >= 0.999
    t = features.text_features(loaded, samples.classnames, use_cache=False, compile=True)
    assert t.device.type == "cpu" and torch.isfinite(t).all()
