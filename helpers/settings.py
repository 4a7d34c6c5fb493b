"""The typed configuration of the suite: one schema for every profile key, validated before any work.

Why pydantic models: each key is declared once with its type, default, bounds and meaning (the
``description`` is what ``--show-config`` prints), unknown keys are refused (``extra="forbid"``),
and validation errors carry the exact path of the offending key, so one message can name it, the
expected type, the value given and, for a typo, the closest valid key. Dataclasses would need all of
that written by hand.

Overrides use one grammar everywhere (suite ``-p``, ``scripts/finetune_clip.py -p``, the notebooks'
``overrides`` parameter): a dotted path and a YAML value, e.g. ``clip_finetune.train.epochs=3`` or
``few_shot.ks=[1,4]``. A mapping value merges into the section; ``null`` (or ``false`` for an optional
feature) switches that feature off.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from helpers.core.errors import (
    ConfigError,  # noqa: F401 (re-exported)
    DatasetError,
)
from helpers.data import cards
from helpers.data.cards import DatasetCard


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _off(value):
    """``false`` switches an optional feature off, like ``null``."""
    return None if value is False else value


PosInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Templates = str | list[str]
def _check_spec(spec: str) -> str:
    """The spec's grammar, checked by its kind's parser (no weights are loaded)."""
    from helpers import models

    try:
        models.parse(spec)
    except models.ModelSpecError as e:
        raise ValueError(str(e)) from None
    return spec


def _check_templates(value):
    from helpers.data import prompts

    try:
        prompts.templates(value)
    except (KeyError, ValueError) as e:
        raise ValueError(str(e).strip('"')) from None
    return value


ModelSpec = Annotated[str, AfterValidator(lambda s: _check_spec(s))]


class Train(Section):
    """One training run of the shared loop (helpers.training.TrainConfig) plus its batch."""

    epochs: PosInt = Field(30, description="maximum epochs")
    lr: Annotated[float, Field(gt=0)] = Field(1e-3, description="peak learning rate of AdamW")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.05, description="AdamW weight decay (weights only)")
    warmup_epochs: Annotated[float, Field(ge=0)] = Field(1.0, description="linear warmup, in epochs")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warmup")
    accumulate: PosInt = Field(1, description="micro-batches per optimiser step")
    clip_grad: Annotated[float, Field(gt=0)] | None = Field(1.0, description="gradient-norm clip; null: none")
    patience: PosInt | None = Field(None, description="early stop after this many epochs without val gain")
    max_minutes: Annotated[float, Field(gt=0)] | None = Field(None, description="wall-time budget")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    batch_size: PosInt = Field(64, description="images per optimiser step (all ranks together)")
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="cross-entropy smoothing")
    keep_last: bool = Field(False, description="keep the full resume checkpoint last.pt after the run completes "
                                               "(default: replaced by the compact done.pt)")
    compile: Literal["auto"] | bool = Field("auto", description="torch.compile the image tower for training "
                                          "steps: auto = on CUDA only (on CPU compiling costs more than it saves); "
                                          "eager with a note when compiling fails")


class RetrievalTrain(Train):
    batch_size: PosInt = Field(32, description="caption pairs per step")


class ClassifierTrain(Train):
    batch_size: PosInt = Field(128, description="images per step")


class PromptValidation(Section):
    classname_variants: list[Literal["folder", "readable"]] = Field(["folder", "readable"], min_length=1)
    template_sets: list[str] | None = Field(None, min_length=1, description="template sets compared on val "
                                            "(default: the dataset card's, else its templates, photo, plain, generic-ensemble)")

    @field_validator("template_sets")
    @classmethod
    def _known(cls, v):
        for t in v or []:
            _check_templates(t)
        return v


class FewShot(Section):
    ks: list[PosInt | Literal["all"]] = Field([1, 2, 4, 8, 16, "all"], min_length=1,
                                              description="images per class of each probe ('all': every train image)")
    seeds: list[Annotated[int, Field(ge=0)]] = Field([0, 1, 2], min_length=1, description="k-shot draws")
    max_iter: PosInt = Field(1000, description="L-BFGS iterations of each logistic-regression fit")
    probe_backend: Literal["auto", "sklearn", "torch"] = Field(
        "auto", description="logistic-probe implementation of every notebook (same objective and C sweep): "
                            "torch (L-BFGS on the device), sklearn (CPU reference), auto (torch on CUDA, else sklearn)")


class Baselines(Section):
    backbones: list[ModelSpec] = Field(["torchvision:resnet50@DEFAULT"], description="probed backbones")
    finetune: list[ModelSpec] = Field([], description="backbones also fine-tuned end to end")
    input_size: PosInt = Field(224, description="image side fed to the backbones")
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bicubic"
    aerial: bool = Field(True, description="train augmentation adds vertical flips and 90-degree rotations")
    probe_ks: list[PosInt | Literal["all"]] = Field([16, "all"], min_length=1)
    train: Train = Field(default_factory=Train)

    @model_validator(mode="after")
    def _finetune_subset(self):
        extra = [s for s in self.finetune if s not in self.backbones]
        if extra:
            raise ValueError(f"baselines.finetune {extra} are not in baselines.backbones")
        return self


class WiseFT(Section):
    alphas: list[Annotated[float, Field(ge=0, le=1)]] = Field(min_length=1, description="interpolation weights")


class Retrieval(Section):
    captions: str = Field(description="'synthetic', a captions CSV (image,caption) or a Karpathy-style JSON")
    images: str | None = Field(None, description="folder of the captions' images (default: beside the file, "
                                                 "or its images/ sub-folder)")
    start: str = Field("CS", description="objective whose checkpoint retrieval starts from")
    freeze: str = "unfreeze"
    aerial: bool = False
    test_fraction: Fraction = 0.4
    val_fraction: Fraction = 0.2
    train: RetrievalTrain = Field(default_factory=RetrievalTrain)


class ClipFinetune(Section):
    model: ModelSpec = Field("scratch:tiny-rn", description="the CLIP fine-tuned")
    objectives: list[Literal["ML", "CS", "FLYP", "LP-FT"]] = Field(["CS"], min_length=1)
    freeze: str = Field("unfreeze", description="unfreeze | 'vision-freeze N' | mix-freeze")
    freeze_text: bool = Field(False, description="freeze the whole text tower")
    head_init: Literal["zero-shot", "random"] = Field("zero-shot", description="ML head start")
    templates: Templates | None = Field(None, description="evaluation templates (val, test, zero-shot); default: templates")
    train_templates: Templates | None = Field(None, description="templates sampled in training (default: the dataset "
                                                                "card's train_templates, else templates)")
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bicubic"
    aerial: bool = True
    color_jitter: Annotated[float, Field(ge=0)] = 0.0
    probe_max_iter: PosInt = 1000
    held_out: list[str] = Field([], description="zero-shot after fine-tuning on these: synthetic, eurosat or image folders")
    train: Train = Field(default_factory=Train)
    wise_ft: WiseFT | None = Field(None, description="WiSE-FT sweep; null: off")
    retrieval: Retrieval | None = Field(None, description="retrieval fine-tuning on captions; null: off")

    _off = field_validator("wise_ft", "retrieval", mode="before")(classmethod(lambda cls, v: _off(v)))

    @field_validator("model")
    @classmethod
    def _fine_tunable(cls, v):
        from helpers import models

        kinds = models.fine_tunable()
        if v.partition(":")[0] not in kinds:
            raise ValueError(f"{v}: fine-tuning takes a CLIP model of kind {', '.join(k + ':' for k in kinds)} "
                             "(ImageNet backbones are fine-tuned in notebook 05: baselines.finetune)")
        return v

    _freeze = field_validator("freeze")(classmethod(lambda cls, v: _check_freeze(v)))

    @field_validator("templates", "train_templates")
    @classmethod
    def _templates(cls, v):
        return v if v is None else _check_templates(v)


def _check_freeze(v: str) -> str:
    if v in ("unfreeze", "mix-freeze"):
        return v
    parts = v.split()
    if len(parts) == 2 and parts[0] == "vision-freeze" and parts[1].isdigit():
        return v
    raise ValueError(f"freeze {v!r}: use unfreeze, 'vision-freeze N' (N an integer) or mix-freeze")


class ExpertTrainSettings(Train):
    epochs: PosInt = Field(10, description="maximum epochs")
    lr: Annotated[float, Field(gt=0)] = Field(1e-5, description="peak learning rate of AdamW (a pretrained CLIP)")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.1, description="AdamW weight decay (weights only)")
    warmup_epochs: Annotated[float, Field(ge=0)] = Field(0.5, description="linear warmup, in epochs")


class ExpertTrain(Section):
    """How notebook 07 fine-tunes its expert when notebook 06 recorded no checkpoint for
    ``proxy.expert`` (the objective and the starting model are the ones that spec names); notebook
    06's code, these settings, stated before training and in every 07 record."""

    freeze: str = Field("unfreeze", description="unfreeze | 'vision-freeze N' | mix-freeze")
    freeze_text: bool = Field(False, description="freeze the whole text tower")
    head_init: Literal["zero-shot", "random"] = Field("zero-shot", description="ML head start")
    train_templates: Templates | None = Field(None, description="templates sampled in training (default: the dataset "
                                                                "card's train_templates, else proxy.templates)")
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bicubic"
    aerial: bool = Field(True, description="train augmentation adds vertical flips and 90-degree rotations")
    color_jitter: Annotated[float, Field(ge=0)] = 0.0
    probe_max_iter: PosInt = Field(1000, description="LP-FT probe iterations")
    train: ExpertTrainSettings = Field(default_factory=ExpertTrainSettings)

    _freeze = field_validator("freeze")(classmethod(lambda cls, v: _check_freeze(v)))
    _t = field_validator("train_templates")(classmethod(lambda cls, v: v if v is None else _check_templates(v)))


class Proxy(Section):
    expert: ModelSpec = Field("06:CS", description="'06:<objective>[:<model spec>]' or any model spec")
    train_missing_expert: bool = Field(True, description="when notebook 06 recorded no checkpoint for a '06:' expert, "
                                                         "train it here with proxy.expert_train (false: stop and say "
                                                         "what to run first)")
    expert_train: ExpertTrain = Field(default_factory=ExpertTrain, description="settings of that training")
    anti_expert: ModelSpec = Field("scratch:tiny-rn", description="the expert before tuning")
    base: ModelSpec = Field("scratch:tiny-vit", description="the large model steered")
    templates: Templates | None = Field(None, description="default: templates")
    alphas: list[Annotated[float, Field(ge=0)]] = Field([0, 0.5, 1, 2], min_length=1)
    spaces: list[Literal["logits", "logprobs"]] = Field(["logits"], min_length=1)
    match_temperature: list[bool] = Field([False], min_length=1)

    _t = field_validator("templates")(classmethod(lambda cls, v: v if v is None else _check_templates(v)))


class UpsamplerTrain(Section):
    train: Train = Field(default_factory=Train)


class UpsamplingClassifier(Section):
    backbone: ModelSpec = "torchvision:resnet18"
    input_size: PosInt | None = None
    aerial: bool = True
    upsamplers: list[str] | None = Field(None, description="null: every upsampler")
    train: ClassifierTrain = Field(default_factory=ClassifierTrain)


class Upsampling(Section):
    factor: PosInt = Field(4, description="downscale factor restored (1: upsample originals to the model size)")
    network_scale: Literal[2, 4, 8] = Field(4, description="SR network scale when factor is 1")
    target_size: PosInt | None = Field(None, description="restored size; null: each model's input size")
    upsamplers: list[str] = Field(["pil-bicubic"], min_length=1)
    srgan_dir: str = Field("weights/srgan", description="folder of netG_x{2,4,8}.pth (relative: under $CLIPLAB_CACHE)")
    srgan_sha256: dict[Literal["x2", "x4", "x8"], str] = {}
    learned: UpsamplerTrain = Field(default_factory=UpsamplerTrain)
    n_quality: PosInt = Field(500, description="test images whose PSNR/SSIM is measured")
    clip_models: list[ModelSpec] = []
    templates: Templates | None = Field(None, description="default: templates")
    probe_max_iter: PosInt = 1000
    classifier: UpsamplingClassifier | None = Field(None, description="a classifier per upsampler; null: off")

    _off = field_validator("classifier", mode="before")(classmethod(lambda cls, v: _off(v)))
    _t = field_validator("templates")(classmethod(lambda cls, v: v if v is None else _check_templates(v)))


class Encode(Section):
    """How encoders run (every notebook): compiled or eager (:mod:`helpers.core.compiled`)."""

    compile: Literal["auto"] | bool = Field(
        "auto", description="torch.compile the encoders (CLIP towers, backbones, SR networks): auto (when the "
                            "images to encode repay the compile time), true, or false (eager); features are "
                            "equal within rounding either way, so the cache is shared")

    @field_validator("compile", mode="before")
    @classmethod
    def _mode(cls, v):
        from helpers.core import compiled

        return compiled.parse_mode(v)


class Settings(Section):
    """Every key of a profile. Sections belong to notebooks: 01 (models, templates, extra_datasets,
    grid_images), 02 prompt_validation, 03 upsampling, 04 few_shot, 05 baselines, 06 clip_finetune,
    07 proxy."""

    description: str = ""
    dataset: DatasetCard = Field(default_factory=lambda: DatasetCard(kind="synthetic"),
                                 description="the dataset every notebook uses: a folder, a card (.yaml or a bundled "
                                             "name: " + ", ".join(cards.available()) + ") or a card mapping")
    models: list[ModelSpec] = Field(["scratch:tiny-vit"], min_length=1, description="CLIP models compared")
    templates: Templates | None = Field(None, description="zero-shot templates (a set name or a list); default: the "
                                                          "dataset card's, else photo")
    batch_size: PosInt = Field(64, description="images per encoding batch")
    extra_datasets: list[DatasetCard] = Field([], description="more datasets to evaluate zero-shot (01): folders, "
                                                              "cards or card mappings")
    prompt_validation: PromptValidation = Field(default_factory=PromptValidation)
    grid_images: PosInt = 8
    few_shot: FewShot = Field(default_factory=FewShot)
    baselines: Baselines = Field(default_factory=Baselines)
    clip_finetune: ClipFinetune = Field(default_factory=ClipFinetune)
    proxy: Proxy = Field(default_factory=Proxy)
    upsampling: Upsampling = Field(default_factory=Upsampling)
    encode: Encode = Field(default_factory=Encode, description="how every encoder runs")

    _t = field_validator("templates")(classmethod(lambda cls, v: v if v is None else _check_templates(v)))

    @field_validator("dataset", mode="before")
    @classmethod
    def _card(cls, v):
        return _expand_card(v)

    @field_validator("extra_datasets", mode="before")
    @classmethod
    def _list(cls, v):
        if isinstance(v, str | dict):
            raise ValueError("extra_datasets is a list: write [<folder or card>] or [{root: <folder>, name: <name>}]")
        return [_expand_card(item) for item in v or []]

    @model_validator(mode="after")
    def _inherit_templates(self):
        """Templates not set in a section come from the top level, which comes from the dataset card
        (a bird photo is not prompted as a satellite photo)."""
        card = self.dataset
        self.templates = self.templates or card.templates or "photo"
        self.clip_finetune.templates = self.clip_finetune.templates or self.templates
        self.clip_finetune.train_templates = (self.clip_finetune.train_templates or card.train_templates
                                              or self.clip_finetune.templates)
        self.proxy.templates = self.proxy.templates or self.templates
        self.proxy.expert_train.train_templates = (self.proxy.expert_train.train_templates or card.train_templates
                                                   or self.proxy.templates)
        self.upsampling.templates = self.upsampling.templates or self.templates
        if self.prompt_validation.template_sets is None:
            own = [self.templates] if isinstance(self.templates, str) else []
            sets = card.template_sets or [*own, "photo", "plain", "generic-ensemble"]
            self.prompt_validation.template_sets = list(dict.fromkeys(sets))
        return self


def _expand_card(value):
    try:
        return cards.expand(value)
    except DatasetError as e:
        raise ValueError(str(e)) from None


# ------------------------------------------------------------------------------- overrides
def parse_assignment(item: str) -> tuple[str, Any]:
    """``a.b.c=value`` -> ("a.b.c", YAML value)."""
    key, eq, value = item.partition("=")
    parts = key.strip().split(".")
    if not eq or not all(p.isidentifier() for p in parts):
        raise ConfigError(f"-p {item!r}: use a dotted key and a YAML value, e.g. clip_finetune.train.epochs=3")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"-p {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None


def apply_overrides(settings: dict, overrides: dict | None) -> dict:
    """``settings`` with each ``{dotted.key: value}`` applied; mappings merge, anything else replaces
    (``None`` included: it switches an optional feature off)."""
    out = _deep_copy(settings)
    for key, value in (overrides or {}).items():
        *parents, leaf = str(key).split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = merge(node[leaf], value)
        else:
            node[leaf] = value
    return out


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _deep_copy(d):
    return {k: _deep_copy(v) for k, v in d.items()} if isinstance(d, dict) else d


# -------------------------------------------------------------------------------- validation
def validate(raw: dict, source: str) -> Settings:
    """The validated settings, or a :class:`ConfigError` naming every problem in ``raw``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a profile is a YAML mapping of keys, got {type(raw).__name__}")
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        problems: dict[str, list[dict]] = {}
        for err in e.errors():
            keys = _keys(err["loc"], err["type"] == "extra_forbidden")
            problems.setdefault(".".join(str(k) for k in keys), []).append({**err, "keys": keys})
        raise ConfigError(f"{source}: {len(problems)} problem(s) in the configuration:\n"
                          + "\n".join(f"  - {_explain(errs)}" for errs in problems.values())) from None


def _models() -> dict[str, type[BaseModel]]:
    return {m.__name__: m for m in _all_subclasses(Section)}


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def _keys(loc, extra: bool) -> list:
    """The real keys of a pydantic error location (union members insert their type's name)."""
    keys, model, by_name = [], Settings, _models()
    for i, part in enumerate(loc):
        if isinstance(part, int):
            keys.append(part)
        elif model is not None and part in model.model_fields:
            keys.append(part)
            model = _section_in(model.model_fields[part].annotation)
        elif part in by_name:
            model = by_name[part]
        elif extra and i == len(loc) - 1:
            keys.append(part)
    return keys


def _section_in(annotation) -> type[BaseModel] | None:
    """The section model inside an annotation (``Train``, ``Train | None``, ``list[str | X]``), if any."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_in(arg)
        if found:
            return found
    return None


def _section_at(keys) -> type[BaseModel] | None:
    """The section model that the named keys lead to (``[]``: the top level)."""
    model = Settings
    for k in keys:
        if isinstance(k, str):
            field = model.model_fields.get(k) if model else None
            model = _section_in(field.annotation) if field is not None else None
    return model


def _explain(errs: list[dict]) -> str:
    keys = errs[0]["keys"]
    dotted = ".".join(str(k) for k in keys) or "(top level)"
    names = [k for k in keys if isinstance(k, str)]
    if errs[0]["type"] == "extra_forbidden":
        parent = keys[:-1]
        model = _section_at(parent)
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(keys[-1]), valid, n=1, cutoff=0.6)
        hint = f" (did you mean {'.'.join(str(p) for p in [*parent, close[0]])!r}?)" if close else ""
        where = ".".join(str(p) for p in parent) or "the top level"
        return f"unknown key {dotted!r}{hint}; valid keys at {where}: {', '.join(valid)}"
    owner = _section_at(names[:-1]) if names else None
    field = owner.model_fields.get(names[-1]) if owner and names else None
    expected = _field_type(field) if field is not None else "a mapping"
    given = errs[0].get("input")
    msgs = list(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errs))
    return f"{dotted}: {' / '.join(msgs)} (expected {expected}; given {given!r})"


def _field_type(field) -> str:
    """The field's type with the bounds pydantic moved from its annotation into ``metadata``."""
    return _type_name(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)


def _type_name(annotation) -> str:
    """A short readable type: ``int > 0``, ``list[int > 0 | 'all']``, ``float | null``."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        base, *meta = args
        bounds = []
        for m in meta:
            for name, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                if getattr(m, name, None) is not None:
                    bounds.append(f"{sym} {getattr(m, name)}")
            for inner in getattr(m, "metadata", []):
                for name, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                    if getattr(inner, name, None) is not None:
                        bounds.append(f"{sym} {getattr(inner, name)}")
        return " ".join([_type_name(base), *(", ".join(bounds) and [", ".join(bounds)])])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args if a is not Ellipsis)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping (section)"
    return getattr(annotation, "__name__", str(annotation))


# ------------------------------------------------------------------------------ documentation
def describe(settings: Settings) -> str:
    """Every key with its type, value, default and meaning: what ``--show-config`` prints."""
    lines: list[str] = []
    _describe(settings, type(settings).model_construct(), "", lines)
    return "\n".join(lines)


def _describe(values: BaseModel, defaults: BaseModel | None, prefix: str, lines: list[str]) -> None:
    for name, field in type(values).model_fields.items():
        value, default = getattr(values, name), getattr(defaults, name, None) if defaults is not None else None
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            lines.append(f"{key}:" + (f"  # {field.description}" if field.description else ""))
            _describe(value, default if isinstance(default, BaseModel) else type(value).model_construct(), key + ".", lines)
            continue
        shown = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
        note = "" if value == default else f"  (default {yaml.safe_dump(_plain(default), default_flow_style=True).strip().removesuffix('...').strip()})"
        doc = f"  # {_field_type(field)}" + (f": {field.description}" if field.description else "")
        lines.append(f"{key} = {shown}{note}{doc}")


def _plain(value):
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
