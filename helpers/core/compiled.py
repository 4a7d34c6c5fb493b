"""Compiled inference for every encoder, behind one switch: the setting ``encode.compile``.

``auto | true | false``. ``true`` compiles every encoder that is an ``nn.Module`` (or a method of
one: ``model.encode_image``, ``model.encode_text``, a backbone, an SR network) with
``torch.compile`` (inductor); ``false`` keeps eager; ``auto`` compiles when it pays (:class:`Encoder`).

- On CPU the graph is compiled with inductor *freezing* (weights folded into the graph as constants,
  bf16 casts of the weights done once): 1.87x eager for ViT-B/32 in bf16 on a 2-core AMX CPU, against
  1.42x without. Freezing is switched on by a scoped ``torch._inductor.config.patch`` around the calls
  of the compiled copy only, so training code never sees it.
- A frozen copy holds a snapshot of the weights, so it must never outlive them: each copy is stored on
  its module (dropped with it, not copied by ``deepcopy``) under the weights' identity and ``_version``
  counters (:func:`weights_version`); any in-place update or replaced
  tensor makes the next encode compile afresh.
- Inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) is pointed at ``<CLIPLAB_CACHE>/inductor``
  unless the user set it, so a second process compiles the same model in seconds instead of ~30 s.
- A compile that fails (no C++ compiler, an op inductor cannot lower, ...) falls back to eager with
  one line naming the model (:class:`CompileFallbackWarning`); that module is not tried again.
- Every batch is padded to the batch size the copy was compiled for (repeating its last row, a real
  input, so no padded row can produce NaN), so a partial last batch does not trigger a recompile.
- Used as a context manager, an :class:`Encoder` of a conv net fed images runs it channels-last
  (:mod:`helpers.core.layout`), compiled or eager, and leaves its weights contiguous again at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import types
import warnings
from typing import Literal

import torch

from helpers.core import config, layout, storage

Mode = Literal["auto"] | bool

# "auto" assumes a copy runs this much faster than eager: measured 1.42x (plain inductor) to 1.87x
# (freezing) for ViT-B/32 in bf16 on 2 cores; smaller models gain less, so the low end is assumed.
EXPECTED_SPEEDUP = 1.4
# what "auto" expects a compile to cost before it has measured one of this encoder (a cold compile
# of ViT-B/32 or tiny-vit here takes ~30 s; the on-disk cache brings it to ~5 s)
DEFAULT_COMPILE_SECONDS = 30.0

_ours: list[str | None] = [None]  # the TORCHINDUCTOR_CACHE_DIR this module set, if any
_default_mode: list[Mode] = ["auto"]


class CompileFallbackWarning(UserWarning):
    """torch.compile failed for an encoder; it runs eager instead (same numbers, slower)."""


def parse_mode(value) -> Mode:
    """``auto`` / ``true`` / ``false`` (YAML booleans or their strings); anything else is an error."""
    if isinstance(value, bool) or value == "auto":
        return value
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[text]
    raise ValueError(f"{value!r} is not a compile mode: use auto, true or false")


def set_default_mode(mode) -> Mode:
    """The mode used where none is passed: set from the profile's ``encode.compile`` when it loads."""
    _default_mode[0] = parse_mode(mode)
    return _default_mode[0]


def default_mode() -> Mode:
    return _default_mode[0]


def inductor_cache_dir() -> str:
    """Inductor's on-disk cache: the user's ``TORCHINDUCTOR_CACHE_DIR``, else ``<CLIPLAB_CACHE>/inductor``.

    Inductor writes its own default (``/tmp/torchinductor_<user>``) into the variable as soon as
    anything asks for it (importing ``clip`` does), so that value, or one this function set for an
    earlier ``CLIPLAB_CACHE``, does not count as the user's choice.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "").strip()
    if not current or current == _ours[0] or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        _ours[0] = os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(config.cache_dir() / "inductor")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def _target(fn) -> tuple[torch.nn.Module, str] | None:
    """(module, method name) behind an encoder callable; None when it is not a module's method."""
    if isinstance(fn, torch.nn.Module):
        return fn, "forward"
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, torch.nn.Module) and isinstance(fn, types.MethodType):
        return owner, fn.__name__
    return None


def weights_version(module: torch.nn.Module) -> tuple:
    """A key that changes whenever any parameter or buffer of ``module`` is modified or replaced.

    Every in-place write (optimiser steps, ``load_state_dict``'s ``copy_``) bumps a tensor's version
    counter, and assigning a new tensor changes its identity, so derived state cached under this key
    (prompt classifiers, compiled copies) can never outlive the weights it was computed from.
    """
    return tuple((id(t), t._version) for t in module.state_dict(keep_vars=True).values() if torch.is_tensor(t))


class _Call(torch.nn.Module):
    """``module.<method>(x)`` as a module's forward, each instance with a code object of its own:
    dynamo counts recompiles per code object, and one shared ``forward`` would reach its limit (then
    silently run eager) after a handful of models in one process."""

    def __init__(self, module: torch.nn.Module, method: str, label: str):
        super().__init__()
        self.module, self.method = module, method
        f = _Call._forward
        code = f.__code__.replace(co_name=f"encode_{''.join(c if c.isalnum() else '_' for c in label)}")
        self.forward = types.MethodType(types.FunctionType(code, f.__globals__, code.co_name), self)

    def _forward(self, x):
        return getattr(self.module, self.method)(x)


class _Copies:
    """The compiled copies of one module, stored on it: they die with the module, and ``deepcopy`` or
    pickling of the module gives an empty store (a copy's weights are not these weights)."""

    def __init__(self):
        self.entries: dict[tuple, tuple[tuple, torch.nn.Module]] = {}
        self.failed: str | None = None

    def __deepcopy__(self, memo):
        return _Copies()

    def __reduce__(self):
        return _Copies, ()


def _copies(module: torch.nn.Module) -> _Copies:
    store = module.__dict__.get("_cliplab_compiled")
    if store is None:
        store = _Copies()
        object.__setattr__(module, "_cliplab_compiled", store)  # not a submodule: state_dict is unchanged
    return store


def _autocast_of(x: torch.Tensor) -> str:
    dev = x.device.type
    return str(torch.get_autocast_dtype(dev)) if torch.is_autocast_enabled(dev) else "off"


def _compile_key(method: str, x: torch.Tensor) -> tuple:
    return (method, str(x.device), x.dtype, tuple(x.shape), x.stride(), _autocast_of(x), torch.is_grad_enabled())


def _freezing(device: torch.device):
    """Inductor freezing for CPU inference, scoped to the calls of a compiled copy."""
    if device.type == "cpu" and not torch.is_grad_enabled():
        import torch._inductor.config as inductor_config

        return inductor_config.patch(freezing=True)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------- measured compile times
def _timings_file():
    return config.cache_dir() / "inductor" / "cliplab-compile-seconds.json"


def _signature(module: torch.nn.Module, method: str, x: torch.Tensor) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{type(module).__qualname__}.{method}|{n}|{x.device.type}|{tuple(x.shape)}|{x.dtype}|{_autocast_of(x)}"


def expected_compile_seconds(module: torch.nn.Module, method: str, x: torch.Tensor) -> float:
    """0 when a fresh copy for these weights and inputs exists in this process; else the last
    measured compile of this encoder (architecture, input shape, device), else the default guess."""
    store = _copies(module)
    entry = store.entries.get(_compile_key(method, x))
    if entry is not None and entry[0] == weights_version(module):
        return 0.0
    try:
        known = json.loads(_timings_file().read_text())
    except (OSError, ValueError):
        known = {}
    value = known.get(_signature(module, method, x)) if isinstance(known, dict) else None
    return float(value) if isinstance(value, int | float) else DEFAULT_COMPILE_SECONDS


def _remember_compile_seconds(module, method, x, seconds: float) -> None:
    path = _timings_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with storage.file_lock(path.with_suffix(".lock")):
            try:
                known = json.loads(path.read_text())
            except (OSError, ValueError):
                known = {}
            known = known if isinstance(known, dict) else {}
            known[_signature(module, method, x)] = round(seconds, 2)
            storage.atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True))
    except OSError:  # a read-only cache only costs the estimate
        pass


def should_compile(eager_seconds_per_item: float, remaining_items: int, compile_seconds: float,
                   speedup: float = EXPECTED_SPEEDUP) -> bool:
    """``auto``: compile when the eager time it would save on the items still to encode exceeds what
    compiling is expected to cost: ``t_item * remaining * (1 - 1/speedup) > compile_seconds``.

    Simple on purpose: the eager time is measured on the run's first batch (useful work, not a probe),
    the compile cost is the last one measured for this encoder (or a cold-compile guess), the speedup
    the low end of what was measured here. A wrong guess costs at most one compile or one slow run.
    """
    return eager_seconds_per_item * remaining_items * (1 - 1 / speedup) > compile_seconds


class Encoder:
    """One encoding run of ``fn`` over ``n`` items in batches, compiled or eager per ``mode``.

    Call it once per batch inside ``torch.inference_mode()`` and autocast, within ``with Encoder(...)
    as run:`` so a conv net's weights go channels-last for the run (at its first batch of images) and
    come back contiguous after (weights already channels-last, as in a training run, stay so).
    ``auto`` runs the first batch eager and times it (one device sync on CUDA, only then), then
    decides with :func:`should_compile` for the items left; a copy already compiled in this process
    for the same weights costs nothing and is always used. :meth:`card` says what happened, for records.
    """

    def __init__(self, fn, n: int, mode: Mode | None = None, name: str = "encoder"):
        self.fn, self.n, self.name = fn, int(n), name
        self.mode = parse_mode(default_mode() if mode is None else mode)
        self.target = _target(fn)
        self.decision: str | None = None if self.mode is not False else "off"
        if self.target is None and self.mode is not False:
            self.decision = "not a module"
        self.copy: torch.nn.Module | None = None
        self.batch: int | None = None
        self.done = self.compiled_batches = self.batches = 0
        self.compile_seconds = 0.0
        self._fresh = False
        self.channels_last = False
        self._layout: contextlib.ExitStack | None = None  # inside ``with``: where channels-last is undone

    def __enter__(self) -> Encoder:
        self._layout = contextlib.ExitStack()
        return self

    def __exit__(self, *exc) -> None:
        stack, self._layout = self._layout, None
        stack.close()

    @property
    def compiled(self) -> bool:
        return self.compiled_batches > 0

    def card(self) -> dict:
        return {"compile": self.mode, "compiled": self.compiled, "decision": self.decision,
                "compiled_batches": self.compiled_batches, "batches": self.batches,
                "compile_seconds": round(self.compile_seconds, 2), "channels_last": self.channels_last}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.batches == 0 and self._layout is not None and self.target is not None and x.ndim == 4:
            self.channels_last = self._layout.enter_context(layout.channels_last(self.target[0]))
        x = layout.images_in(x, self.channels_last)
        self.batches += 1
        if self.decision is None:
            self._decide(x)
            if self.decision is None:  # auto, first batch: eager and timed
                return self._timed_eager(x)
        if self.copy is not None:
            out = self._run_copy(x)
            if out is not None:
                self.done += x.shape[0]
                return out
        self.done += x.shape[0]
        return self.fn(x)

    # -------------------------------------------------------------------------------- internals
    def _decide(self, x):
        module, method = self.target
        if _copies(module).failed:
            self.decision = "failed before"
            return
        if self.mode is True:
            self.decision = "on"
        elif expected_compile_seconds(module, method, x) == 0.0:
            self.decision = "auto: compiled copy ready"
        elif self.n <= x.shape[0]:
            self.decision = "auto: one batch"
        else:
            return  # auto: time this batch first
        if self.decision in ("on", "auto: compiled copy ready"):
            self.copy = self._get_copy(x)

    def _timed_eager(self, x):
        sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        out = self.fn(x)
        sync()
        per_item = (time.perf_counter() - t0) / max(1, x.shape[0])
        self.done += x.shape[0]
        module, method = self.target
        cost = expected_compile_seconds(module, method, x)
        remaining = self.n - self.done
        if should_compile(per_item, remaining, cost):
            self.decision = f"auto: compile ({remaining} items at {per_item * 1e3:.1f} ms eager; compile ~{cost:.0f} s)"
            self.copy = self._get_copy(x)
        else:
            self.decision = f"auto: eager ({remaining} items at {per_item * 1e3:.1f} ms do not repay ~{cost:.0f} s)"
        return out

    def _get_copy(self, x) -> torch.nn.Module | None:
        """The compiled copy for the current weights (inductor compiles it at its first call)."""
        module, method = self.target
        store, key, version = _copies(module), _compile_key(method, x), weights_version(module)
        entry = store.entries.get(key)
        if entry is None or entry[0] != version:
            inductor_cache_dir()
            store.entries = {k: v for k, v in store.entries.items() if v[0] == version}  # stale copies go
            try:
                store.entries[key] = (version, torch.compile(_Call(module, method, self.name), dynamic=False))
            except Exception as e:
                return self._fail(e)
            self._fresh = True
        self.batch = x.shape[0]
        return store.entries[key][1]

    def _fail(self, e: Exception) -> None:
        """Eager from now on for this module, said in one line naming the model."""
        module, _ = self.target
        store = _copies(module)
        store.failed, self.copy, self.decision = f"{type(e).__name__}: {e}", None, f"failed: {type(e).__name__}"
        store.entries.clear()
        first = (str(e).strip().splitlines() or [""])[0][:160]
        warnings.warn(f"torch.compile failed for {self.name} ({type(e).__name__}: {first}); encoding eager",
                      CompileFallbackWarning, stacklevel=4)

    def _run_copy(self, x) -> torch.Tensor | None:
        n = x.shape[0]
        if n < self.batch:  # pad with real rows so the compiled shape is kept
            x = layout.images_in(torch.cat([x, x[-1:].expand(self.batch - n, *x.shape[1:])]), self.channels_last)
        t0 = time.perf_counter()
        try:
            with _freezing(x.device):
                out = self.copy(x)
        except Exception as e:  # compile errors surface at the first call; any of them means eager
            return self._fail(e)
        if self._fresh:
            self._fresh = False
            self.compile_seconds = time.perf_counter() - t0
            module, method = self.target
            _remember_compile_seconds(module, method, x, self.compile_seconds)
        self.compiled_batches += 1
        return out[:n]
