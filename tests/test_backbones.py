"""torchvision ImageNet baselines: specs, random-weight builds, offline behaviour for ImageNet weights,
loading a weights file through torchvision's own code path, and the training transforms."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from helpers import models
from helpers.core import config
from helpers.data import augment, transforms
from helpers.models import ModelSpecError, WeightsNotFoundError, backbones, clip_models

RESNET18_FILE = "resnet18-f37072fd.pth"


@pytest.fixture(autouse=True)
def keep_torch_hub_dir():
    """load_backbone points torch.hub at the (per-test) cache; put the process-wide setting back."""
    before = torch.hub.get_dir()
    yield
    torch.hub.set_dir(before)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (see conftest.one_thread)."""


def checkpoints_dir():
    return backbones.hub_dir() / "checkpoints"


# ------------------------------------------------------------------------------------------ specs
@pytest.mark.parametrize("spec, expected", [
    ("torchvision:resnet18", ("resnet18", None)),
    ("torchvision:resnet50@DEFAULT", ("resnet50", "DEFAULT")),
    ("torchvision:efficientnet_b0@IMAGENET1K_V1", ("efficientnet_b0", "IMAGENET1K_V1")),
    ("torchvision:resnet50@IMAGENET1K_V2", ("resnet50", "IMAGENET1K_V2")),
])
def test_parse_good_specs(spec, expected):
    assert backbones.parse(spec) == expected


@pytest.mark.parametrize("spec", [
    "resnet18", "torchvision:", "torchvision:vgg16", "timm:resnet9000", "openai:resnet18", "torchvision:ResNet18",
    "torchvision:resnet18@IMAGENET1K_V2", "torchvision:resnet18@default", "torchvision:resnet18@name",
    "torchvision:resnet18@verify",  # a method of the weights enum, not a weights name
])
def test_bad_specs_raise_model_spec_error(spec):
    with pytest.raises(ModelSpecError):
        backbones.parse(spec)
    with pytest.raises(ModelSpecError):
        backbones.load_backbone(spec)


def test_weights_file_and_download_url():
    assert backbones.weights_file("torchvision:resnet18") is None
    path = backbones.weights_file("torchvision:resnet18@DEFAULT")
    assert path == checkpoints_dir() / RESNET18_FILE
    assert str(path).startswith(str(config.cache_dir()))
    assert backbones.weights_file("torchvision:resnet50@DEFAULT").name == "resnet50-11ad3fa6.pth"  # V2
    assert backbones.weights_file("torchvision:resnet50@IMAGENET1K_V1").name == "resnet50-0676ba61.pth"
    assert models.download_url("torchvision:resnet18@DEFAULT") == f"https://download.pytorch.org/models/{RESNET18_FILE}"
    assert models.download_url("torchvision:resnet18") is None
    assert models.missing_weights("torchvision:resnet18") is None


# ---------------------------------------------------------------------------------- random builds
@pytest.mark.parametrize("arch, dim", [("resnet18", 512), ("resnet50", 2048), ("efficientnet_b0", 1280)])
def test_random_weights_build_with_penultimate_features(arch, dim):
    bb = backbones.load_backbone(f"torchvision:{arch}", seed=0, device=torch.device("cpu"))
    assert bb.feature_dim == dim and bb.status == "untrained" and not bb.trained
    assert not bb.model.training
    assert {p.dtype for p in bb.model.parameters()} == {torch.float32}
    with torch.no_grad():
        out = bb.model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, dim)
    card = bb.card()
    assert card["feature_dim"] == dim and card["status"] == "untrained"
    assert card["n_params"] == sum(p.numel() for p in bb.model.parameters())
    assert card["weights_sha256"] == bb.weights_sha256
    if arch == "resnet18":  # the shape of the classifier with a fresh head
        net = bb.classifier(7)
        with torch.no_grad():
            assert net.eval()(torch.randn(3, 3, 32, 32)).shape == (3, 7)
        assert net[0] is bb.model  # shares the backbone's parameters


def test_random_weights_depend_only_on_the_seed():
    a = backbones.load_backbone("torchvision:resnet18", seed=0, device=torch.device("cpu"))
    torch.manual_seed(123)  # the global RNG state must not matter
    b = backbones.load_backbone("torchvision:resnet18", seed=0, device=torch.device("cpu"))
    c = backbones.load_backbone("torchvision:resnet18", seed=1, device=torch.device("cpu"))
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert torch.equal(a.model.conv1.weight, b.model.conv1.weight)
    assert not torch.equal(a.model.conv1.weight, c.model.conv1.weight)


def test_load_backbone_does_not_touch_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    backbones.load_backbone("torchvision:resnet18", seed=9, device=torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------------ ImageNet weights
def test_default_weights_offline_and_absent_name_file_and_folder(no_network):
    folder = checkpoints_dir()
    with pytest.raises(WeightsNotFoundError) as info:
        backbones.load_backbone("torchvision:resnet18@DEFAULT")
    msg = str(info.value)
    assert RESNET18_FILE in msg and str(folder) in msg and "torchvision:resnet18@DEFAULT" in msg
    assert no_network == [f"https://download.pytorch.org/models/{RESNET18_FILE}"]
    assert not (folder / RESNET18_FILE).exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]  # no half download left
    hint = models.missing_weights("torchvision:resnet18@DEFAULT")
    assert hint and RESNET18_FILE in hint and str(folder) in hint
    assert models.download_url("torchvision:resnet18@DEFAULT") in hint
    assert isinstance(info.value, FileNotFoundError)


def test_weights_file_loads_through_torchvision(no_network):
    """A state dict in torchvision's format at the path torchvision expects is what gets loaded."""
    spec = "torchvision:resnet18@DEFAULT"
    path = backbones.weights_file(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(42)
    saved = torchvision.models.resnet18().state_dict()
    torch.save(saved, path)
    assert models.missing_weights(spec) is None

    bb = backbones.load_backbone(spec, device=torch.device("cpu"))
    assert no_network == []  # read from the cache, nothing downloaded
    assert bb.status == "pretrained" and bb.trained and bb.feature_dim == 512
    assert bb.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = bb.model.state_dict()
    assert set(loaded) == {k for k in saved if not k.startswith("fc.")}
    for k, v in loaded.items():
        assert torch.equal(v, saved[k]), k
    # a different seed does not change pretrained weights; the classifier head is new
    other = backbones.load_backbone(spec, seed=3, device=torch.device("cpu"))
    assert torch.equal(other.model.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])
    assert bb.classifier(10)[1].weight.shape == (10, 512)
    torch.rand(7)  # the head's initial weights follow its seed, not torch's global generator
    assert torch.equal(bb.classifier(10)[1].weight, bb.classifier(10, seed=0)[1].weight)
    assert not torch.equal(bb.classifier(10)[1].weight, bb.classifier(10, seed=1)[1].weight)
    # a stand-in (random weights in the released file, scripts/paper_standins.py) says so beside the file
    clip_models.write_provenance(path, {"untrained": True})
    assert backbones.load_backbone(spec, device=torch.device("cpu")).status == "untrained"


def test_wrong_architecture_in_the_weights_file_is_a_spec_error(no_network):
    spec = "torchvision:resnet18@DEFAULT"
    path = backbones.weights_file(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(ModelSpecError, match=RESNET18_FILE):
        backbones.load_backbone(spec)
    assert no_network == []


@pytest.mark.parametrize("content", [b"", b"<html>proxy error</html>", b"PK\x03\x04" + b"\0" * 64])
def test_corrupt_weights_file_is_a_spec_error_naming_it(no_network, content):
    spec = "torchvision:resnet18@DEFAULT"
    path = backbones.weights_file(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with pytest.raises(ModelSpecError, match=RESNET18_FILE):
        backbones.load_backbone(spec)


# ------------------------------------------------------------------------------------ transforms
def _image(size: int = 64) -> Image.Image:
    arr = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


@pytest.mark.parametrize("aerial", [True, False])
def test_train_transform_output_shape_and_card(aerial):
    tf, card = transforms.image_transform(32, train=True, aerial=aerial, color_jitter=0.2)
    assert isinstance(tf, augment.TrainTransform) and tf.augment.aerial == aerial
    torch.manual_seed(0)
    out = tf(_image(64))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert "augment" in card and ("90" in card["augment"]) == aerial and "jitter 0.2" in card["augment"]
    eval_tf, eval_card = transforms.image_transform(32)
    assert eval_tf(_image(48)).shape == (3, 32, 32) and "augment" not in eval_card
    # augmentation is random: two draws differ, the same seed repeats
    torch.manual_seed(1)
    a = tf(_image(64))
    torch.manual_seed(1)
    assert torch.equal(tf(_image(64)), a)
    assert not torch.equal(tf(_image(64)), a)
    with pytest.raises(ValueError, match="lanczos"):
        transforms.image_transform(32, interpolation="lanczos", train=True)


def test_batch_augment_rotations_are_exact_multiples_of_90():
    """With the crop fixed to the whole image and no flips, each output is the input rotated by some
    k * 90 degrees, exactly (nearest sampling on pixel centres), every k occurs, and draws follow the
    generator."""
    aug = augment.BatchAugment((0, 0, 0), (1 / 255,) * 3, "nearest", aerial=True, scale=(1, 1), ratio=(1, 1),
                               flips=False)
    x = torch.arange(16 * 3 * 5 * 5).reshape(16, 3, 5, 5).remainder(251).to(torch.uint8)
    out = aug(x, torch.Generator().manual_seed(0))
    turns = []
    for xi, oi in zip(x.float(), out, strict=True):
        k = [k for k in range(4) if torch.equal(oi, torch.rot90(xi, k, dims=(-2, -1)))]
        assert len(k) == 1, "not an exact rotation"
        turns += k
    assert sorted(set(turns)) == [0, 1, 2, 3]
    assert torch.equal(aug(x, torch.Generator().manual_seed(0)), out)
    assert not torch.equal(aug(x, torch.Generator().manual_seed(1)), out)
    with pytest.raises(ValueError, match="uint8"):
        aug(x.float())


def test_batch_augment_flips_only_horizontally_for_non_aerial_images():
    aug = augment.BatchAugment((0, 0, 0), (1 / 255,) * 3, "nearest", aerial=False, scale=(1, 1), ratio=(1, 1))
    x = torch.arange(16 * 3 * 5 * 5).reshape(16, 3, 5, 5).remainder(251).to(torch.uint8)
    out, xf = aug(x, torch.Generator().manual_seed(0)), x.float()
    kept = [torch.equal(o, xi) for o, xi in zip(out, xf, strict=True)]
    mirrored = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, xf, strict=True)]
    assert all(k != m for k, m in zip(kept, mirrored, strict=True)) and any(kept) and any(mirrored)
    assert "h flips" in aug.description() and "90" not in aug.description()


def test_batch_augment_identity_reproduces_the_normalised_image():
    """Whole-image crop, no flips or rotations: a bicubic resample at the pixel centres returns the
    pixels, so the output is (x / 255 - mean) / std, as the evaluation transform gives."""
    mean, std = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD
    aug = augment.BatchAugment(mean, std, "bicubic", aerial=False, scale=(1, 1), ratio=(1, 1), flips=False)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(aug(x), expected, atol=1e-4, rtol=0)


def test_augmented_batches_repeat_per_epoch_and_differ_between_epochs():
    """The draws are seeded by (seed, epoch): an epoch re-run (a resumed run) sees the same batches."""
    from helpers.train import loop

    data = torch.utils.data.TensorDataset(torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8),
                                          torch.arange(12), torch.arange(12))
    aug = augment.BatchAugment((0.5,) * 3, (0.25,) * 3, "bilinear")
    batches = augment.AugmentedBatches(loop.train_loader(data, 4, seed=3, workers=0), aug, seed=3)

    def epoch(e):
        batches.sampler.set_epoch(e)
        return [(x, y) for x, y, _ in batches]

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert len(first) == len(batches) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))


def test_materialise_keeps_items_in_memory_only_when_they_fit(monkeypatch):
    from helpers.data import in_memory

    data = torch.utils.data.TensorDataset(torch.rand(10, 3, 4, 4), torch.arange(10) % 3, torch.arange(10) + 100)
    kept = in_memory.materialise(data, batch_size=3, progress=False)
    assert kept._tensors is None  # decoded on first use, not when a (maybe finished) run is set up
    assert isinstance(kept, torch.utils.data.TensorDataset) and kept is not data
    for a, b in zip(kept.tensors, data.tensors, strict=True):
        assert torch.equal(a, b)
    monkeypatch.setattr(in_memory, "available_bytes", lambda: 4 * data.tensors[0].nbytes - 1)
    assert in_memory.materialise(data, progress=False) is data  # over a quarter of what is available


def test_unknown_interpolation_is_rejected():
    with pytest.raises(ValueError, match="interpolation"):
        transforms.image_transform(32, interpolation="cubic")
