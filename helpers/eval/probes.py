"""Linear probes on frozen features: k-shot sampling, the CLIP paper's logistic-regression probe, and a
zero-shot-initialised torch linear head.

Protocol (CLIP paper, appendix A.3): scikit-learn's L-BFGS logistic regression on L2-normalised
features; the inverse regularisation strength C is chosen by a sweep on the validation split; the
probe is then refit with that C on train + val and reported on test. k-shot probes draw k images per
class from the train split only (validation and test are never sampled), for several seeds.

Two backends fit the same objective (``C * sum of per-sample cross-entropy + 0.5 * ||W||^2``, bias not
penalised; a binary probe has one weight vector, like scikit-learn's): ``sklearn`` (the reference, on the
CPU) and ``torch`` (L-BFGS on the device; at full scale a sweep of 13 fits on ~20k x 2048 features is
minutes on a CPU and seconds on a GPU). ``auto`` picks torch on CUDA and sklearn (the reference) on
the CPU. Both share the sweep, the warm starts and the selection rule.

The sklearn probe runs its BLAS and OpenMP on ``SKLEARN_THREADS`` (1) thread, on any machine: its GEMMs
are skinny (one column per class), so a second thread only adds overhead (the full EuroSAT sweep on
512-d features: 45 s on 2 threads, 31 s on 1, on a 2-core VM), and a thread count that varies with the
machine splits its sums differently and moves the result: the same features gave C=100, 60.1 % test
top-1 on 2 threads and C=316, 60.8 % on 1. With one thread a probe is the same on every machine.
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
from threadpoolctl import threadpool_limits

from helpers.core import config
from helpers.eval import metrics

C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 13))
PROBE_BACKENDS = ("auto", "sklearn", "torch")
SKLEARN_THREADS = 1  # BLAS/OpenMP threads of a scikit-learn fit (see the module docstring)


def resolve_backend(backend: str = "auto", device=None) -> str:
    """``auto`` -> ``torch`` when the probe's device is CUDA, else ``sklearn`` (the CPU reference)."""
    if backend not in PROBE_BACKENDS:
        raise ValueError(f"probe backend {backend!r}: use one of {', '.join(PROBE_BACKENDS)} "
                         "(setting few_shot.probe_backend)")
    if backend != "auto":
        return backend
    return "torch" if torch.device(device or config.device()).type == "cuda" else "sklearn"


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


class TorchLogistic:
    """Logistic regression fit by full-batch L-BFGS on a torch device, with scikit-learn's objective,
    stopping rule (max |gradient| <= ``tol`` of the per-sample-mean objective) and surface (``classes_``,
    ``coef_``, ``intercept_``, ``decision_function``, ``predict``, ``predict_proba``), so the sweep and
    :func:`full_logits` treat both backends alike."""

    def __init__(self, C: float, max_iter: int = 1000, tol: float = 1e-4, device=None):
        self.C, self.max_iter, self.tol = float(C), int(max_iter), float(tol)
        self.device = torch.device(device or config.device())

    def _x(self, x) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    def _full(self, z: torch.Tensor) -> torch.Tensor:
        """Binary probes keep one column (the log-odds of ``classes_[1]``), as sklearn does; class 0's is 0."""
        return torch.cat([torch.zeros_like(z), z], dim=1) if z.shape[1] == 1 else z

    def fit(self, x, y, start: TorchLogistic | None = None) -> TorchLogistic:
        x = self._x(x)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        self.n_features_in_ = int(x.shape[1])
        target = torch.as_tensor(np.searchsorted(self.classes_, y), device=self.device)
        k = 1 if len(self.classes_) == 2 else len(self.classes_)
        if start is not None:
            W, b = start._W.detach().clone(), start._b.detach().clone()
        else:
            W = torch.zeros(k, x.shape[1], device=self.device)
            b = torch.zeros(k, device=self.device)
        W.requires_grad_(True)
        b.requires_grad_(True)
        reg = 0.5 / (self.C * len(x))  # sklearn's objective divided by C * n (the same minimiser)
        opt = torch.optim.LBFGS([W, b], lr=1, max_iter=self.max_iter, max_eval=int(self.max_iter * 1.25),
                                tolerance_grad=self.tol, tolerance_change=1e-12, history_size=10,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(self._full(x @ W.T + b), target) + reg * (W * W).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.n_iter_ = int(opt.state[opt._params[0]].get("n_iter", 0))
        self._W, self._b = W.detach(), b.detach()
        self.coef_ = self._W.cpu().double().numpy()
        self.intercept_ = self._b.cpu().double().numpy()
        return self

    def _logits(self, x) -> torch.Tensor:
        with torch.no_grad():
            return self._x(x) @ self._W.T + self._b

    def decision_function(self, x) -> np.ndarray:
        z = self._logits(x).cpu().double().numpy()
        return z[:, 0] if z.shape[1] == 1 else z

    def predict(self, x) -> np.ndarray:
        return self.classes_[self._full(self._logits(x)).argmax(1).cpu().numpy()]

    def predict_proba(self, x) -> np.ndarray:
        return torch.softmax(self._full(self._logits(x)).double(), dim=1).cpu().numpy()


@dataclass
class ProbeFit:
    model: LogisticRegression | TorchLogistic
    C: float
    val_scores: dict  # C -> val top-1 of the sweep
    backend: str = "sklearn"  # which implementation fitted it (stated in every probe's record)

    @property
    def threads(self) -> int | None:
        """CPU threads of the fit: fixed for sklearn; the torch backend's are the device's own."""
        return SKLEARN_THREADS if self.backend == "sklearn" else None

    def logits(self, x) -> np.ndarray:
        return self.model.decision_function(_prep(x))


def _fit(x, y: np.ndarray, C: float, max_iter: int, start=None, backend: str = "sklearn", device=None):
    """L-BFGS logistic regression; ``start`` (a fit on the same classes) warm-starts the solver."""
    if start is not None and not np.array_equal(np.unique(y), start.classes_):
        start = None  # another set of classes (e.g. val holds one the k-shot sample lacks): cold start
    if backend == "torch":
        return TorchLogistic(C, max_iter, tol=1e-4, device=device).fit(x, y, start=start)
    clf = LogisticRegression(C=C, max_iter=max_iter, tol=1e-4, warm_start=start is not None)
    if start is not None:
        clf.coef_, clf.intercept_ = start.coef_.copy(), start.intercept_.copy()
    with warnings.catch_warnings(), threadpool_limits(limits=SKLEARN_THREADS):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def fit_logistic(train_x, train_y, val_x, val_y, grid=C_GRID, refit_on_val: bool = True,
                 max_iter: int = 1000, backend: str = "auto", device=None) -> ProbeFit:
    """Sweep C on validation, then refit with the best C (on train + val when ``refit_on_val``).

    The sweep runs from strong to weak regularisation, each fit warm-started from the previous
    solution (the regularisation path), which makes the full sweep a few times cheaper than cold fits.
    ``backend``: sklearn | torch | auto (see :func:`resolve_backend`); ``device`` for torch.
    """
    backend = resolve_backend(backend, device)
    xt, xv = _prep(train_x), _prep(val_x)
    yt, yv = np.asarray(train_y), np.asarray(val_y)
    if len(np.unique(yt)) < 2:
        raise ValueError("a probe needs at least two classes in its training sample")
    x_all = np.concatenate([xt, xv]) if refit_on_val else None
    if backend == "torch":  # features moved to the device once for the whole sweep
        dev = torch.device(device or config.device())
        xt, xv = (torch.from_numpy(a).to(dev) for a in (xt, xv))
        x_all = torch.from_numpy(x_all).to(dev) if x_all is not None else None
    scores, fits, previous = {}, {}, None
    for C in sorted(grid):
        previous = fits[C] = _fit(xt, yt, C, max_iter, start=previous, backend=backend, device=device)
        scores[C] = float((previous.predict(xv) == yv).mean())
    best = max(grid, key=lambda c: (scores[c], -abs(np.log10(c))))  # ties: the C nearest 1 (centre of the grid)
    if not refit_on_val:
        return ProbeFit(fits[best], best, scores, backend)
    y_all = np.concatenate([yt, yv])
    return ProbeFit(_fit(x_all, y_all, best, max_iter, start=fits[best], backend=backend, device=device),
                    best, scores, backend)


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
               notes: list | None = None, backend: str = "auto") -> list[dict]:
    """Linear-probe points (k, seed): k-shot from train only; C swept on val; 'all' refit on train+val.

    A k larger than the smallest class's train images is skipped (a note is appended to ``notes``):
    the probe would train on fewer than k images of that class, and its label would overstate it.

    ``zs``: (classifier, scale) to also train a zero-shot-initialised torch head on each k-shot sample.
    Each row's ``predictions`` are its test predictions (for the record's per-image correctness).
    ``backend`` (``few_shot.probe_backend``): the logistic probe's implementation; each linear-probe row
    states the one that ran as ``probe_backend`` (so does the record's protocol).
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
                               refit_on_val=(k == "all"), max_iter=max_iter, backend=backend)
            test_logits = full_logits(fit, f_test.features, num_classes)
            m = evaluate_logits(test_logits, f_test.labels, num_classes)
            rows.append({"head": "linear probe", "k": k, "seed": seed, "n_train": len(idx), "C": fit.C,
                         "val_top1_at_C": fit.val_scores[fit.C], "probe_backend": fit.backend,
                         "probe_threads": fit.threads, "metrics": m,
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
