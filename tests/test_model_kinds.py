"""open_clip:, hf: and timm: models through the lab equal their own library's calls. No network:
the artefacts are made here in each library's real format (an open_clip state dict, a transformers
``save_pretrained`` folder with a tokenizer built from the BPE vocabulary openai-clip ships, a timm
state dict) and read back through the lab's specs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import models
from helpers.core.errors import ModelSpecError, WeightsNotFoundError
from helpers.data import load_image_folder, load_rgb, synthetic
from helpers.eval import features, zeroshot

TEMPLATES = ["a photo of a {}.", "a satellite photo of {}."]


@pytest.fixture(autouse=True)
def _exact(monkeypatch, one_thread):
    """fp32 on both sides: equivalence is checked exactly, not through bf16 rounding."""
    monkeypatch.setenv("CLIPLAB_AUTOCAST", "fp32")
    monkeypatch.setenv("CLIPLAB_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real EuroSAT test images when CLIPLAB_DATA has them (48, every class), else the synthetic set."""
    import os

    root = Path(os.environ.get("CLIPLAB_DATA", "/nonexistent")).expanduser() / "eurosat_rgb"
    if (root / "test").is_dir():
        test = load_image_folder(root)["test"]
    else:
        test = synthetic.load_synthetic()["test"]
    idx = np.concatenate([np.flatnonzero(test.labels == c)[:5] for c in range(test.num_classes)])
    return test.subset(idx)


def _reference_zero_shot(image_emb, text_emb, n_classes):
    img, txt = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
    cls = F.normalize(txt.view(n_classes, len(TEMPLATES), -1).mean(1), dim=-1)
    return (img @ cls.T).argmax(1)


def _lab_zero_shot(loaded, samples):
    feats = features.image_features(loaded, samples, use_cache=False)
    out = zeroshot.evaluate(loaded, feats.features, feats.labels, samples.classnames, TEMPLATES)
    return feats.features, torch.as_tensor(out["logits"]).argmax(1)


def _prompts(samples):
    return [t.format(c) for c in samples.classnames for t in TEMPLATES]


# ----------------------------------------------------------------------------------- open_clip
@pytest.fixture(scope="module")
def open_clip_checkpoint(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip")
    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    (folder / "lab-tiny-vit.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / "lab-tiny-vit.json")
    torch.manual_seed(0)
    model = open_clip.create_model("lab-tiny-vit", pretrained=None)
    torch.save(model.state_dict(), folder / "remoteclip-like.pt")
    return folder / "remoteclip-like.pt"


def test_open_clip_checkpoint_equals_open_clip_itself(open_clip_checkpoint, images):
    import open_clip

    loaded = models.load_model(f"open_clip:lab-tiny-vit:{open_clip_checkpoint}")
    assert loaded.status == "checkpoint" and loaded.card()["preprocess"]["size"] == 32
    model, _, preprocess = open_clip.create_model_and_transforms("lab-tiny-vit", pretrained=str(open_clip_checkpoint))
    tokenizer = open_clip.get_tokenizer("lab-tiny-vit")
    model.eval()
    with torch.no_grad():
        ref_img = model.encode_image(torch.stack([preprocess(load_rgb(p)) for p in images.paths]))
        ref_txt = model.encode_text(tokenizer(_prompts(images)))
    lab_img, lab_pred = _lab_zero_shot(loaded, images)
    assert F.cosine_similarity(lab_img.float(), ref_img.float()).min() > 0.9999
    assert torch.equal(lab_pred, _reference_zero_shot(ref_img, ref_txt, images.num_classes))
    assert loaded.tokenize(["x"]).shape[-1] == 32  # the model's own tokenizer and context length


def test_open_clip_spec_errors_name_what_to_do(tmp_path, monkeypatch):
    import open_clip.pretrained

    def offline(*args, **kwargs):  # what the hub client raises without network, at once instead of after retries
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", offline)
    with pytest.raises(ModelSpecError, match="not an open_clip model config"):
        models.parse("open_clip:ViT-B-99:laion2b")
    with pytest.raises(ModelSpecError, match=r"no pretrained tag 'nope'; tags: .*laion2b_s34b_b79k"):
        models.parse("open_clip:ViT-B-32:nope")
    why = models.missing_weights("open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert "huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in why and "open_clip:<model>:<path" in why
    assert "does not exist" in models.missing_weights(f"open_clip:ViT-B-32:{tmp_path / 'RemoteCLIP.pt'}")
    with pytest.raises(WeightsNotFoundError, match="open_clip:<model>:<path"):
        models.load_model("open_clip:ViT-B-32:laion2b_s34b_b79k")


# ------------------------------------------------------------------------------ Hugging Face
def _clip_bpe_tokenizer(folder: Path):
    """A CLIPTokenizer built offline from the BPE vocabulary that openai-clip ships."""
    from clip.simple_tokenizer import SimpleTokenizer, default_bpe
    from transformers import CLIPTokenizer

    vocab = SimpleTokenizer().encoder
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("hf") / "clip-rsicd-like"
    folder.mkdir()
    cfg = CLIPConfig(text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                  "num_attention_heads": 2, "max_position_embeddings": 77},
                     vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=48)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    _clip_bpe_tokenizer(folder).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_hf_save_pretrained_folder_equals_transformers_itself(hf_folder, images):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    loaded = models.load_model(f"hf:{hf_folder}")
    assert loaded.embed_dim == 48 and loaded.context_length == 77 and loaded.resolution == 32
    model = CLIPModel.from_pretrained(hf_folder).eval()
    proc, tok = AutoImageProcessor.from_pretrained(hf_folder), AutoTokenizer.from_pretrained(hf_folder)
    with torch.no_grad():
        pixels = proc(images=[load_rgb(p) for p in images.paths], return_tensors="pt")["pixel_values"]
        ref_img = model.get_image_features(pixel_values=pixels)
        ref_img = ref_img if torch.is_tensor(ref_img) else ref_img.pooler_output
        enc = tok(_prompts(images), padding=True, return_tensors="pt")
        ref_txt = model.get_text_features(**enc)
        ref_txt = ref_txt if torch.is_tensor(ref_txt) else ref_txt.pooler_output
    lab_img, lab_pred = _lab_zero_shot(loaded, images)
    assert F.cosine_similarity(lab_img.float(), ref_img.float()).min() > 0.999
    assert torch.equal(lab_pred, _reference_zero_shot(ref_img, ref_txt, images.num_classes))
    lab_txt = features.text_features(loaded, _prompts(images), use_cache=False)
    assert torch.allclose(lab_txt, ref_txt, atol=1e-4)  # padding to max length changes nothing


def test_hf_errors_name_what_to_place_where(tmp_path):
    with pytest.raises(ModelSpecError, match="hf:<org>/<repo>"):
        models.parse("hf:not-a-repo")
    assert "save_pretrained" in models.missing_weights("hf:openai/clip-vit-base-patch32")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="no config.json"):
        models.load_model(f"hf:{tmp_path / 'empty'}")


# ------------------------------------------------------------------------------------- timm
def test_timm_backbone_from_a_weights_file_equals_timm_itself(tmp_path):
    import timm

    from helpers.models import backbones

    torch.manual_seed(0)
    ref = timm.create_model("resnet10t", pretrained=False).eval()
    torch.save(ref.state_dict(), tmp_path / "resnet10t.pth")
    bb = backbones.load_backbone(f"timm:resnet10t@{tmp_path / 'resnet10t.pth'}", device="cpu")
    assert bb.status == "checkpoint" and bb.feature_dim == ref.num_features
    assert bb.mean == tuple(ref.pretrained_cfg["mean"])  # the model's own normalisation
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(bb.model(x), ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-5)
    random = backbones.load_backbone("timm:resnet10t", device="cpu")
    assert random.status == "untrained"
    assert "@<path of the weights file>" in models.missing_weights("timm:convnext_tiny@pretrained")
    with pytest.raises(ModelSpecError, match="not a timm model"):
        models.parse("timm:resnet9000")


def test_new_kinds_in_a_profile_and_backbones_refused_for_clip_fine_tuning():
    from helpers import profiles
    from helpers.core.errors import ConfigError

    P = profiles.load("smoke", {"models": ["open_clip:ViT-B-32:laion2b_s34b_b79k", "hf:openai/clip-vit-base-patch32"],
                                "baselines.backbones": ["timm:convnext_tiny@pretrained"], "baselines.finetune": []})
    problems = "\n".join(P.preflight())
    assert "laion2b_s34b_b79k" in problems or "huggingface.co" in problems
    with pytest.raises(ConfigError, match="fine-tuning takes a CLIP model of kind hf:, open_clip:"):
        profiles.load("smoke", {"clip_finetune.model": "timm:resnet10t"})
    P = profiles.load("smoke", {"clip_finetune.model": "hf:openai/clip-vit-base-patch32"})
    assert any("clip-vit-base-patch32" in p for p in P.preflight())  # missing weights named before any work


# ----------------------------------------------------------------------- fine-tuning (notebook 06)
@pytest.fixture(scope="module")
def open_clip_folder(open_clip_checkpoint):
    """The same tiny model in the hub layout open_clip publishes (open_clip_config.json + safetensors),
    written with open_clip's own config writer: readable without registering the architecture."""
    import open_clip
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    folder = open_clip_checkpoint.parent / "tiny-hub-layout"
    folder.mkdir()
    model = open_clip.create_model("lab-tiny-vit", pretrained=str(open_clip_checkpoint))
    save_config_for_hf(model, folder / "open_clip_config.json", open_clip.get_model_config("lab-tiny-vit"))
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


def _library_features(kind: str, spec: str, images):
    """Image features of a saved model read back by its own library (not through the lab)."""
    if kind == "open_clip":
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{spec.split('local-dir:')[1]}")
        with torch.no_grad():
            return model.eval().encode_image(torch.stack([preprocess(load_rgb(p)) for p in images.paths]))
    from transformers import AutoImageProcessor, CLIPModel

    folder = spec[len("hf:"):]
    model, proc = CLIPModel.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        out = model.get_image_features(pixel_values=proc(images=[load_rgb(p) for p in images.paths],
                                                         return_tensors="pt")["pixel_values"])
    return out if torch.is_tensor(out) else out.pooler_output


@pytest.mark.parametrize("kind", ["open_clip", "hf"])
def test_fine_tuning_saves_in_the_library_format_and_reads_back_through_the_spec(kind, open_clip_folder, hf_folder,
                                                                                 images):
    """One epoch of CS (prompt matching, text tower trains) and ML (linear head, text frozen) on the smoke
    data; each checkpoint is a folder its own library loads; zero-shot and WiSE-FT run on it; notebook 07's
    ``06:CS:<spec>`` finds it again."""
    from helpers import profiles
    from helpers.core import storage
    from helpers.experiments import clip_finetune

    start = f"open_clip:local-dir:{open_clip_folder}" if kind == "open_clip" else f"hf:{hf_folder}"
    P = profiles.load("smoke", {"clip_finetune.model": start, "clip_finetune.objectives": ["CS", "ML"],
                                "clip_finetune.train.epochs": 1, "clip_finetune.wise_ft.alphas": [0, 1],
                                "clip_finetune.templates": TEMPLATES})
    splits = P.dataset()
    out = clip_finetune.run(P, splits, progress=False)
    initial = models.load_model(start)
    for objective, run in out.extra["runs"].items():
        saved = run.loaded
        assert saved.spec.startswith(f"{kind}:") and saved.status == "trained" and saved.meta["objective"] == objective
        assert storage.sha256_state_dict(saved.model.state_dict()) == run.trained_sha256  # fp32, exact
        assert saved.weights_sha256 != initial.weights_sha256  # it trained
        assert saved.tokenize(["x"]).shape == initial.tokenize(["x"]).shape  # the start model's own tokenizer
        ours = features.image_features(saved, images, use_cache=False).features
        assert F.cosine_similarity(ours.float(), _library_features(kind, saved.spec, images).float()).min() > 0.999
    recs = {r["variant"]: r for r in out.records}
    assert {"CS|fine-tuned", "ML|fine-tuned", f"CS|zero-shot after|{splits['test'].name}"} <= set(recs)
    cs = out.extra["runs"]["CS"]
    assert recs["CS|fine-tuned"]["metrics"]["top1"] == recs[f"CS|zero-shot after|{splits['test'].name}"]["metrics"]["top1"]
    assert recs[f"CS|wise-ft alpha=1|{splits['test'].name}"]["metrics"]["top1"] == recs["CS|fine-tuned"]["metrics"]["top1"]
    assert clip_finetune.checkpoint_spec(P, splits, "06:CS", progress=False) == cs.loaded.spec


@pytest.mark.parametrize("kind", ["open_clip", "hf"])
def test_freezing_strategies_find_the_towers_of_every_layout(kind, open_clip_folder, hf_folder):
    from helpers.train import clip_objectives as cf

    model = models.load_model(f"open_clip:local-dir:{open_clip_folder}" if kind == "open_clip" else f"hf:{hf_folder}").model
    text = {id(p) for p in (model.model.text_model.parameters() if kind == "hf" else model.transformer.parameters())}
    total = sum(p.numel() for p in model.parameters())
    assert cf.apply_freeze(model, "unfreeze")["trainable"] == total
    info = cf.apply_freeze(model, "unfreeze", freeze_text=True)
    assert not any(p.requires_grad for p in model.parameters() if id(p) in text) and info["trainable"] < total
    one = cf.apply_freeze(model, "vision-freeze 1")["trainable"]
    assert one < total and cf.apply_freeze(model, "vision-freeze 2")["trainable"] < one
    with pytest.raises(ValueError, match="2 blocks after its stem"):
        cf.apply_freeze(model, "vision-freeze 3")
    mix = cf.apply_freeze(model, "mix-freeze")["trainable"]
    assert 0 < mix < one
    head = cf.FineTuner(model, "ML", ["a", "b"], TEMPLATES, embed_dim=models.load_model(
        f"hf:{hf_folder}").embed_dim if kind == "hf" else None)
    assert not any(p.requires_grad for p in model.parameters() if id(p) in text)  # a linear head: text unused
    assert head.head.in_features == (48 if kind == "hf" else 64)
