"""Frozen-feature evaluation of a self-supervised encoder: weighted kNN and a linear probe.

kNN is the monitor of lightly's benchmarks (after Wu et al. 2018): L2-normalised features, cosine
similarity to a labelled memory bank, the k most similar bank entries vote for their class with
weight ``exp(similarity / temperature)``; the class with the largest summed weight wins. The vote is
lightly's own ``knn_predict``; here it is batched over queries and turned into an accuracy.

The linear probe is multinomial logistic regression on standardised frozen features, trained for a
few epochs with Adam on the bank and scored on the queries; its shuffling comes from a seeded
generator, so the probe is deterministic for fixed features.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["knn_accuracy", "linear_probe_accuracy", "extract_features"]


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


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                 num_classes: int, k: int = 200, temperature: float = 0.1, batch_size: int = 1000) -> float:
    """Top-1 accuracy of the temperature-weighted kNN vote (lightly's ``knn_predict``).

    Features are L2-normalised here. Tied class scores are broken as ``torch.argsort`` breaks them.

    Shapes: bank: (N, D); bank_labels: (N,) int64; queries: (M, D); query_labels: (M,) -> float

    Raises:
        ValueError: k outside [1, N], a non-positive temperature, or mismatched shapes.
    """
    from lightly.utils.benchmarking import knn_predict

    n = bank.shape[0]
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"knn k={k!r} must be an integer in [1, {n}] (the memory bank holds {n} features)")
    if not temperature > 0:
        raise ValueError(f"knn temperature={temperature!r} must be > 0")
    if bank.shape[0] != bank_labels.shape[0] or queries.shape[0] != query_labels.shape[0]:
        raise ValueError(f"features and labels differ in length: bank {tuple(bank.shape)} vs {tuple(bank_labels.shape)}, "
                         f"queries {tuple(queries.shape)} vs {tuple(query_labels.shape)}")
    if queries.shape[0] == 0:
        raise ValueError("knn_accuracy needs at least one query")
    bank_t = F.normalize(bank.float(), dim=1).t().contiguous()
    correct = 0
    for i in range(0, queries.shape[0], batch_size):
        q = F.normalize(queries[i:i + batch_size].float(), dim=1)
        pred = knn_predict(q, bank_t, bank_labels, num_classes, knn_k=k, knn_t=temperature)[:, 0]
        correct += int((pred == query_labels[i:i + batch_size]).sum())
    return correct / queries.shape[0]


def linear_probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                          num_classes: int, *, epochs: int = 10, lr: float = 1e-2, batch_size: int = 256,
                          seed: int = 0) -> float:
    """Accuracy of logistic regression trained on frozen ``train`` features and scored on ``test``.

    Features are standardised with the train features' mean and std. Runs with gradients enabled
    (even inside an outer no_grad) on the features' device; touches no global RNG.

    Shapes: train: (N, D); train_labels: (N,); test: (M, D); test_labels: (M,) -> float
    """
    if epochs < 1:
        raise ValueError(f"linear probe epochs={epochs!r} must be >= 1")
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (train - mean) / std, (test - mean) / std
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(train.shape[1], num_classes).to(train.device)
    with torch.no_grad():
        w = torch.randn(head.weight.shape, generator=gen) / train.shape[1] ** 0.5
        head.weight.copy_(w.to(train.device))
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    n = xtr.shape[0]
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(train.device)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(head(xtr[idx]), train_labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        pred = head(xte).argmax(dim=1)
    return float((pred == test_labels).float().mean())
