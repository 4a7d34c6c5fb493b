"""Metrics, one function per task; scikit-learn where it has the function.

Tie policy (top-k): classes are ranked by score, ties broken towards the lower class index --
the same rule as ``argmax`` -- so top-1 always equals the accuracy of the predictions shown in the
confusion matrix. For k >= number of classes top-k is trivially 1.0; :func:`classification_metrics`
reports only the k below the number of classes.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score

TOPK = (1, 3, 5, 10)


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def true_class_rank(scores, labels) -> np.ndarray:
    """0-based rank of the true class per row (ties: lower class index ranks first, as argmax)."""
    s, y = _np(scores), _np(labels).astype(np.int64)
    true = s[np.arange(len(y)), y][:, None]
    cls = np.arange(s.shape[1])[None, :]
    return ((s > true) | ((s == true) & (cls < y[:, None]))).sum(axis=1)


def topk_accuracy(scores, labels, k: int) -> float:
    return float((true_class_rank(scores, labels) < k).mean())


def predictions(scores) -> np.ndarray:
    return _np(scores).argmax(axis=1)


def classification_metrics(scores, labels, num_classes: int | None = None, ks=TOPK) -> dict:
    """top-k (k < C), balanced accuracy, per-class recall, ECE; the numbers every record carries."""
    s, y = _np(scores), _np(labels).astype(np.int64)
    c = num_classes or s.shape[1]
    pred = s.argmax(axis=1)
    rank = true_class_rank(s, y)
    out = {f"top{k}": float((rank < k).mean()) for k in ks if k < c}
    out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
    out["per_class_recall"] = recall_score(y, pred, labels=list(range(c)), average=None, zero_division=0).tolist()
    out["ece"] = calibration(s, y)["ece"]
    out["n"] = int(len(y))
    return out


def confusion(scores_or_pred, labels, num_classes: int) -> np.ndarray:
    """Counts [true, predicted] over all classes (also those never predicted)."""
    p = _np(scores_or_pred)
    pred = p.argmax(axis=1) if p.ndim == 2 else p.astype(np.int64)
    return confusion_matrix(_np(labels).astype(np.int64), pred, labels=list(range(num_classes)))


def softmax(scores) -> np.ndarray:
    s = _np(scores).astype(np.float64)
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)


def calibration(scores, labels, n_bins: int = 15) -> dict:
    """Expected calibration error over equal-width confidence bins, with the reliability-diagram data.

    Scores are logits (softmax is applied). ECE = sum_b (n_b / N) |accuracy_b - confidence_b|.
    """
    p = softmax(scores)
    y = _np(labels).astype(np.int64)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    acc = np.bincount(bins, weights=correct, minlength=n_bins) / np.maximum(count, 1)
    mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / np.maximum(count, 1)
    ece = float(np.sum(count / max(len(y), 1) * np.abs(acc - mean_conf)))
    return {"ece": ece, "edges": edges.tolist(), "count": count.tolist(), "accuracy": acc.tolist(),
            "confidence": mean_conf.tolist()}


def retrieval_recall(image_features, text_features, caption_image, ks=(1, 5, 10)) -> dict:
    """Recall@k both ways with several captions per image; ``caption_image[j]`` = image of caption j.

    image->text: an image is a hit when any of its captions is among its k nearest captions.
    text->image: a caption is a hit when its image is among its k nearest images.
    ``mean_recall`` averages all six numbers (as CLIP_benchmark does).
    """
    img = torch.nn.functional.normalize(torch.as_tensor(_np(image_features)), dim=-1)
    txt = torch.nn.functional.normalize(torch.as_tensor(_np(text_features)), dim=-1)
    owner = torch.as_tensor(_np(caption_image).astype(np.int64))
    sim = img @ txt.T  # [images, captions]
    positive = owner[None, :] == torch.arange(img.shape[0])[:, None]
    out = {}
    # rank = number of candidates strictly more similar than the (best) positive
    best_pos = torch.where(positive, sim, torch.tensor(-torch.inf)).max(dim=1).values
    i2t_rank = (sim > best_pos[:, None]).sum(dim=1)
    t_sim = sim.T  # [captions, images]
    own = t_sim[torch.arange(len(owner)), owner]
    t2i_rank = (t_sim > own[:, None]).sum(dim=1)
    for k in ks:
        out[f"image_to_text_R@{k}"] = float((i2t_rank < k).float().mean())
        out[f"text_to_image_R@{k}"] = float((t2i_rank < k).float().mean())
    out["mean_recall"] = float(np.mean([out[f"{d}_R@{k}"] for d in ("image_to_text", "text_to_image") for k in ks]))
    return out


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of float images in [0, 1]."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per-image SSIM (scikit-image, Wang et al. 2004 settings: Gaussian window sigma 1.5) on [0, 1] RGB."""
    from skimage.metrics import structural_similarity

    return np.array([structural_similarity(p.numpy(), t.numpy(), channel_axis=0, data_range=1.0,
                                           gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                     for p, t in zip(pred.float(), target.float(), strict=True)])


# ----------------------------------------------------------------------------- paired comparisons
def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's exact test of two classifiers on the same images (same order): is one right where the
    other is wrong more often than chance would make it?

    ``a_only`` counts the images only A gets right, ``b_only`` those only B gets right; the images both
    get right or both get wrong say nothing about the difference. Under the null hypothesis each
    discordant image is A's with probability 1/2, so the two-sided p-value is the binomial test of
    ``min(a_only, b_only)`` in ``a_only + b_only`` trials (``scipy.stats.binomtest``); no discordant
    image gives p = 1. ``difference`` is accuracy(A) - accuracy(B) = (a_only - b_only) / n.
    """
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"mcnemar_exact: per-image correctness of the same images needed, got shapes "
                         f"{a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(binomtest(min(a_only, b_only), discordant, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "n": int(a.size), "p_value": min(p, 1.0),
            "difference": (a_only - b_only) / a.size if a.size else 0.0}


def paired_bootstrap_ci(correct_a, correct_b, n_boot: int = 2000, confidence: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """(difference, low, high): accuracy(A) - accuracy(B) with a percentile bootstrap interval that
    resamples images (the same resampled images for both, which keeps the pairing).

    Inputs are per-image correctness ([images]) or, for results over several seeds on the same
    images, [seeds, images]: each image's correctness is then averaged over the seeds first.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (1, 2):
        raise ValueError(f"paired_bootstrap_ci: shapes {a.shape} and {b.shape} do not pair")
    d = (a - b) if a.ndim == 1 else (a - b).mean(axis=0)
    rng = np.random.default_rng(seed)
    means = np.concatenate([d[rng.integers(0, d.size, size=(min(200, n_boot - i), d.size))].mean(axis=1)
                            for i in range(0, n_boot, 200)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(d.mean()), float(low), float(high)
