"""Feature cache: hits give identical tensors; every input that changes the numbers changes the key;
damaged entries are reported and rebuilt, never used; batched encoding equals one image at a time."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import models
from helpers.data import load_image_folder, load_rgb, synthetic
from helpers.eval import features, zeroshot
from helpers.eval.features import StaleCacheWarning

SPEC = "scratch:tiny-vit@0"


@pytest.fixture(scope="module")
def tiny():
    return models.load_model(SPEC)


@pytest.fixture
def samples(synthetic_root):
    """The shared synthetic test split (8 classes x 12 images); read-only."""
    return load_image_folder(synthetic_root)["test"]


@pytest.fixture
def own_samples(tmp_path):
    """A small private copy of the synthetic data that a test may modify (8 classes x 3 test images)."""
    root = synthetic.make_synthetic(tmp_path / "syn", n_train=2, n_test=3)
    return load_image_folder(root, val_fraction=0)["test"]


def _encode(loaded, s, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("batch_size", 10)  # several batches, the last one partial
    return features.image_features(loaded, s, **kw)


# ------------------------------------------------------------------------------------ cache hits
def test_second_call_comes_from_disk_and_is_identical(tiny, samples):
    first = _encode(tiny, samples)
    assert not first.from_cache and first.path.is_file()
    assert first.path.parent == features.features_dir()
    assert first.features.shape == (len(samples), tiny.embed_dim) and first.features.dtype == torch.float32
    assert np.array_equal(first.labels, samples.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleCacheWarning)
        second = _encode(tiny, samples)
    assert second.from_cache and second.key == first.key and second.path == first.path
    assert torch.equal(second.features, first.features)
    assert np.array_equal(second.labels, first.labels)
    # a batch size is not part of the key (it does not change the numbers beyond rounding)
    assert _encode(tiny, samples, batch_size=7).from_cache


def test_use_cache_false_writes_nothing(tiny, samples):
    out = _encode(tiny, samples, use_cache=False)
    assert out.path is None and not out.from_cache
    assert not features.features_dir().exists() or not any(features.features_dir().glob("*.pt"))


# ------------------------------------------------------------------------------- cache misses
def test_touching_an_image_rebuilds(tiny, own_samples, monkeypatch):
    monkeypatch.setenv("CLIPLAB_AUTOCAST", "fp32")
    first = _encode(tiny, own_samples)
    victim = own_samples.paths[5]
    st = os.stat(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same bytes, new mtime
    touched = _encode(tiny, own_samples)  # the same Samples object: must notice the change
    assert not touched.from_cache and touched.key != first.key
    torch.testing.assert_close(touched.features, first.features, rtol=1e-5, atol=1e-5)

    with Image.open(victim) as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(90).save(victim)  # new content
    rewritten = _encode(tiny, own_samples)
    assert not rewritten.from_cache and rewritten.key not in (first.key, touched.key)
    changed = (rewritten.features - first.features).abs().amax(dim=1) > 1e-4
    assert changed.tolist() == [i == 5 for i in range(len(own_samples))]
    # a freshly loaded Samples object for the same files hits the new entry
    again = load_image_folder(own_samples.root, val_fraction=0)["test"]
    assert _encode(tiny, again).from_cache


def test_changing_the_transform_rebuilds(tiny, samples):
    bicubic = _encode(tiny, samples)
    bilinear = _encode(tiny, samples, interpolation="bilinear")
    assert not bilinear.from_cache and bilinear.key != bicubic.key and bilinear.path != bicubic.path
    assert not torch.allclose(bilinear.features, bicubic.features)
    # both entries live side by side
    assert _encode(tiny, samples).from_cache
    assert _encode(tiny, samples, interpolation="bilinear").from_cache


def test_changing_the_model_rebuilds(tiny, samples):
    a = _encode(tiny, samples)
    other = models.load_model("scratch:tiny-vit@1")
    b = _encode(other, samples)
    assert not b.from_cache and b.key != a.key
    assert not torch.allclose(a.features, b.features)
    # same spec string but other weights (e.g. a checkpoint file overwritten): weights_sha256 is in the key
    same_name = models.LoadedModel(tiny.spec, other.model, other.weights_sha256, "untrained")
    c = _encode(same_name, samples)
    assert not c.from_cache and c.key not in (a.key, b.key)
    assert torch.equal(c.features, b.features)


def test_changing_autocast_rebuilds(tiny, samples, monkeypatch):
    monkeypatch.setenv("CLIPLAB_AUTOCAST", "fp32")
    fp32 = _encode(tiny, samples)
    monkeypatch.setenv("CLIPLAB_AUTOCAST", "bf16")
    bf16 = _encode(tiny, samples)
    assert not bf16.from_cache and bf16.key != fp32.key
    assert not torch.equal(bf16.features, fp32.features)
    torch.testing.assert_close(bf16.features, fp32.features, rtol=0.05, atol=0.05)


# ------------------------------------------------------------------------------ damaged entries
def test_truncated_cache_file_is_reported_and_rebuilt(tiny, samples):
    good = _encode(tiny, samples)
    data = good.path.read_bytes()
    good.path.write_bytes(data[: len(data) // 2])
    with pytest.warns(StaleCacheWarning, match=r"unreadable.*rebuilding"):
        rebuilt = _encode(tiny, samples)
    assert not rebuilt.from_cache
    assert torch.equal(rebuilt.features, good.features)
    assert good.path.read_bytes() != data[: len(data) // 2]  # the entry on disk was replaced
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleCacheWarning)
        assert _encode(tiny, samples).from_cache


def test_tampered_tensor_fails_its_checksum_and_is_rebuilt(tiny, samples):
    good = _encode(tiny, samples)
    entry = torch.load(good.path, weights_only=True)
    entry["features"][3, 0] += 1.0  # same shape, dtype and meta; old checksum
    torch.save(entry, good.path)
    with pytest.warns(StaleCacheWarning, match="checksum mismatch"):
        rebuilt = _encode(tiny, samples)
    assert not rebuilt.from_cache
    assert torch.equal(rebuilt.features, good.features)


@pytest.mark.parametrize("damage, reason", [
    (lambda e: e["meta"].update(n=e["meta"]["n"] + 1), "written for other inputs"),
    (lambda e: e.update(features=e["features"][:-1]), "rows"),
    (lambda e: e.update(features=e["features"].half()), "malformed tensor"),
    (lambda e: e.update(features=[1.0, 2.0]), "malformed tensor"),
])
def test_other_damage_is_reported_and_rebuilt(tiny, samples, damage, reason):
    good = _encode(tiny, samples)
    entry = torch.load(good.path, weights_only=True)
    damage(entry)
    torch.save(entry, good.path)
    with pytest.warns(StaleCacheWarning, match=reason):
        rebuilt = _encode(tiny, samples)
    assert not rebuilt.from_cache and torch.equal(rebuilt.features, good.features)


# ---------------------------------------------------------------------------------------- text
def test_text_features_are_cached(tiny, monkeypatch):
    calls = []
    real = tiny.model.encode_text

    def counting(tokens):
        calls.append(tokens.shape[0])
        return real(tokens)

    monkeypatch.setattr(tiny.model, "encode_text", counting)
    texts = [f"a photo of {c}." for c in synthetic.CLASSNAMES.values()]
    a = features.text_features(tiny, texts, batch_size=3)
    assert a.shape == (len(texts), tiny.embed_dim) and a.dtype == torch.float32
    assert sum(calls) == len(texts)
    assert any(features.features_dir().glob("text-*.pt"))
    b = features.text_features(tiny, texts)
    assert sum(calls) == len(texts), "second call encoded again instead of reading the cache"
    assert torch.equal(a, b)
    # the same batch size as ``a``: a GEMM's rows can round differently in batches of other shapes (AVX2, fp32)
    c = features.text_features(tiny, texts[:-1] + ["something else"], batch_size=3)
    assert sum(calls) == 2 * len(texts)
    assert torch.equal(c[:-1], a[:-1]) and not torch.allclose(c[-1], a[-1])


def test_text_classifier_uses_cached_text_and_is_unit_norm(tiny):
    names = list(synthetic.CLASSNAMES.values())
    cls = zeroshot.text_classifier(tiny, names, "openai-eurosat")
    assert cls.shape == (len(names), tiny.embed_dim)
    torch.testing.assert_close(cls.norm(dim=-1), torch.ones(len(names)))
    again = zeroshot.text_classifier(tiny, names, "openai-eurosat")
    assert torch.equal(cls, again)


# --------------------------------------------------------------------------- batched == single
def _one_at_a_time(loaded, s, interpolation="bicubic"):
    transform, _ = loaded.transform(interpolation)
    with torch.inference_mode():
        return torch.cat([loaded.model.encode_image(transform(load_rgb(p))[None]) for p in s.paths])


@pytest.mark.parametrize("spec", [SPEC, "scratch:tiny-rn@0"])
def test_batched_equals_one_at_a_time_in_fp32(spec, samples, monkeypatch):
    monkeypatch.setenv("CLIPLAB_AUTOCAST", "fp32")
    loaded = models.load_model(spec)
    batched = _encode(loaded, samples, batch_size=16)
    assert batched.encoded_with["channels_last"] is spec.startswith("scratch:tiny-rn")  # the conv net ran NHWC
    assert loaded.model.visual.conv1.weight.is_contiguous()  # and its weights came back as they were
    single = _one_at_a_time(loaded, samples)
    torch.testing.assert_close(batched.features, single, rtol=1e-4, atol=1e-5)
    # and the classes a zero-shot head would pick agree
    cls = zeroshot.text_classifier(loaded, samples.classnames, "centered-satellite")
    assert torch.equal(zeroshot.logits(batched.features, cls).argmax(1), zeroshot.logits(single, cls).argmax(1))


def test_worker_processes_give_the_same_features(tiny, samples, monkeypatch):
    monkeypatch.setenv("CLIPLAB_AUTOCAST", "fp32")
    in_process = _encode(tiny, samples, workers=0, use_cache=False)
    with_workers = _encode(tiny, samples, workers=2, use_cache=False)
    assert torch.equal(with_workers.features, in_process.features)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_decoded_batches_equal_the_dataset_items(tiny, samples, threads):
    """Batches decoded into the reused buffers hold exactly what the dataset's items hold, for a
    subset too (rows keep their index in the samples), and a batch stays intact while the next is made;
    with more threads than rows in the short last batch too (each thread decodes a share of a batch)."""
    transform, _ = tiny.transform()
    dataset = samples.dataset(transform)
    rows = list(range(3, 3 + 2 * 5 + 2))  # two full batches of 5 and a short one
    batches = features._decode_in_threads(torch.utils.data.Subset(dataset, rows), 5, threads)
    with torch.inference_mode():  # as the encode loop asks for batches
        first = next(batches)
    kept = first[0].clone()
    second = next(batches)
    assert torch.equal(first[0], kept)  # the second batch went to the other buffer
    got = [(kept, *first[1:]), second, *batches]
    assert [len(b[0]) for b in got] == [5, 5, 2]
    assert torch.equal(torch.cat([b[2] for b in got]), torch.tensor(rows))
    assert torch.equal(torch.cat([b[1] for b in got]), torch.as_tensor(samples.labels[rows]))
    for b, start in zip(got, (0, 5, 10), strict=True):
        assert torch.equal(b[0], torch.stack([dataset[r][0] for r in rows[start:start + 5]]))


def test_normalising_into_a_wrong_buffer_is_refused(tiny, samples):
    from helpers.data.transforms import ToNormalizedTensor

    norm = ToNormalizedTensor((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    img = Image.new("RGB", (8, 6))
    assert torch.equal(norm(img, out=torch.empty(3, 6, 8)), norm(img))
    with pytest.raises(ValueError, match="shape"):
        norm(img, out=torch.empty(3, 8, 6))
