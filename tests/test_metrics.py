"""Metrics: agreement with scikit-learn, the tie policy, ECE and retrieval Recall@K on hand-made cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score, top_k_accuracy_score

from helpers.eval import metrics


@pytest.fixture(params=[0, 1, 2])
def random_case(request):
    rng = np.random.default_rng(request.param)
    n, c = 300, 7
    labels = rng.integers(0, c, size=n)
    scores = rng.normal(size=(n, c))
    scores[np.arange(n), labels] += rng.uniform(0, 2, size=n)  # better than chance, not perfect
    return scores, labels, c


# ------------------------------------------------------------------------------ against sklearn
def test_topk_agrees_with_sklearn_on_random_scores(random_case):
    scores, labels, c = random_case
    for k in range(1, c):
        expected = top_k_accuracy_score(labels, scores, k=k, labels=list(range(c)))
        assert metrics.topk_accuracy(scores, labels, k) == pytest.approx(expected, abs=1e-12)
    out = metrics.classification_metrics(scores, labels)
    assert set(k for k in out if k.startswith("top")) == {"top1", "top3", "top5"}  # 10 >= 7 classes: omitted
    for k in (1, 3, 5):
        assert out[f"top{k}"] == pytest.approx(top_k_accuracy_score(labels, scores, k=k, labels=list(range(c))))
    assert 0 < out["top1"] < out["top3"] < out["top5"] < 1


def test_balanced_accuracy_recall_and_confusion_agree_with_sklearn(random_case):
    scores, labels, c = random_case
    pred = scores.argmax(axis=1)
    out = metrics.classification_metrics(scores, labels)
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    np.testing.assert_allclose(out["per_class_recall"], recall_score(labels, pred, average=None))
    assert len(out["per_class_recall"]) == c
    assert out["n"] == len(labels)
    cm = metrics.confusion(scores, labels, c)
    np.testing.assert_array_equal(cm, confusion_matrix(labels, pred))
    np.testing.assert_array_equal(metrics.confusion(pred, labels, c), cm)  # predictions work too
    assert cm.sum() == len(labels)
    assert np.trace(cm) / cm.sum() == pytest.approx(out["top1"])  # top-1 is the confusion matrix's accuracy
    np.testing.assert_array_equal(metrics.predictions(scores), pred)


def test_torch_inputs_give_the_same_numbers(random_case):
    scores, labels, c = random_case
    a = metrics.classification_metrics(scores.astype(np.float32), labels)
    b = metrics.classification_metrics(torch.from_numpy(scores).float(), torch.from_numpy(labels))
    assert set(a) == set(b)
    for key in a:
        assert np.asarray(a[key]) == pytest.approx(np.asarray(b[key]), abs=1e-12), key
    np.testing.assert_array_equal(metrics.confusion(torch.from_numpy(scores), torch.from_numpy(labels), c),
                                  metrics.confusion(scores, labels, c))


def test_confusion_includes_classes_never_predicted_or_present():
    cm = metrics.confusion(np.array([0, 0, 2]), np.array([0, 2, 2]), num_classes=4)
    assert cm.shape == (4, 4)
    np.testing.assert_array_equal(cm, [[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    out = metrics.classification_metrics(np.eye(4)[[0, 0, 2]], np.array([0, 2, 2]), num_classes=4)
    assert out["per_class_recall"] == [1.0, 0.0, 0.5, 0.0]  # absent classes reported, as 0


# ------------------------------------------------------------------------------------ hand cases
TIES_SCORES = np.array([
    [1.0, 1.0, 1.0, 1.0],  # all tied: argmax says class 0
    [1.0, 1.0, 1.0, 1.0],
    [0.0, 2.0, 2.0, 0.0],  # classes 1 and 2 tied: class 1 ranks first
    [0.0, 2.0, 2.0, 0.0],
    [5.0, 0.0, 0.0, 5.0],  # classes 0 and 3 tied: class 0 ranks first
])
TIES_LABELS = np.array([0, 3, 1, 2, 3])


def test_ties_break_towards_the_lower_class_index():
    np.testing.assert_array_equal(metrics.true_class_rank(TIES_SCORES, TIES_LABELS), [0, 3, 0, 1, 1])
    assert metrics.topk_accuracy(TIES_SCORES, TIES_LABELS, 1) == pytest.approx(2 / 5)
    assert metrics.topk_accuracy(TIES_SCORES, TIES_LABELS, 2) == pytest.approx(4 / 5)
    assert metrics.topk_accuracy(TIES_SCORES, TIES_LABELS, 3) == pytest.approx(4 / 5)
    # top-1 is exactly the accuracy of argmax, i.e. of the confusion matrix
    argmax_acc = float((TIES_SCORES.argmax(axis=1) == TIES_LABELS).mean())
    assert metrics.topk_accuracy(TIES_SCORES, TIES_LABELS, 1) == argmax_acc
    cm = metrics.confusion(TIES_SCORES, TIES_LABELS, 4)
    assert np.trace(cm) / cm.sum() == argmax_acc
    out = metrics.classification_metrics(torch.tensor(TIES_SCORES), torch.tensor(TIES_LABELS))
    assert out["top1"] == argmax_acc


def test_k_at_least_number_of_classes():
    for k in (4, 5, 10):
        assert metrics.topk_accuracy(TIES_SCORES, TIES_LABELS, k) == 1.0
    out = metrics.classification_metrics(TIES_SCORES, TIES_LABELS, ks=(1, 2, 3, 4, 10))
    assert [k for k in out if k.startswith("top")] == ["top1", "top2", "top3"]
    out = metrics.classification_metrics(TIES_SCORES, TIES_LABELS)  # default ks (1, 3, 5, 10)
    assert [k for k in out if k.startswith("top")] == ["top1", "top3"]
    # the number of classes can be stated when it differs from the score columns
    out = metrics.classification_metrics(TIES_SCORES, TIES_LABELS, num_classes=3)
    assert [k for k in out if k.startswith("top")] == ["top1"]


def test_perfect_and_worst_scores():
    labels = np.array([0, 1, 2, 1])
    perfect = np.eye(3)[labels] * 10
    out = metrics.classification_metrics(perfect, labels)
    assert out["top1"] == 1.0 and out["balanced_accuracy"] == 1.0 and out["per_class_recall"] == [1.0] * 3
    worst = -perfect
    assert metrics.topk_accuracy(worst, labels, 1) == 0.0
    assert metrics.topk_accuracy(worst, labels, 2) == 0.0  # the true class is always ranked last
    assert metrics.classification_metrics(worst, labels)["balanced_accuracy"] == 0.0


# ------------------------------------------------------------------------------------ calibration
def _logits_for(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64))


def test_ece_is_zero_when_perfectly_calibrated():
    # confidence 0.7 everywhere and 7 of 10 right
    scores = _logits_for([[0.7, 0.3]] * 10)
    labels = np.array([0] * 7 + [1] * 3)
    cal = metrics.calibration(scores, labels)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-9)
    assert sum(cal["count"]) == 10
    b = int(np.argmax(cal["count"]))
    assert cal["count"][b] == 10
    assert cal["edges"][b] < 0.7 <= cal["edges"][b + 1]
    assert cal["accuracy"][b] == pytest.approx(0.7) and cal["confidence"][b] == pytest.approx(0.7)


def test_ece_hand_computed_two_bins():
    # 5 images at confidence 0.9 with 3 right; 5 at 0.55 all right: ECE = .5*|.6-.9| + .5*|1-.55| = .375
    scores = _logits_for([[0.9, 0.1]] * 5 + [[0.45, 0.55]] * 5)
    labels = np.array([0, 0, 0, 1, 1] + [1] * 5)
    cal = metrics.calibration(scores, labels)
    assert cal["ece"] == pytest.approx(0.375, abs=1e-9)
    assert sorted(c for c in cal["count"] if c) == [5, 5]
    assert metrics.classification_metrics(scores, labels)["ece"] == pytest.approx(0.375, abs=1e-9)


def test_ece_is_one_when_confidently_wrong():
    scores = np.tile([50.0, 0.0, 0.0], (20, 1))
    labels = np.full(20, 2)
    cal = metrics.calibration(scores, labels)
    assert cal["ece"] == pytest.approx(1.0, abs=1e-6)
    assert cal["count"][-1] == 20  # confidence ~1 lands in the last bin


def test_ece_matches_a_direct_computation(random_case):
    scores, labels, _ = random_case
    scores = scores * 3
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, right = p.max(1), (p.argmax(1) == labels)
    edges = np.linspace(0, 1, 11)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(right[m].mean() - conf[m].mean())
    assert metrics.calibration(scores, labels, n_bins=10)["ece"] == pytest.approx(ece, abs=1e-12)
    np.testing.assert_allclose(metrics.softmax(scores), p, atol=1e-12)


# -------------------------------------------------------------------------------------- retrieval
# similarity[image, caption]; captions 0,1 -> image 0; 2,3 -> image 1; 4 -> image 2
SIM = np.array([
    [0.10, 0.50, 0.30, 0.20, 0.00],
    [0.40, 0.00, 0.20, 0.10, 0.30],
    [0.00, 0.20, 0.45, 0.10, 0.35],
])
OWNER = np.array([0, 0, 1, 1, 2])


def _features_with_similarity(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors whose cosine similarities are exactly ``sim`` (columns of norm < 1)."""
    n_img, n_cap = sim.shape
    img = np.concatenate([np.eye(n_img), np.zeros((n_img, 1))], axis=1)
    rest = np.sqrt(1 - (sim ** 2).sum(axis=0))
    txt = np.concatenate([sim.T, rest[:, None]], axis=1)
    return img, txt


def test_retrieval_recall_hand_computed_both_directions():
    img, txt = _features_with_similarity(SIM)
    np.testing.assert_allclose(img @ txt.T, SIM, atol=1e-12)
    out = metrics.retrieval_recall(img, txt, OWNER, ks=(1, 2, 3))
    # image -> text: best own caption beaten by 0 / 2 / 1 other captions
    assert out["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert out["image_to_text_R@2"] == pytest.approx(2 / 3)
    assert out["image_to_text_R@3"] == pytest.approx(1.0)
    # text -> image: own image beaten by 1, 0, 2, 1 (a tie does not count against), 0 other images
    assert out["text_to_image_R@1"] == pytest.approx(2 / 5)
    assert out["text_to_image_R@2"] == pytest.approx(4 / 5)
    assert out["text_to_image_R@3"] == pytest.approx(1.0)
    assert out["mean_recall"] == pytest.approx((1 / 3 + 2 / 3 + 1 + 2 / 5 + 4 / 5 + 1) / 6)
    assert set(out) == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 2, 3)} | {
        "mean_recall"}


def test_retrieval_recall_is_scale_invariant_and_accepts_tensors():
    img, txt = _features_with_similarity(SIM)
    a = metrics.retrieval_recall(img, txt, OWNER, ks=(1, 2))
    b = metrics.retrieval_recall(torch.tensor(img * 7.0), torch.tensor(txt * 0.1), torch.tensor(OWNER), ks=(1, 2))
    assert a == pytest.approx(b)


def test_retrieval_recall_agrees_with_brute_force():
    rng = np.random.default_rng(3)
    n_img, dim = 12, 16
    owner = np.concatenate([np.arange(n_img)] * 2 + [rng.integers(0, n_img, size=10)])
    rng.shuffle(owner)
    img = rng.normal(size=(n_img, dim))
    txt = img[owner] + rng.normal(scale=4.0, size=(len(owner), dim))
    ks = (1, 5, 10)
    out = metrics.retrieval_recall(img, txt, owner, ks=ks)
    sim = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    for k in ks:
        i2t = np.mean([bool(set(np.argsort(-sim[i])[:k]) & set(np.flatnonzero(owner == i))) for i in range(n_img)])
        t2i = np.mean([owner[j] in np.argsort(-sim[:, j])[:k] for j in range(len(owner))])
        assert out[f"image_to_text_R@{k}"] == pytest.approx(i2t, abs=1e-6)
        assert out[f"text_to_image_R@{k}"] == pytest.approx(t2i, abs=1e-6)
    assert 0 < out["image_to_text_R@1"] < 1 and 0 < out["text_to_image_R@1"] < 1  # neither trivial nor hopeless


def test_retrieval_perfect_match():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(5, 8))
    owner = np.array([0, 0, 1, 2, 2, 2, 3, 4])
    out = metrics.retrieval_recall(img, img[owner], owner, ks=(1,))
    assert out == {"image_to_text_R@1": 1.0, "text_to_image_R@1": 1.0, "mean_recall": 1.0}


def test_topk_beyond_the_classes_is_quiet():
    """For k >= classes sklearn warns and returns 1.0; topk_accuracy returns the same value without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.topk_accuracy(TIES_SCORES, TIES_LABELS, 4) == 1.0
