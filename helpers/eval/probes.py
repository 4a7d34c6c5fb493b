"""Linear probes on frozen features: k-shot sampling, the CLIP paper's logistic-regression probe, and a
zero-shot-initialised torch linear head.

Protocol (CLIP paper, appendix A.3): scikit-learn's L-BFGS logistic regression on L2-normalised
features; the inverse regularisation strength C is chosen by a sweep on the validation split; the
probe is then refit with that C on train + val and reported on test. k-shot probes draw k images per
class from the train split only (validation and test are never sampled), for several seeds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from helpers.eval import metrics

C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 13))


def _prep(x) -> np.ndarray:
    x = torch.as_tensor(x).float()
    return F.normalize(x, dim=-1).numpy()


def kshot_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k indices per class drawn without replacement with ``seed`` (all of a class when it has fewer)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out))


@dataclass
class ProbeFit:
    model: LogisticRegression
    C: float
    val_scores: dict  # C -> val top-1 of the sweep

    def logits(self, x) -> np.ndarray:
        return self.model.decision_function(_prep(x))


def _fit(x: np.ndarray, y: np.ndarray, C: float, max_iter: int, start: LogisticRegression | None = None
         ) -> LogisticRegression:
    """L-BFGS logistic regression; ``start`` (a fit on the same classes) warm-starts the solver."""
    if start is not None and not np.array_equal(np.unique(y), start.classes_):
        start = None  # another set of classes (e.g. val holds one the k-shot sample lacks): cold start
    clf = LogisticRegression(C=C, max_iter=max_iter, tol=1e-4, warm_start=start is not None)
    if start is not None:
        clf.coef_, clf.intercept_ = start.coef_.copy(), start.intercept_.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def fit_logistic(train_x, train_y, val_x, val_y, grid=C_GRID, refit_on_val: bool = True,
                 max_iter: int = 1000) -> ProbeFit:
    """Sweep C on validation, then refit with the best C (on train + val when ``refit_on_val``).

    The sweep runs from strong to weak regularisation, each fit warm-started from the previous
    solution (the regularisation path), which makes the full sweep a few times cheaper than cold fits.
    """
    xt, xv = _prep(train_x), _prep(val_x)
    yt, yv = np.asarray(train_y), np.asarray(val_y)
    if len(np.unique(yt)) < 2:
        raise ValueError("a probe needs at least two classes in its training sample")
    scores, fits, previous = {}, {}, None
    for C in sorted(grid):
        previous = fits[C] = _fit(xt, yt, C, max_iter, start=previous)
        scores[C] = float((previous.predict(xv) == yv).mean())
    best = max(grid, key=lambda c: (scores[c], -abs(np.log10(c))))  # ties: the C nearest 1 (centre of the grid)
    if not refit_on_val:
        return ProbeFit(fits[best], best, scores)
    x_all, y_all = np.concatenate([xt, xv]), np.concatenate([yt, yv])
    return ProbeFit(_fit(x_all, y_all, best, max_iter, start=fits[best]), best, scores)


def full_logits(fit: ProbeFit, x, num_classes: int) -> np.ndarray:
    """[N, C] logits over all classes even if the probe's training sample lacked some."""
    raw = fit.logits(x)
    if raw.ndim == 1:  # binary case: sklearn returns one column (the log-odds of classes_[1]);
        raw = np.stack([-raw / 2, raw / 2], axis=1)  # halved so the softmax equals predict_proba
    out = np.full((raw.shape[0], num_classes), -np.inf, dtype=np.float64)
    out[:, fit.model.classes_] = raw
    return out


def zero_shot_init_probe(train_x, train_y, val_x, val_y, classifier: torch.Tensor, scale: float,
                         steps: int = 300, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0) -> dict:
    """A torch linear head initialised with the zero-shot text classifier (W = scale x class embeddings),
    trained full-batch with AdamW on the k-shot sample; the step with the best val top-1 is kept.

    Returns {"weight", "bias", "best_step", "val_top1"}; step 0 is the zero-shot classifier itself, so
    the probe can never do worse on val than zero-shot.
    """
    torch.manual_seed(seed)
    xt, xv = torch.from_numpy(_prep(train_x)), torch.from_numpy(_prep(val_x))
    yt, yv = torch.as_tensor(np.asarray(train_y)), torch.as_tensor(np.asarray(val_y))
    head = torch.nn.Linear(xt.shape[1], classifier.shape[0])
    with torch.no_grad():
        head.weight.copy_(classifier.float() * scale)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)

    def val_acc() -> float:
        with torch.no_grad():
            return float((head(xv).argmax(1) == yv).float().mean())

    best = (val_acc(), 0, {k: v.clone() for k, v in head.state_dict().items()})
    for step in range(1, steps + 1):
        opt.zero_grad()
        F.cross_entropy(head(xt), yt).backward()
        opt.step()
        if step % 10 == 0 or step == steps:
            acc = val_acc()
            if acc > best[0]:
                best = (acc, step, {k: v.clone() for k, v in head.state_dict().items()})
    return {"weight": best[2]["weight"], "bias": best[2]["bias"], "best_step": best[1], "val_top1": best[0]}


def head_logits(head: dict, x) -> np.ndarray:
    return (torch.from_numpy(_prep(x)) @ head["weight"].T + head["bias"]).numpy()


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a Student-t confidence interval over seeds (zero width for one value)."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return m, m, m
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half


def evaluate_logits(logits, labels, num_classes: int) -> dict:
    return metrics.classification_metrics(np.nan_to_num(logits, neginf=-1e9), labels, num_classes)


def kshot_rows(f_train, f_val, f_test, num_classes: int, ks, seeds, zs=None, max_iter: int = 1000,
               notes: list | None = None) -> list[dict]:
    """Linear-probe points (k, seed): k-shot from train only; C swept on val; 'all' refit on train+val.

    A k larger than the smallest class's train images is skipped (a note is appended to ``notes``):
    the probe would train on fewer than k images of that class, and its label would overstate it.

    ``zs``: (classifier, scale) to also train a zero-shot-initialised torch head on each k-shot sample.
    Each row's ``predictions`` are its test predictions (for the record's per-image correctness).
    """
    rows = []
    y_train = f_train.labels
    counts = np.bincount(y_train, minlength=num_classes)
    for k in ks:
        if k != "all" and int(k) > counts.min():
            short = [int(c) for c in np.flatnonzero(counts < int(k))]
            note = (f"k={k} skipped: {len(short)} class(es) have fewer than {k} train images "
                    f"(class index {short[0]} has {counts[short[0]]}); a {k}-shot label would overstate it")
            if notes is not None:
                notes.append(note)
            continue
        k_seeds = [seeds[0]] if k == "all" else seeds  # the full probe is deterministic: one fit
        for seed in k_seeds:
            idx = np.arange(len(y_train)) if k == "all" else kshot_indices(y_train, int(k), seed)
            fit = fit_logistic(f_train.features[idx], y_train[idx], f_val.features, f_val.labels,
                                      refit_on_val=(k == "all"), max_iter=max_iter)
            test_logits = full_logits(fit, f_test.features, num_classes)
            m = evaluate_logits(test_logits, f_test.labels, num_classes)
            rows.append({"head": "linear probe", "k": k, "seed": seed, "n_train": len(idx), "C": fit.C,
                         "val_top1_at_C": fit.val_scores[fit.C], "metrics": m,
                         "predictions": np.asarray(test_logits).argmax(axis=1)})
            if zs is not None and k != "all":
                head = zero_shot_init_probe(f_train.features[idx], y_train[idx], f_val.features,
                                                   f_val.labels, zs[0], zs[1], seed=seed)
                test_logits = head_logits(head, f_test.features)
                m = evaluate_logits(test_logits, f_test.labels, num_classes)
                rows.append({"head": "zero-shot-init probe", "k": k, "seed": seed, "n_train": len(idx),
                             "best_step": head["best_step"], "val_top1": head["val_top1"], "metrics": m,
                             "predictions": np.asarray(test_logits).argmax(axis=1)})
    return rows
