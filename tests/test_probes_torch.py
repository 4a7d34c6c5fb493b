"""The torch logistic probe (L-BFGS on the device) against scikit-learn's: same objective, same C sweep,
same choice; and the backend switch (auto: torch on CUDA, sklearn on the CPU) stated in each row."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import profiles, settings
from helpers.eval import probes


def _blobs(n_per_class: int, c: int, d: int, spread: float, seed: int, centers=None):
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = np.random.default_rng(100 + c).normal(size=(c, d)) * spread
    y = np.repeat(np.arange(c), n_per_class)
    return (centers[y] + rng.normal(size=(len(y), d))).astype(np.float32), y, centers


def _both(xt, yt, xv, yv, **kw):
    return {b: probes.fit_logistic(xt, yt, xv, yv, backend=b, device="cpu", **kw) for b in ("sklearn", "torch")}


def _assert_same_probe(fits, xs, ys, c):
    sk, th = fits["sklearn"], fits["torch"]
    assert (sk.backend, th.backend) == ("sklearn", "torch")
    assert sk.C == th.C or abs(sk.val_scores[sk.C] - th.val_scores[th.C]) <= 1e-3
    for fit in (sk, th):
        assert set(fit.val_scores) == set(probes.C_GRID)
    acc = {b: float((probes.full_logits(f, xs, c).argmax(1) == ys).mean()) for b, f in fits.items()}
    assert abs(acc["sklearn"] - acc["torch"]) <= 1e-2, acc
    if sk.C == th.C:  # the same objective at the same C: the same probabilities
        x = probes._prep(xs)
        np.testing.assert_allclose(th.model.predict_proba(x), sk.model.predict_proba(x), atol=2e-2)


@pytest.mark.parametrize("c, d, spread, refit", [(5, 32, 0.6, True), (10, 64, 0.4, False), (2, 16, 0.5, True)])
def test_torch_and_sklearn_choose_the_same_c_and_agree_on_test(c, d, spread, refit, one_thread):
    xt, yt, centers = _blobs(16, c, d, spread, seed=1)
    xv, yv, _ = _blobs(30, c, d, spread, seed=2, centers=centers)
    xs, ys, _ = _blobs(40, c, d, spread, seed=3, centers=centers)
    fits = _both(xt, yt, xv, yv, refit_on_val=refit)
    _assert_same_probe(fits, xs, ys, c)
    if c == 2:  # binary: one weight vector (sklearn's parameterisation, not a 2-column softmax)
        assert fits["torch"].model.coef_.shape == fits["sklearn"].model.coef_.shape == (1, d)
        assert fits["torch"].logits(xs).ndim == 1


def test_same_objective_as_sklearn_at_a_fixed_c(one_thread):
    """One C, fitted to tolerance: the weights themselves agree (bias unpenalised, 0.5||W||^2 + C * sum CE)."""
    xt, yt, _ = _blobs(20, 4, 16, 0.8, seed=4)
    fits = _both(xt, yt, xt, yt, grid=(0.5,), refit_on_val=False)
    np.testing.assert_allclose(fits["torch"].model.coef_, fits["sklearn"].model.coef_, atol=2e-3)
    np.testing.assert_allclose(fits["torch"].model.intercept_, fits["sklearn"].model.intercept_, atol=2e-3)


def test_features_of_a_few_classes_through_kshot_rows(one_thread):
    """Real probe rows (k-shot and all, a class missing from a 1-shot draw never happens: k per class) on
    features of a few classes; each row says which backend ran."""
    c, d = 4, 48
    xt, yt, centers = _blobs(12, c, d, 0.5, seed=5)
    xv, yv, _ = _blobs(10, c, d, 0.5, seed=6, centers=centers)
    xs, ys, _ = _blobs(25, c, d, 0.5, seed=7, centers=centers)
    f = [SimpleNamespace(features=torch.from_numpy(x), labels=y) for x, y in ((xt, yt), (xv, yv), (xs, ys))]
    rows = {b: probes.kshot_rows(*f, num_classes=c, ks=[4, "all"], seeds=[0], backend=b) for b in ("sklearn", "torch")}
    for sk, th in zip(rows["sklearn"], rows["torch"], strict=True):
        assert (sk["probe_backend"], th["probe_backend"]) == ("sklearn", "torch")
        assert (sk["k"], sk["n_train"]) == (th["k"], th["n_train"])
        assert sk["C"] == th["C"] or abs(sk["val_top1_at_C"] - th["val_top1_at_C"]) <= 1e-3
        assert abs(sk["metrics"]["top1"] - th["metrics"]["top1"]) <= 1e-2


def test_refit_with_a_class_only_val_holds_cold_starts_the_torch_fit(one_thread):
    xt, yt, centers = _blobs(6, 3, 16, 3.0, seed=1)
    xv, yv, _ = _blobs(6, 4, 16, 3.0, seed=2, centers=np.vstack([centers, np.full((1, 16), 3.0)]))
    fit = probes.fit_logistic(xt, yt, xv, yv, grid=(0.1, 1.0), backend="torch", device="cpu")
    assert fit.model.classes_.tolist() == [0, 1, 2, 3] and fit.model.coef_.shape == (4, 16)
    assert probes.full_logits(fit, xv, 5)[:, 4].tolist() == [-np.inf] * len(xv)


def test_auto_is_sklearn_on_cpu_and_torch_on_cuda(monkeypatch):
    assert probes.resolve_backend("auto", "cpu") == "sklearn"
    assert probes.resolve_backend("auto", "cuda:0") == "torch"
    assert probes.resolve_backend("torch", "cpu") == "torch"
    monkeypatch.setenv("CLIPLAB_DEVICE", "cpu")
    assert probes.resolve_backend() == "sklearn"
    with pytest.raises(ValueError, match="few_shot.probe_backend"):
        probes.resolve_backend("cuml")


def test_probe_backend_setting_is_validated():
    assert profiles.load("smoke").config.few_shot.probe_backend == "auto"
    assert profiles.load("smoke", {"few_shot.probe_backend": "torch"})["few_shot"]["probe_backend"] == "torch"
    with pytest.raises(settings.ConfigError, match="few_shot.probe_backend"):
        profiles.load("smoke", {"few_shot.probe_backend": "gpu"})
