"""Frozen-feature evaluation of a self-supervised encoder: weighted kNN and a linear probe.

kNN is the monitor of lightly's benchmarks (after Wu et al. 2018): L2-normalised features, cosine
similarity to a labelled memory bank, the k most similar bank entries vote for their class with
weight ``exp(similarity / temperature)``; the class with the largest summed weight wins. It computes
what lightly's ``knn_predict`` computes (the tests check both against a brute-force reference) without
importing ``lightly.utils.benchmarking``, which pulls in PyTorch Lightning (seconds per process).

The linear probe is multinomial logistic regression on standardised frozen features, fitted on the
bank by full-batch L-BFGS (deterministic, no RNG) and scored on the queries.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["knn_predict", "knn_accuracy", "linear_probe_accuracy", "extract_features"]


def extract_features(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> torch.Tensor:
    """``encode(prepare(batch))`` over ``images`` in chunks, under no_grad, as float32.

    Shapes: images: (N, C, H, W) -> (N, D)
    """
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(encode(prepare(images[i:i + batch_size])).float())
    return torch.cat(out) if out else torch.zeros(0, 0)


def knn_predict(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int, k: int,
                temperature: float) -> torch.Tensor:
    """The class each query's weighted kNN vote picks: the k bank features most cosine-similar to it vote
    for their labels with weight ``exp(similarity / temperature)`` (lightly's ``knn_predict``, returning
    only the top class). Ties between class scores go to the lowest class index.

    Shapes: queries: (M, D) and bank: (N, D), both L2-normalised; bank_labels: (N,) int64 -> (M,) int64
    """
    sim, idx = (queries @ bank.t()).topk(k, dim=1)
    weights = (sim / temperature).exp()
    scores = torch.zeros(queries.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    scores.scatter_add_(1, bank_labels[idx], weights)
    return scores.argmax(dim=1)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                 num_classes: int, k: int = 200, temperature: float = 0.1, batch_size: int = 1000) -> float:
    """Top-1 accuracy of the temperature-weighted kNN vote (:func:`knn_predict`) over L2-normalised features.

    Shapes: bank: (N, D); bank_labels: (N,) int64; queries: (M, D); query_labels: (M,) -> float

    Raises:
        ValueError: k outside [1, N], a non-positive temperature, or mismatched shapes.
    """
    n = bank.shape[0]
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"knn k={k!r} must be an integer in [1, {n}] (the memory bank holds {n} features)")
    if not temperature > 0:
        raise ValueError(f"knn temperature={temperature!r} must be > 0")
    if bank.shape[0] != bank_labels.shape[0] or queries.shape[0] != query_labels.shape[0]:
        raise ValueError(f"features and labels differ in length: bank {tuple(bank.shape)} vs "
                         f"{tuple(bank_labels.shape)}, "
                         f"queries {tuple(queries.shape)} vs {tuple(query_labels.shape)}")
    if queries.shape[0] == 0:
        raise ValueError("knn_accuracy needs at least one query")
    bank_n = F.normalize(bank.float(), dim=1)
    correct = 0
    for i in range(0, queries.shape[0], batch_size):
        q = F.normalize(queries[i:i + batch_size].float(), dim=1)
        pred = knn_predict(q, bank_n, bank_labels, num_classes, k, temperature)
        correct += int((pred == query_labels[i:i + batch_size]).sum())
    return correct / queries.shape[0]


def linear_probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                          test_labels: torch.Tensor,
                          num_classes: int, *, steps: int = 100, l2: float = 1e-4) -> float:
    """Accuracy of multinomial logistic regression fitted on frozen ``train`` features, scored on ``test``.

    Features are standardised with the train features' mean and std; the fit is full-batch L-BFGS
    (strong-Wolfe line search) for at most ``steps`` iterations from zero weights on
    ``cross_entropy + l2 * |W|^2``: deterministic, no RNG. Runs with gradients enabled (even inside an
    outer no_grad) on the features' device.

    Shapes: train: (N, D); train_labels: (N,); test: (M, D); test_labels: (M,) -> float
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"linear probe steps={steps!r} must be an integer >= 1")
    if l2 < 0:
        raise ValueError(f"linear probe l2={l2!r} must be >= 0")
    train, test = train.float(), test.float()
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (train - mean) / std, (test - mean) / std
    weight = torch.zeros(num_classes, train.shape[1], device=train.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=train.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(F.linear(xtr, weight, bias), train_labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = F.linear(xte, weight, bias).argmax(dim=1)
    return float((pred == test_labels).float().mean())
