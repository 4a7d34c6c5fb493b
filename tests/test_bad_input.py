"""Bad input gives a clear error naming the culprit, before work starts; odd image modes become sane RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import data
from helpers.core import storage
from helpers.data import BadImageError, DatasetError, prompts
from helpers.eval import features
from helpers.results import records


def _good_jpeg(path: Path, rgb=(40, 120, 200), size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    arr = np.clip(np.asarray(rgb)[None, None] + rng.integers(-20, 21, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr, "RGB").save(path, format="JPEG", quality=95)
    return path


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    good = _good_jpeg(tmp_path / "good.jpg", size=64)
    blob = good.read_bytes()
    files = {
        "good": good,
        "truncated": tmp_path / "truncated.jpg",
        "garbage": tmp_path / "garbage.jpg",
        "empty": tmp_path / "empty.jpg",
        "header_only": tmp_path / "header_only.jpg",
    }
    files["truncated"].write_bytes(blob[: len(blob) // 2])
    files["garbage"].write_bytes(b"this is not a JPEG at all\n" * 20)
    files["empty"].write_bytes(b"")
    files["header_only"].write_bytes(blob[:40])
    return files


# ------------------------------------------------------------------------------------ corrupt files
@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "header_only"])
def test_corrupt_image_raises_bad_image_error_naming_the_file(bad_files, kind):
    with pytest.raises(BadImageError) as e:
        data.load_rgb(bad_files[kind])
    assert str(bad_files[kind]) in str(e.value)
    assert "Remove or replace" in str(e.value)


def test_missing_image_file_is_a_bad_image_error(tmp_path):
    with pytest.raises(BadImageError, match="missing") as e:
        data.load_rgb(tmp_path / "gone.jpg")
    assert str(tmp_path / "gone.jpg") in str(e.value)


def test_good_file_decodes(bad_files):
    img = data.load_rgb(bad_files["good"])
    assert img.mode == "RGB" and img.size == (64, 64)
    assert np.asarray(img).mean() > 20  # a decoded picture, not a blank


def test_find_bad_images_lists_every_bad_file_and_only_those(bad_files):
    paths = [bad_files[k] for k in ("good", "truncated", "garbage", "empty", "header_only")]
    bad = data.find_bad_images(paths)
    assert [p for p, _ in bad] == [str(bad_files[k]) for k in ("truncated", "garbage", "empty", "header_only")]
    reasons = dict(bad)
    assert "truncated" in reasons[str(bad_files["truncated"])]
    assert all(reason for reason in reasons.values())
    assert data.find_bad_images([bad_files["good"]]) == []


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_image_in_a_dataloader_stops_the_run_naming_the_file(bad_files, workers):
    paths = [bad_files["good"], bad_files["good"], bad_files["truncated"], bad_files["good"]]
    ds = data.ImageDataset(paths, [0, 0, 1, 0], transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers)
    seen = 0
    with pytest.raises(BadImageError) as e:
        for images, _, _ in loader:
            seen += len(images)
    assert str(bad_files["truncated"]) in str(e.value)
    assert seen == 2  # the first (good) batch went through, the bad one was not skipped


def test_bad_image_through_encode_dataset_caches_nothing(tmp_path, bad_files):
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        _good_jpeg(root / cls / "0.jpg")
    (root / "b" / "1.jpg").write_bytes(bad_files["truncated"].read_bytes())
    paths, labels, classes, _ = data.scan_class_folders(root)
    samples = data.Samples("ds", root, "class-folders", "all", paths, labels, classes, classes)
    calls = []

    def encode(x):
        calls.append(len(x))
        return x.flatten(1)[:, :4].float()

    with pytest.raises(BadImageError) as e:
        features.encode_dataset(encode, {"spec": "dummy"}, samples, lambda im: torch.zeros(3, 2, 2),
                                {"t": 0}, device=torch.device("cpu"), batch_size=1, workers=0, progress=False)
    assert str(root / "b" / "1.jpg") in str(e.value)
    assert not list(features.features_dir().glob("*.pt"))


# ------------------------------------------------------------------------------ decompression bombs
def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A real PNG file of a few dozen bytes whose header claims ``width`` x ``height`` pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_a_bad_image_error_naming_the_file(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)  # 10^10 pixels in 57 bytes
    with pytest.raises(BadImageError, match="too large to decode safely") as e:
        data.load_rgb(bomb)
    assert str(bomb) in str(e.value) and "MAX_IMAGE_PIXELS" in str(e.value)


def test_the_bad_image_scan_lists_a_decompression_bomb_instead_of_crashing(tmp_path, bad_files):
    bomb = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    bad = data.find_bad_images([bad_files["good"], bomb, bad_files["truncated"], tmp_path / "gone.jpg"])
    assert [p for p, _ in bad] == [str(bomb), str(bad_files["truncated"]), str(tmp_path / "gone.jpg")]
    assert "exceeds limit" in dict(bad)[str(bomb)]


def test_the_decompression_bomb_limit_is_pils_and_an_image_near_it_decodes_with_a_warning_naming_it(
        bad_files, monkeypatch):
    from PIL import Image as PILImage

    good = bad_files["good"]  # 64 x 64 = 4,096 pixels
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1_000)  # over twice the limit: refused
    with pytest.raises(BadImageError, match="too large") as e:
        data.load_rgb(good)
    assert str(good) in str(e.value)
    assert [p for p, _ in data.find_bad_images([good])] == [str(good)]
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 3_000)  # over the limit, under twice it: PIL warns
    with pytest.warns(PILImage.DecompressionBombWarning, match=str(good)):
        assert data.load_rgb(good).size == (64, 64)


# ------------------------------------------------------------------- files a folder scan does not read
def test_files_not_read_as_images_are_named_in_a_warning_and_in_every_split_card(tmp_path):
    """Broken symlinks, unknown extensions, hidden files and images beside the class folders are never
    dropped silently: a warning names the count and the first few, the card of every split lists them."""
    root = tmp_path / "ds"
    for cls in ("cat", "dog"):
        for i in range(5):
            _good_jpeg(root / cls / f"{i}.jpg", size=16 + i)
    _good_jpeg(root / "cat" / "5.jfif", size=40)  # JPEG by another name: read as an image
    _good_jpeg(root / "dog" / "5.JPE", size=41)
    (root / "cat" / "photo.heic").write_bytes(b"not decodable here")
    (root / "dog" / "scan.xyz").write_bytes(b"?")
    (root / "dog" / "moved.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "dog" / ".DS_Store").write_bytes(b"\0")
    _good_jpeg(root / "stray.jpg")  # beside the class folders: in no class

    with pytest.warns(data.SkippedFilesWarning) as caught:
        splits = data.load_image_folder(root, val_fraction=0, test_fraction=0.5)
    msg = str(caught[0].message)
    assert str(root) in msg and "5 file(s) not read as images" in msg
    for what in ("1 broken symlink", "(.heic)", "(.xyz)", "1 hidden", "1 beside the class folders",
                 "dog/moved.jpg", "cat/photo.heic", "stray.jpg"):
        assert what in msg, what
    assert sum(len(s) for s in splits.values()) == 12  # 5 + 5 .jpg, the .jfif and the .JPE
    assert any(p.name == "5.jfif" for s in splits.values() for p in s.paths)
    for s in splits.values():
        card = s.card()["split_protocol"]  # what every record of this split states
        assert card["skipped_files"] == 5
        assert card["skipped_why"] == {"broken symlink": 1, "not an image extension (.heic)": 1,
                                       "not an image extension (.xyz)": 1, "hidden (name starts with '.')": 1,
                                       "beside the class folders, in no class": 1}
        assert set(card["skipped_examples"]) == {"cat/photo.heic", "dog/.DS_Store", "dog/moved.jpg",
                                                 "dog/scan.xyz", "stray.jpg"}


def test_split_folders_list_each_splits_own_skipped_files_and_warn_once_per_folder(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(3):
                _good_jpeg(tmp_path / split / cls / f"{i}.jpg", size=16 + i)
    (tmp_path / "test" / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.warns(data.SkippedFilesWarning) as caught:
        splits = data.load_image_folder(tmp_path, val_fraction=0)
    assert [str(w.message).split(":")[0] for w in caught] == [str(tmp_path.resolve() / "test")]
    assert splits["test"].split_protocol["skipped_examples"] == ["b/gone.png"]
    assert "skipped_files" not in splits["train"].split_protocol


def test_a_class_folder_of_unknown_formats_says_what_it_holds(tmp_path):
    for i in range(3):
        _good_jpeg(tmp_path / "a" / f"{i}.jpg")
        (tmp_path / "b" / f"{i}.heic").parent.mkdir(exist_ok=True)
        (tmp_path / "b" / f"{i}.heic").write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"has no images .*3 not an image extension \(\.heic\)") as e:
        data.load_image_folder(tmp_path)
    assert str(tmp_path / "b") in str(e.value)


def test_one_rule_decides_what_is_an_image(tmp_path):
    from helpers.data import images

    (tmp_path / "x.JFIF").write_bytes(b"")
    (tmp_path / "x.txt").write_bytes(b"")
    (tmp_path / "link.png").symlink_to(tmp_path / "absent.png")
    assert images.skip_reason(tmp_path / "x.JFIF") is None and images.is_image_file(tmp_path / "x.JFIF")
    assert images.skip_reason(tmp_path / "x.txt") == "not an image extension (.txt)"
    assert images.skip_reason(tmp_path / "link.png") == "broken symlink"
    assert images.skip_reason(tmp_path / "x.JFIF", tmp_path.parent) is None
    assert images.skip_reason(tmp_path / "x.JFIF", tmp_path.parent.parent) is None
    assert "hidden" in images.skip_reason(tmp_path / ".x.png")
    assert images.skip_reason(tmp_path, tmp_path.parent) == "not a regular file"


def test_a_broken_symlink_in_a_split_csv_is_named(tmp_path):
    for split in ("train", "test"):
        rows = ["filename,classname"]
        for cls in ("a", "b"):
            _good_jpeg(tmp_path / "img" / f"{split}-{cls}.jpg")
            rows.append(f"img/{split}-{cls}.jpg,{cls}")
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "img" / "test-b.jpg").unlink()
    (tmp_path / "img" / "test-b.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    with pytest.raises(DatasetError, match=r"test.csv lists img/test-b.jpg, a broken symlink"):
        data.load_image_folder(tmp_path)


# --------------------------------------------------------------------------------------- odd modes
def _saved(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_grayscale_becomes_rgb(tmp_path):
    path = _saved(Image.new("L", (8, 8), 77), tmp_path / "gray.png")
    out = data.load_rgb(path)
    assert out.mode == "RGB" and out.size == (8, 8)
    assert np.all(np.asarray(out) == 77)


def test_grayscale_jpeg_becomes_rgb(tmp_path):
    path = _saved(Image.new("L", (8, 8), 200), tmp_path / "gray.jpg", quality=100)
    out = np.asarray(data.load_rgb(path)).astype(int)
    assert out.shape == (8, 8, 3)
    assert np.all(np.abs(out - 200) <= 2)


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    img.putpixel((0, 0), (255, 0, 0, 255))  # opaque red
    img.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black
    out = data.load_rgb(_saved(img, tmp_path / "rgba.png"))
    assert out.mode == "RGB"
    px = np.asarray(out).astype(int)
    assert px[0, 0].tolist() == [255, 0, 0]
    assert np.all(np.abs(px[0, 1] - 127) <= 1)
    assert px[3, 3].tolist() == [255, 255, 255]  # transparent -> white background, not red, not black


def test_la_is_composited_on_white(tmp_path):
    img = Image.new("LA", (4, 4), (0, 0))  # transparent black
    img.putpixel((0, 0), (0, 255))  # opaque black
    out = np.asarray(data.load_rgb(_saved(img, tmp_path / "la.png")))
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]


def _palette_image() -> Image.Image:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 1)
    return img


def test_palette_without_transparency(tmp_path):
    path = _saved(_palette_image(), tmp_path / "p.png")
    assert Image.open(path).mode == "P"
    out = np.asarray(data.load_rgb(path))
    assert out[0, 0].tolist() == [0, 255, 0]
    assert out[1, 1].tolist() == [255, 0, 0]


@pytest.mark.parametrize("fmt", ["png", "gif"])
def test_palette_with_transparency_is_composited_on_white(tmp_path, fmt):
    path = _saved(_palette_image(), tmp_path / f"pt.{fmt}", transparency=0)
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    out = data.load_rgb(path)
    assert out.mode == "RGB"
    px = np.asarray(out)
    assert px[0, 0].tolist() == [0, 255, 0]
    assert px[1, 1].tolist() == [255, 255, 255]  # palette entry 0 is transparent


def test_16_bit_grayscale_is_rescaled(tmp_path):
    arr = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
    path = _saved(Image.fromarray(arr), tmp_path / "i16.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # 16-bit on disk
    out = data.load_rgb(path)
    assert out.mode == "RGB"
    px = np.asarray(out)[0, :, 0].astype(int).tolist()
    assert px == [0, 128, 255, 1]  # 65535 -> 255, not clipped garbage
    # also straight from memory (mode I;16)
    assert np.asarray(data.to_rgb(Image.fromarray(arr)))[0, 2].tolist() == [255, 255, 255]


def test_float_image_is_stretched(tmp_path):
    img = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    px = np.asarray(data.to_rgb(img))[0, :, 0].tolist()
    assert px == [0, 128, 255]


@pytest.mark.parametrize("cmyk, rgb", [((0, 0, 0, 0), (255, 255, 255)), ((0, 255, 255, 0), (255, 0, 0))])
def test_cmyk_jpeg_becomes_rgb(tmp_path, cmyk, rgb):
    path = _saved(Image.new("CMYK", (8, 8), cmyk), tmp_path / "cmyk.jpg", quality=100)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    out = data.load_rgb(path)
    assert out.mode == "RGB"
    assert np.all(np.abs(np.asarray(out).astype(int) - np.array(rgb)) <= 3)


def test_odd_modes_go_through_the_transform_pipeline(tmp_path):
    from helpers.data.transforms import clip_transform

    transform, _ = clip_transform(32)
    files = [
        _saved(Image.new("L", (40, 40), 10), tmp_path / "l.png"),
        _saved(Image.new("RGBA", (40, 40), (1, 2, 3, 4)), tmp_path / "rgba.png"),
        _saved(Image.fromarray(np.full((40, 40), 1000, np.uint16)), tmp_path / "i16.png"),
        _saved(Image.new("CMYK", (40, 40), (9, 9, 9, 9)), tmp_path / "cmyk.jpg"),
    ]
    ds = data.ImageDataset(files, [0, 1, 2, 3], transform)
    batch = torch.stack([ds[i][0] for i in range(len(ds))])
    assert batch.shape == (4, 3, 32, 32) and torch.isfinite(batch).all()


# ----------------------------------------------------------------------------------- empty folders
def test_empty_class_folder_names_the_folder(tmp_path):
    for i in range(5):
        _good_jpeg(tmp_path / "full" / f"{i}.jpg")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError) as e:
        data.load_image_folder(tmp_path)
    assert str(tmp_path / "empty") in str(e.value)
    assert "no images" in str(e.value)


def test_empty_class_folder_in_test_split_names_it(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _good_jpeg(tmp_path / split / cls / "0.jpg")
    for f in (tmp_path / "test" / "b").iterdir():
        f.unlink()
    with pytest.raises(DatasetError) as e:
        data.load_image_folder(tmp_path)
    assert str(tmp_path.resolve() / "test" / "b") in str(e.value)


def test_folder_that_is_not_there(tmp_path):
    with pytest.raises(DatasetError, match="not found") as e:
        data.load_image_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


# --------------------------------------------------------------------------------- names & prompts
def test_prompt_class_name_the_dataset_lacks(tmp_path):
    for cls in ("Forest", "River"):
        for i in range(10):
            _good_jpeg(tmp_path / cls / f"{i}.jpg")
    with pytest.raises(DatasetError) as e:
        data.load_image_folder(tmp_path, classnames={"Forest": "woods", "Lake": "a lake"})
    assert "'Lake'" in str(e.value) and "Forest" in str(e.value)
    s = data.load_image_folder(tmp_path)["test"]
    assert s.classnames == ["forest", "river"]
    with pytest.raises(DatasetError, match="Lake"):
        s.with_classnames({"Lake": "a lake"})


def test_unknown_template_set_lists_the_known_ones():
    with pytest.raises(KeyError) as e:
        prompts.templates("openai-eurosatt")
    assert "openai-eurosatt" in str(e.value) and "openai-eurosat" in str(e.value)


@pytest.mark.parametrize("bad", [["a photo of a thing."], ["a {} and a {}."], ["a photo of {0}."], [],
                                 "a photo of {} and {}"])
def test_bad_templates_raise(bad):
    with pytest.raises(ValueError):
        prompts.templates(bad)


def test_good_templates_pass():
    assert prompts.templates("openai-eurosat") == prompts.OPENAI_EUROSAT
    assert prompts.templates("a photo of {}.") == ["a photo of {}."]
    assert prompts.templates(("x {}", "y {}")) == ["x {}", "y {}"]
    assert prompts.format_prompts(["a", "b"], ["x {}", "y {}"]) == ["x a", "y a", "x b", "y b"]


# ------------------------------------------------------------------------------ unwritable folders
@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder that cannot be created even by root: its parent is a regular file."""
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    return blocker / "cache"


def test_unwritable_feature_cache_fails_before_computing(unwritable, monkeypatch):
    monkeypatch.setenv("CLIPLAB_CACHE", str(unwritable))
    calls = []

    def compute():
        calls.append(1)
        return torch.ones(2, 3), np.arange(2)

    with pytest.raises(storage.NotWritableError) as e:
        features.cached({"n": 2, "kind": "test"}, compute, "x")
    msg = str(e.value)
    assert str(unwritable) in msg and "CLIPLAB_CACHE" in msg
    assert calls == []  # raised before any work
    # without the cache nothing is written, so the run goes through
    out = features.cached({"n": 2, "kind": "test"}, compute, "x", use_cache=False)
    assert calls == [1] and out.path is None and not out.from_cache


def test_unwritable_results_folder(unwritable, monkeypatch):
    rec = {"experiment": "e", "metrics": {"top1": 0.5}}
    with pytest.raises(storage.NotWritableError) as e:
        records.append_record(rec, folder=unwritable / "results")
    assert str(unwritable / "results") in str(e.value) and "CLIPLAB_OUT" in str(e.value)
    monkeypatch.setenv("CLIPLAB_OUT", str(unwritable))
    with pytest.raises(storage.NotWritableError) as e:
        records.append_record(rec)
    assert str(unwritable) in str(e.value) and "CLIPLAB_OUT" in str(e.value)


def test_folder_path_that_is_a_file(tmp_path):
    f = tmp_path / "results"
    f.write_text("oops")
    with pytest.raises(storage.NotWritableError, match="results"):
        storage.ensure_writable_dir(f, "results", "CLIPLAB_OUT")
    assert f.read_text() == "oops"


def test_writable_folder_is_created_and_left_clean(tmp_path):
    d = storage.ensure_writable_dir(tmp_path / "a" / "b", "x")
    assert d.is_dir() and list(d.iterdir()) == []


def test_unwritable_folder_with_read_only_permissions(tmp_path, monkeypatch):
    """Root ignores chmod, so the failure is simulated at the probe write."""
    target = tmp_path / "ro"
    target.mkdir()

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(storage.tempfile, "NamedTemporaryFile", deny)
    with pytest.raises(storage.NotWritableError, match="Permission denied") as e:
        storage.ensure_writable_dir(target, "feature cache", "CLIPLAB_CACHE")
    assert str(target) in str(e.value) and "CLIPLAB_CACHE" in str(e.value)


def test_garbage_image_bytes_from_memory_is_not_swallowed():
    with pytest.raises(BadImageError):
        data.load_rgb(io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * 30))


def test_atomic_writes_respect_the_umask(tmp_path):
    import os

    from helpers.core import storage

    old = os.umask(0o022)
    try:
        path = storage.atomic_write_text(tmp_path / "record.jsonl", "x\n")
        assert (path.stat().st_mode & 0o777) == 0o644  # readable by collaborators, as the umask allows
        os.umask(0o077)
        assert (storage.atomic_write_text(tmp_path / "private.txt", "x").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def test_a_full_disk_names_the_file_and_the_space_needed_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    import errno
    import os

    from helpers.core import storage

    storage.atomic_write_text(tmp_path / "kept.txt", "old")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"no space left to write .*kept.txt \(3 bytes needed, [\d,]+ free"):
        storage.atomic_write_text(tmp_path / "kept.txt", "new")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (tmp_path / "kept.txt").read_text() == "old"  # the earlier version is intact
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]  # no temporary file left behind
