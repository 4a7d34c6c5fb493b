"""Linear probes: k-shot sampling, the C sweep of the logistic probe, logits over all classes, the
zero-shot-initialised head and the confidence interval over seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression

from helpers.eval import probes, zeroshot


def gaussian_features(n_per_class: int, c: int = 4, d: int = 16, spread: float = 1.0, seed: int = 0,
                      centers: np.ndarray | None = None):
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = np.random.default_rng(100).normal(size=(c, d)) * spread
    y = np.repeat(np.arange(len(centers)), n_per_class)
    return (centers[y] + rng.normal(size=(len(y), centers.shape[1]))).astype(np.float32), y, centers


# ---------------------------------------------------------------------------------------- k-shot
LABELS = np.array([0] * 10 + [1] * 7 + [2] * 3 + [3] * 12)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_kshot_k_per_class_and_all_of_small_classes(k):
    idx = probes.kshot_indices(LABELS, k, seed=0)
    counts = np.bincount(LABELS[idx], minlength=4)
    assert counts.tolist() == [min(k, n) for n in (10, 7, 3, 12)]
    assert len(np.unique(idx)) == len(idx)  # without replacement
    assert np.all(np.diff(idx) > 0)  # sorted
    assert idx.min() >= 0 and idx.max() < len(LABELS)


def test_kshot_class_smaller_than_k_gives_all_of_it():
    idx = probes.kshot_indices(LABELS, 8, seed=3)
    assert set(np.flatnonzero(LABELS == 2)) <= set(idx.tolist())
    assert np.bincount(LABELS[idx]).tolist() == [8, 7, 3, 8]


def test_kshot_deterministic_per_seed_and_different_across_seeds():
    a = probes.kshot_indices(LABELS, 3, seed=1)
    assert np.array_equal(a, probes.kshot_indices(LABELS, 3, seed=1))
    others = [probes.kshot_indices(LABELS, 3, seed=s) for s in (2, 3, 4)]
    assert all(not np.array_equal(a, o) for o in others)


def test_kshot_labels_need_not_be_contiguous():
    labels = np.array([7, 7, 7, 2, 2, 9, 9, 9, 9])
    idx = probes.kshot_indices(labels, 2, seed=0)
    assert sorted(labels[idx].tolist()) == [2, 2, 7, 7, 9, 9]


def test_kshot_from_train_never_touches_val_or_test(synthetic_root):
    from helpers.data import synthetic

    splits = synthetic.load_synthetic(root=synthetic_root)
    train, val, test = splits["train"], splits["val"], splits["test"]
    for seed in (0, 1, 2):
        idx = probes.kshot_indices(train.labels, 4, seed)
        sample = train.subset(idx)
        chosen = {str(p) for p in sample.paths}
        assert len(chosen) == 4 * train.num_classes
        assert chosen <= {str(p) for p in train.paths}
        assert not chosen & {str(p) for p in val.paths}
        assert not chosen & {str(p) for p in test.paths}
        assert np.array_equal(sample.labels, train.labels[idx])


# -------------------------------------------------------------------------------- logistic probe
def _manual_sweep(xt, yt, xv, yv, grid):
    nt = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    nv = xv / np.linalg.norm(xv, axis=1, keepdims=True)
    scores = {}
    for C in grid:
        clf = LogisticRegression(C=C, max_iter=1000, tol=1e-4).fit(nt, yt)
        scores[C] = float((clf.predict(nv) == yv).mean())
    return scores


def test_fit_logistic_chooses_the_c_with_best_val_accuracy():
    centers = np.random.default_rng(5).normal(size=(4, 16)) * 0.6  # overlapping classes: C matters
    xt, yt, _ = gaussian_features(8, centers=centers, seed=1)
    xv, yv, _ = gaussian_features(30, centers=centers, seed=2)
    grid = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    fit = probes.fit_logistic(xt, yt, xv, yv, grid=grid, refit_on_val=False)
    manual = _manual_sweep(xt, yt, xv, yv, grid)
    assert fit.val_scores == pytest.approx(manual)
    assert set(fit.val_scores) == set(grid)
    best = max(manual.values())
    assert fit.val_scores[fit.C] == best
    # ties are broken towards C = 1 (log scale); here C = 1e-3 and 1e-2 tie
    assert fit.C == min((c for c in grid if manual[c] == best), key=lambda c: abs(np.log10(c)))
    assert len(set(manual.values())) > 1  # the sweep is informative on this data
    # refit_on_val=False: the probe is the train-only fit with that C (warm-started along the C path,
    # so equal to a cold fit up to the solver's tolerance)
    nt = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    ref = LogisticRegression(C=fit.C, max_iter=1000, tol=1e-4).fit(nt, yt)
    np.testing.assert_allclose(fit.model.coef_, ref.coef_, rtol=1e-2, atol=2e-4)


def test_fit_logistic_refit_on_val_trains_on_train_plus_val():
    xt, yt, centers = gaussian_features(5, c=3, spread=3.0, seed=1)
    # validation holds a 4th class the train sample lacks: only a fit on train + val can know it
    xv3, yv3, _ = gaussian_features(5, centers=np.vstack([centers, np.full((1, 16), 3.0)]), seed=2)
    grid = (0.1, 1.0, 10.0)
    refit = probes.fit_logistic(xt, yt, xv3, yv3, grid=grid, refit_on_val=True)
    train_only = probes.fit_logistic(xt, yt, xv3, yv3, grid=grid, refit_on_val=False)
    assert refit.model.classes_.tolist() == [0, 1, 2, 3]
    assert train_only.model.classes_.tolist() == [0, 1, 2]
    assert refit.C == train_only.C
    n_all = len(yt) + len(yv3)
    x_all = np.concatenate([xt, xv3])
    x_all = x_all / np.linalg.norm(x_all, axis=1, keepdims=True)
    ref = LogisticRegression(C=refit.C, max_iter=1000, tol=1e-4).fit(x_all, np.concatenate([yt, yv3]))
    np.testing.assert_allclose(refit.model.coef_, ref.coef_, rtol=1e-3, atol=1e-5)
    assert refit.model.n_features_in_ == 16 and n_all == 35


def test_fit_logistic_needs_two_classes():
    x, y, _ = gaussian_features(5)
    with pytest.raises(ValueError, match="two classes"):
        probes.fit_logistic(x[y == 0], y[y == 0], x, y)


def test_logits_normalise_features_first():
    x, y, _ = gaussian_features(10, c=3)
    fit = probes.fit_logistic(x, y, x, y, grid=(1.0,))
    np.testing.assert_allclose(fit.logits(x), fit.logits(5.0 * x), rtol=1e-5, atol=1e-5)


def test_full_logits_fills_missing_classes_with_minus_inf():
    x, y, _ = gaussian_features(6, c=5, spread=3.0)
    keep = np.isin(y, [0, 2, 4])
    fit = probes.fit_logistic(x[keep], y[keep], x[keep], y[keep], grid=(1.0,))
    full = probes.full_logits(fit, x, num_classes=6)
    assert full.shape == (len(x), 6)
    assert np.isneginf(full[:, [1, 3, 5]]).all()
    assert np.isfinite(full[:, [0, 2, 4]]).all()
    np.testing.assert_allclose(full[:, [0, 2, 4]], fit.logits(x))
    assert set(full.argmax(1).tolist()) <= {0, 2, 4}
    # the softmax over all classes equals sklearn's probabilities (missing classes get 0)
    probs = softmax(full, axis=1)
    np.testing.assert_allclose(probs[:, [0, 2, 4]], fit.model.predict_proba(probes._prep(x)), atol=1e-6)
    m = probes.evaluate_logits(full, y, 6)
    assert 0.0 <= m["top1"] <= 1.0 and m["per_class_recall"][1] == 0.0


def test_full_logits_binary_case():
    x, y, _ = gaussian_features(20, c=4, spread=1.0)
    keep = np.isin(y, [1, 3])
    fit = probes.fit_logistic(x[keep], y[keep], x[keep], y[keep], grid=(1.0,))
    assert fit.logits(x).ndim == 1  # sklearn's one-column binary output
    full = probes.full_logits(fit, x, num_classes=4)
    assert full.shape == (len(x), 4)
    assert np.isneginf(full[:, [0, 2]]).all()
    pred = fit.model.predict(probes._prep(x))
    assert np.array_equal(full.argmax(1), pred)
    # the two columns are calibrated like sklearn's own probabilities (not a sharpened sigmoid)
    np.testing.assert_allclose(softmax(full, axis=1)[:, [1, 3]], fit.model.predict_proba(probes._prep(x)),
                               atol=1e-6)


def test_separable_features_give_perfect_accuracy():
    xt, yt, centers = gaussian_features(20, c=5, d=32, spread=6.0, seed=1)
    xv, yv, _ = gaussian_features(10, centers=centers, seed=2)
    xs, ys, _ = gaussian_features(30, centers=centers, seed=3)
    fit = probes.fit_logistic(xt, yt, xv, yv)
    assert max(fit.val_scores.values()) == 1.0
    m = probes.evaluate_logits(probes.full_logits(fit, xs, 5), ys, 5)
    assert m["top1"] == 1.0 and m["n"] == len(ys)
    # and a k-shot probe from the same train split
    idx = probes.kshot_indices(yt, 2, seed=0)
    kfit = probes.fit_logistic(xt[idx], yt[idx], xv, yv, refit_on_val=False)
    assert probes.evaluate_logits(probes.full_logits(kfit, xs, 5), ys, 5)["top1"] >= 0.95


# ------------------------------------------------------------------------ zero-shot-initialised head
def _zero_shot_setup(seed: int = 0):
    """Features near class directions; a 'text' classifier that is a noisy version of them."""
    xt, yt, centers = gaussian_features(4, c=5, d=24, spread=1.0, seed=seed + 1)
    xv, yv, _ = gaussian_features(20, centers=centers, seed=seed + 2)
    rng = np.random.default_rng(seed + 3)
    cls = F.normalize(torch.from_numpy(centers + 1.2 * rng.normal(size=centers.shape)).float(), dim=-1)
    return xt, yt, xv, yv, cls


def test_zero_shot_init_with_no_steps_is_the_zero_shot_classifier():
    xt, yt, xv, yv, cls = _zero_shot_setup()
    head = probes.zero_shot_init_probe(xt, yt, xv, yv, cls, scale=100.0, steps=0)
    assert head["best_step"] == 0
    expected = zeroshot.logits(torch.from_numpy(xv), cls, 100.0).numpy()
    got = probes.head_logits(head, xv)
    assert got.shape == (len(xv), 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    zs_acc = float((expected.argmax(1) == yv).mean())
    assert head["val_top1"] == pytest.approx(zs_acc)
    assert torch.equal(head["bias"], torch.zeros(5))


def test_zero_shot_init_probe_never_worse_than_zero_shot_on_val():
    for seed in (0, 1):
        xt, yt, xv, yv, cls = _zero_shot_setup(seed)
        zs_acc = float((zeroshot.logits(torch.from_numpy(xv), cls, 50.0).argmax(1).numpy() == yv).mean())
        head = probes.zero_shot_init_probe(xt, yt, xv, yv, cls, scale=50.0, steps=60, lr=1e-2, seed=seed)
        assert head["val_top1"] >= zs_acc
        logits = probes.head_logits(head, xv)
        assert logits.shape == (len(xv), 5)
        assert head["val_top1"] == pytest.approx(float((logits.argmax(1) == yv).mean()))
        assert head["best_step"] == 0 or head["best_step"] % 10 == 0 or head["best_step"] == 60
        if head["best_step"] > 0:
            assert head["val_top1"] > zs_acc  # a step is only kept when it is strictly better


def test_zero_shot_init_probe_is_deterministic():
    xt, yt, xv, yv, cls = _zero_shot_setup()
    a = probes.zero_shot_init_probe(xt, yt, xv, yv, cls, scale=50.0, steps=30, lr=1e-2, weight_decay=0.01)
    b = probes.zero_shot_init_probe(xt, yt, xv, yv, cls, scale=50.0, steps=30, lr=1e-2, weight_decay=0.01)
    assert torch.equal(a["weight"], b["weight"]) and a["best_step"] == b["best_step"]


# ------------------------------------------------------------------------------------ intervals
def test_mean_ci_matches_scipy_t_interval():
    values = [0.71, 0.74, 0.69, 0.78, 0.73]
    m, lo, hi = probes.mean_ci(values)
    ref_lo, ref_hi = stats.t.interval(0.95, df=len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert m == pytest.approx(np.mean(values))
    assert lo == pytest.approx(ref_lo) and hi == pytest.approx(ref_hi)
    m90, lo90, hi90 = probes.mean_ci(values, confidence=0.9)
    assert lo < lo90 < m90 < hi90 < hi
    # hand case: [1, 2, 3] -> mean 2, sd 1, t(0.975, 2) = 4.302653
    m, lo, hi = probes.mean_ci([1.0, 2.0, 3.0])
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - 4.302653 / np.sqrt(3), 2.0 + 4.302653 / np.sqrt(3)), rel=1e-6)


def test_mean_ci_single_value_has_zero_width():
    assert probes.mean_ci([0.8]) == (0.8, 0.8, 0.8)
    m, lo, hi = probes.mean_ci([0.5, 0.5, 0.5])
    assert m == lo == hi == 0.5
