"""Random stand-ins for the paper profile's pretrained weights, in the released formats and shapes, to
rehearse the main job where the real weights cannot be downloaded (its numbers mean nothing).

    python scripts/paper_standins.py DIR            # writes the files, prints the suite command

Written with the libraries themselves, so the real loading code reads them:

- ``DIR/RN50.pt``, ``DIR/ViT-B-32.pt``: TorchScript archives like OpenAI's releases (``clip.load`` reads
  them through ``file:``; ``openai:`` specs insist on the released sha256, so the command names files);
- ``DIR/open_clip-ViT-B-32.pt``: an open_clip checkpoint of ``ViT-B-32`` (``open_clip:ViT-B-32:<file>``);
- ``DIR/convnext_tiny.safetensors``: timm's ``convnext_tiny`` state dict (``timm:convnext_tiny@<file>``);
- torchvision's ``DEFAULT`` weights files of ResNet-18/50 and EfficientNet-B0 under
  ``$CLIPLAB_CACHE/torch/hub/checkpoints``, where torchvision looks before downloading.

Every file gets a ``<file>.json`` beside it saying it is a random stand-in (``untrained``: the loaders mark
the model untrained, so the report masks its numbers). The printed command runs the
paper profile with these specs, ``dataset.max_per_class`` and capped epochs; keep its output apart
(``CLIPLAB_OUT``) from real results.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.core import config  # noqa: E402

# the provenance beside every file: loaders read "untrained" and mask the numbers like any untrained model's
STANDIN = {"untrained": True, "standin": "random weights in the released format and shape; not a result"}
TORCHVISION = ("resnet18", "resnet50", "efficientnet_b0")


def write_clip_archives(folder: Path) -> dict[str, Path]:
    from helpers.models.clip_models import (
        SCRATCH_CONFIGS,
        _build_scratch,
        save_torchscript_archive,
        write_provenance,
    )

    out = {}
    for name in ("RN50", "ViT-B/32"):
        torch.manual_seed(0)
        path = folder / f"{name.replace('/', '-')}.pt"
        save_torchscript_archive(_build_scratch(SCRATCH_CONFIGS[name]), path)
        write_provenance(path, {**STANDIN, "shape_of": f"openai:{name}"})
        out[name] = path
    return out


def write_open_clip(folder: Path) -> Path:
    import open_clip

    from helpers.core import storage
    from helpers.models.clip_models import write_provenance

    path = folder / "open_clip-ViT-B-32.pt"
    torch.manual_seed(0)
    storage.atomic_torch_save({"state_dict": open_clip.create_model("ViT-B-32").state_dict()}, path)
    write_provenance(path, {**STANDIN, "shape_of": "open_clip:ViT-B-32:laion2b_s34b_b79k"})
    return path


def write_timm(folder: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    from helpers.models.clip_models import write_provenance

    path = folder / "convnext_tiny.safetensors"
    torch.manual_seed(0)
    save_file(timm.create_model("convnext_tiny").state_dict(), str(path))
    write_provenance(path, {**STANDIN, "shape_of": "timm:convnext_tiny@pretrained"})
    return path


def write_torchvision() -> list[Path]:
    import torchvision

    from helpers.core import storage
    from helpers.models.clip_models import write_provenance

    folder = config.cache_dir() / "torch" / "hub" / "checkpoints"
    paths = []
    for arch in TORCHVISION:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        path = folder / Path(weights.url).name
        torch.manual_seed(0)
        storage.atomic_torch_save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
        write_provenance(path, {**STANDIN, "shape_of": f"torchvision:{arch}@DEFAULT"})
        paths.append(path)
    return paths


def overrides(clip: dict[str, Path], open_clip_file: Path, timm_file: Path, max_per_class: int, epochs: int) -> list[str]:
    models = [f"file:{clip['RN50']}", f"file:{clip['ViT-B/32']}", f"open_clip:ViT-B-32:{open_clip_file}"]
    backbones = [f"torchvision:{a}@DEFAULT" for a in TORCHVISION] + [f"timm:convnext_tiny@{timm_file}"]
    return [f"dataset.max_per_class={max_per_class}", f"models={json.dumps(models)}",
            f"upsampling.clip_models={json.dumps(models)}", f"baselines.backbones={json.dumps(backbones)}", f"clip_finetune.model=file:{clip['ViT-B/32']}",
            f"proxy.expert=06:CS:file:{clip['RN50']}", f"proxy.anti_expert=file:{clip['RN50']}",
            f"proxy.base=file:{clip['ViT-B/32']}", f"baselines.train.epochs={epochs}",
            f"clip_finetune.train.epochs={epochs}", f"proxy.expert_train.train.epochs={epochs}",
            f"upsampling.learned.train.epochs={epochs}", f"upsampling.classifier.train.epochs={epochs}"]


def main(argv=None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="where to write the stand-in files")
    ap.add_argument("--max-per-class", type=int, default=10, help="dataset.max_per_class of the printed command")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of every training in the printed command")
    ap.add_argument("--srgan-dir", default=None, help="the folder holding the real SRGAN weights, if you have them "
                                                      "(they are small and public; notebook 03 needs them)")
    args = ap.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    clip = write_clip_archives(args.folder)
    oc, tm, tv = write_open_clip(args.folder), write_timm(args.folder), write_torchvision()
    for p in [*clip.values(), oc, tm, *tv]:
        print(f"wrote {p} ({p.stat().st_size / 2**20:.0f} MB)")
    params = overrides(clip, oc, tm, args.max_per_class, args.epochs)
    if args.srgan_dir:
        params.append(f"upsampling.srgan_dir={args.srgan_dir}")
    print("\n" + shlex.join(["python", "-m", "helpers.suite", "--profile", "paper",
                             *[a for p in params for a in ("-p", p)]]))
    return params


if __name__ == "__main__":
    main()
