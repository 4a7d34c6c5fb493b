"""The typed configuration: every bad setting stops the suite (and the fine-tuning script) before any
work with exit code 2 and one message naming the key; dotted overrides, null, --show-config, user YAML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import profiles, settings, suite

ROOT = Path(__file__).resolve().parents[1]


def _suite(capsys, *args) -> tuple[int, str, str]:
    code = suite.main(["--no-report", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("param, named, expected", [
    ("modles=[scratch:tiny-vit]", "'modles'", "did you mean 'models'"),
    ("batch_sise=8", "'batch_sise'", "did you mean 'batch_size'"),
    ("clip_finetune.freez=mix-freeze", "'clip_finetune.freez'", "did you mean 'clip_finetune.freeze'"),
    ("few_shot={ks: [abc]}", "few_shot.ks.0", "expected list[int > 0 | 'all']"),
    ("few_shot.ks=[1.5]", "few_shot.ks.0", "given 1.5"),
    ("clip_finetune.train.lr=abc", "clip_finetune.train.lr", "expected float > 0; given 'abc'"),
    ("batch_size=0", "batch_size", "expected int > 0; given 0"),
    ("clip_finetune.train.epochs=-1", "clip_finetune.train.epochs", "given -1"),
    ("baselines.train.batch_size=0", "baselines.train.batch_size", "greater than 0"),
    ("dataset.val_fraction=1.5", "dataset.val_fraction", "less than 1"),
    ("clip_finetune.objectives=[SGD]", "clip_finetune.objectives.0", "'ML' | 'CS' | 'FLYP' | 'LP-FT'"),
    ("clip_finetune.freeze=vision-freeze", "clip_finetune.freeze", "vision-freeze N"),
    ("templates=no-such-set", "templates", "unknown template set"),
    ("models=[ViT-B/32]", "models", "<kind>:<name>"),
    ("extra_datasets=/data/folder", "extra_datasets", "extra_datasets is a list"),
    ("dataset.kind=folder", "dataset", "a folder dataset needs root"),
    ("baselines.finetune=[torchvision:resnet50]", "baselines", "not in baselines.backbones"),
])
def test_a_bad_setting_exits_2_naming_the_key_before_any_work(capsys, tmp_path, param, named, expected):
    code, out, err = _suite(capsys, "--profile", "smoke", "--out", str(tmp_path / "runs"), "-p", param)
    assert code == 2
    assert named in err and expected in err, err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "runs").exists()  # nothing started


def test_malformed_override_and_malformed_yaml_are_one_message_each(capsys, tmp_path):
    code, _, err = _suite(capsys, "--profile", "smoke", "-p", "no_equals_sign")
    assert code == 2 and "dotted key and a YAML value" in err
    code, _, err = _suite(capsys, "--profile", "smoke", "-p", "models=[unclosed")
    assert code == 2 and "not valid YAML" in err
    bad = tmp_path / "mine.yaml"
    bad.write_text("dataset: {kind: synthetic\nmodels: [")
    code, _, err = _suite(capsys, "--profile", str(bad))
    assert code == 2 and "mine.yaml" in err and "not valid YAML" in err and "Traceback" not in err
    code, _, err = _suite(capsys, "--profile", str(tmp_path / "absent.yaml"))
    assert code == 2 and "does not exist" in err
    code, _, err = _suite(capsys, "--profile", "no-such-profile")
    assert code == 2 and "bundled" in err


def test_every_problem_is_listed_at_once():
    with pytest.raises(settings.ConfigError) as e:
        profiles.load("smoke", ["batch_size=0", "grid_images=-3", "modles=[x]"])
    text = str(e.value)
    assert "3 problem(s)" in text and "batch_size" in text and "grid_images" in text and "modles" in text


def test_dotted_overrides_merge_and_null_switches_optional_features_off():
    P = profiles.load("smoke", ["clip_finetune.train.epochs=3", "few_shot.ks=[1,4]", "clip_finetune.wise_ft=null",
                                "clip_finetune.retrieval=false", "upsampling.classifier=null"])
    s = P["clip_finetune"]
    assert s["train"]["epochs"] == 3 and s["train"]["lr"] == 0.002  # merged, not replaced
    assert P["few_shot"]["ks"] == [1, 4]
    assert s["wise_ft"] is None and s["retrieval"] is None and P["upsampling"]["classifier"] is None
    # a mapping value merges into its section too; the dict form equals the list-of-strings form
    assert profiles.load("smoke", {"clip_finetune": {"train": {"epochs": 3}}})["clip_finetune"]["train"] == \
        profiles.load("smoke", {"clip_finetune.train.epochs": 3})["clip_finetune"]["train"]


def test_defaults_come_from_one_schema():
    """A key the YAML leaves out gets the schema's default, the same in every module that reads it."""
    P = profiles.load("smoke")
    assert P["baselines"]["aerial"] is True and P["clip_finetune"]["aerial"] is True
    assert P["clip_finetune"]["retrieval"]["aerial"] is False  # retrieval images are not aerial by default
    assert P["upsampling"]["classifier"]["train"]["label_smoothing"] == 0.0
    assert P.config.clip_finetune.train.epochs == P["clip_finetune"]["train"]["epochs"]


def test_show_config_documents_every_key_with_type_default_and_meaning(capsys):
    code, out, _ = _suite(capsys, "--profile", "offline", "--show-config", "-p", "clip_finetune.train.epochs=3")
    assert code == 0
    assert "clip_finetune.train.epochs = 3  (default 30)  # int > 0: maximum epochs" in out
    assert "dataset.val_fraction = 0.1  # float >= 0, < 1" in out
    for field in settings.Settings.model_fields:
        assert f"\n{field}" in out or out.startswith(field) or f"\n{field}:" in out


def test_a_user_yaml_profile_is_accepted_by_path(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("description: my run\nmodels: [scratch:tiny-rn]\nfew_shot: {ks: [1]}\n")
    P = profiles.load(str(mine))
    assert P.name == "mine" and P.models == ["scratch:tiny-rn"] and P["few_shot"]["ks"] == [1]
    assert P["few_shot"]["seeds"] == [0, 1, 2]  # schema defaults fill the rest
    code, out, _ = _suite(capsys, "--profile", str(mine), "--show-config")
    assert code == 0 and "models = ['scratch:tiny-rn']" in out


def test_finetune_script_uses_the_same_grammar_and_refuses_bad_keys(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "finetune_clip.py"), "--profile", "smoke",
           "-p", "clip_finetune.freez=mix-freeze"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "'clip_finetune.freez'" in done.stderr and "did you mean 'clip_finetune.freeze'" in done.stderr
    assert "Traceback" not in done.stderr


def test_notebooks_take_the_same_overrides_parameter():
    import json

    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, path.name
        names = {line.split("=")[0].strip() for line in "".join(params[0]["source"]).splitlines() if "=" in line}
        assert names == {"profile", "dataset", "overrides"}, (path.name, names)
        assert any("profiles.load(profile, overrides, dataset=dataset)" in "".join(c["source"]) for c in cells), path.name
