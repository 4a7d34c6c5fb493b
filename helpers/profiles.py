"""Named parameter sets (``profiles/<name>.yaml``) that one notebook file runs under, and their preflight.

A notebook asks :func:`load` for its profile: the name comes from papermill's ``profile`` parameter,
else from ``CLIPLAB_PROFILE`` (nbmake, JupyterLab), else ``smoke``. Keyword overrides replace the
profile's values (``None`` means "keep the profile's"), so the same parameters cell serves all uses.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml

from helpers import data, models, settings
from helpers.core import compiled, config
from helpers.core.errors import ProfileError  # noqa: F401 (re-exported)
from helpers.data import cards

PROFILES_DIR = config.PROJECT_ROOT / "profiles"


def available() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


@dataclass
class Profile:
    """A profile's settings, with the dataset and models it names."""

    name: str
    settings: dict = field(default_factory=dict)
    config: settings.Settings | None = None  # the typed, validated form of ``settings``
    path: Path | None = None

    def __getitem__(self, key: str):
        return self.settings[key]

    def get(self, key: str, default=None):
        return self.settings.get(key, default)

    @property
    def models(self) -> list[str]:
        return list(self.settings["models"])

    @property
    def seed(self) -> int:
        return self.config.dataset.seed

    def weight_specs(self, notebooks: list[str] | None = None) -> list[str]:
        """The model specs the given notebooks load (numbers such as "03"; None: every notebook)."""
        wanted = set(notebooks) if notebooks is not None else {"01", "02", "03", "04", "05", "06", "07"}
        proxy, up = self.get("proxy") or {}, self.get("upsampling") or {}
        by_notebook = {
            "01": self.models, "02": self.models, "04": self.models,
            "03": [*up.get("clip_models", []), (up.get("classifier") or {}).get("backbone")],
            "05": self.get("baselines", {}).get("backbones", []),
            "06": [(self.get("clip_finetune") or {}).get("model")],
            "07": [proxy.get("anti_expert"), proxy.get("base"), *proxy.get("expert", "").split(":", 2)[2:],
                   (self.get("clip_finetune") or {}).get("model") if proxy.get("expert", "").startswith("06:") else None],
        }
        specs = [s for n, group in by_notebook.items() if n in wanted for s in group]
        return list(dict.fromkeys(s for s in specs if s and not str(s).startswith("06:")))

    def dataset(self) -> dict[str, data.Samples]:
        """The splits of the profile's dataset card (train/val/test, or the ones it has; each split's
        card states how it was made)."""
        return cards.load_splits(self.config.dataset)

    def extra_datasets(self) -> list[data.Samples]:
        """The test split of every extra dataset card (zero-shot needs no training images)."""
        return [cards.load_splits(c)["test"] for c in self.config.extra_datasets]

    def card(self) -> dict:
        return {"name": self.name, **self.settings}

    def preflight(self, notebooks: list[str] | None = None) -> list[str]:
        """What the given notebooks (numbers; None: all) need and this machine lacks (dataset folder,
        weights, download hosts), each with a fix."""
        problems = []
        for card in [self.config.dataset, *self.config.extra_datasets]:
            root = card.resolved_root()
            if card.kind == "eurosat":
                root = root or data.eurosat_root()
                if not root.exists():
                    if not card.download:
                        problems.append(f"EuroSAT is not at {root}: put it there or set CLIPLAB_DATA to the "
                                        "folder that holds eurosat_rgb/")
                    elif not _reachable(EUROSAT_URL):
                        problems.append(f"EuroSAT is not at {root} and its download host ({_host(EUROSAT_URL)}) "
                                        "cannot be reached: copy the dataset there or set CLIPLAB_DATA")
            elif root is not None and not root.exists():
                problems.append(f"dataset {card.label()}: {root} does not exist"
                                + (f" (root in {card.source})" if card.source else ""))
        for spec in self.weight_specs(notebooks):
            why = models.missing_weights(spec)
            url = models.download_url(spec) if why else None
            if why and (url is None or not _reachable(url)):  # a download that can happen is no problem
                problems.append(why)
        up = self.get("upsampling") or {}
        if "srgan" in up.get("upsamplers", []) and (notebooks is None or "03" in notebooks):
            from helpers.models import upsamplers

            scale = upsamplers.network_scale(up)
            path = upsamplers.srgan_file(up["srgan_dir"], scale)
            if not path.is_file():
                problems.append(f"SRGAN x{scale} weights are not at {path}: place netG_x{scale}.pth there "
                                "or set upsampling.srgan_dir")
        return problems


EUROSAT_URL = "https://huggingface.co/datasets/torchgeo/eurosat/resolve/main/EuroSAT.zip"


def _host(url: str) -> str:
    return urlparse(url).hostname or url


@functools.cache
def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Can the URL's host be reached on port 443 the way the downloads will reach it?

    Downloads go through urllib, which honours ``HTTPS_PROXY``/``https_proxy`` and ``NO_PROXY``; so
    does this check: behind a proxy it asks the proxy to open a tunnel (``CONNECT host:443``) and takes
    a 2xx answer as reachable, else it opens a direct TCP connection.
    """
    host = _host(url)
    proxy = _https_proxy(host)
    try:
        if proxy is None:
            with socket.create_connection((host, 443), timeout=timeout):
                return True
        with socket.create_connection((proxy.hostname, proxy.port or 8080), timeout=timeout) as conn:
            auth = ""
            if proxy.username:
                import base64
                from urllib.parse import unquote

                token = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
                auth = f"Proxy-Authorization: Basic {base64.b64encode(token).decode()}\r\n"
            conn.settimeout(timeout)
            conn.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n{auth}\r\n".encode())
            status = conn.recv(1024).split(b"\r\n", 1)[0].split()
            return len(status) >= 2 and status[1][:1] == b"2"
    except OSError:
        return False


def _https_proxy(host: str):
    """The parsed HTTPS proxy urllib would use for ``host`` (None: direct or bypassed by NO_PROXY)."""
    import urllib.request

    proxy = urllib.request.getproxies().get("https")
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return urlparse(proxy if "://" in proxy else f"http://{proxy}")


def resolve(name_or_path: str | None = None) -> tuple[str, Path]:
    """(profile name, YAML file) of a bundled profile name or a path to the user's own YAML file."""
    name_or_path = str(name_or_path or config.profile_name())
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ProfileError(f"profile file {path} does not exist")
        return path.stem, path.resolve()
    path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ProfileError(f"no profile {name_or_path!r}; bundled: {available()} (files in {PROFILES_DIR}), "
                           "or give the path of your own .yaml")
    return name_or_path, path


def load(name: str | None = None, overrides: dict | None = None, dataset: str | dict | None = None,
         **sections) -> Profile:
    """The profile ``name`` (a bundled name or a YAML path; default ``$CLIPLAB_PROFILE``, else smoke),
    validated against :mod:`helpers.settings` after applying ``overrides`` (``{"dotted.key": value}``)
    and ``sections`` (``section=mapping``: merged into that section; ``None`` leaves it as it is, so a
    notebook's unset parameter changes nothing). ``dataset`` (a folder, a card file or name, or a card
    mapping) replaces the profile's dataset before the overrides apply, so ``dataset.*`` overrides
    refine it. Raises :class:`settings.ConfigError` naming any bad key."""
    name, path = resolve(name)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise settings.ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]} ...)") from None
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise settings.ConfigError(f"{path}: a profile is a YAML mapping of keys, got {type(raw).__name__}")
    try:  # a dataset given as a folder or card name becomes its card, so dotted overrides refine it
        if raw.get("dataset") is not None:
            raw["dataset"] = cards.expand(raw["dataset"])
        dotted = _dotted(overrides)
        if dataset is not None or isinstance(dotted.get("dataset"), str | dict):
            raw["dataset"] = cards.expand(dataset if dataset is not None else dotted.pop("dataset"))
    except data.DatasetError as e:
        raise settings.ConfigError(f"profile {name}: dataset: {e}") from None
    raw = settings.apply_overrides(raw, {k: v for k, v in sections.items() if v is not None})
    raw = settings.apply_overrides(raw, dotted)
    validated = settings.validate(raw, f"profile {name} ({path.name})" + (" with overrides" if overrides or dataset or any(
        v is not None for v in sections.values()) else ""))
    compiled.set_default_mode(validated.encode.compile)  # encoders called without a profile follow it too
    return Profile(name, validated.model_dump(), validated, path)


def _dotted(overrides) -> dict:
    """Overrides as ``{"dotted.key": value}``: a dict as it is, or ``["key=value", ...]`` parsed."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    if isinstance(overrides, str):
        overrides = [overrides]
    return dict(settings.parse_assignment(item) for item in overrides)
