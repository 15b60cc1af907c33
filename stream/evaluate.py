"""Clustering quality against ground-truth labels: NMI, ARI, homogeneity, completeness, purity.

Plain numpy over the contingency table (scikit-learn's definitions: NMI with the arithmetic
mean of the entropies, ARI of Hubert and Arabie).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Quality:
    nmi: float
    ari: float
    homogeneity: float
    completeness: float
    purity: float
    clusters: int
    clusters_5plus: int


def _contingency(labels: Sequence[Any], pred: Sequence[Any]) -> np.ndarray:
    _, yi = np.unique(np.asarray([str(v) for v in labels]), return_inverse=True)
    _, pi = np.unique(np.asarray(pred), return_inverse=True)
    table = np.zeros((yi.max() + 1, pi.max() + 1), np.int64)
    np.add.at(table, (yi, pi), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def quality(labels: Sequence[Any], pred: Sequence[Any]) -> Quality:
    """Scores of the predicted clustering ``pred`` against ``labels`` (same length)."""
    if len(labels) != len(pred) or not len(labels):
        raise ValueError(f"labels ({len(labels)}) and pred ({len(pred)}) should be equally long and non-empty")
    c = _contingency(labels, pred)
    n = c.sum()
    h_y, h_p = _entropy(c.sum(1)), _entropy(c.sum(0))
    nz = c[c > 0]
    outer = np.outer(c.sum(1), c.sum(0))[c > 0]
    mi = float((nz / n * (np.log(nz) + np.log(n) - np.log(outer))).sum())
    nmi = 1.0 if h_y == h_p == 0 else mi / max((h_y + h_p) / 2, 1e-300)
    comb = lambda x: x * (x - 1) / 2.0  # noqa: E731
    sum_ij, sum_a, sum_b = comb(c).sum(), comb(c.sum(1)).sum(), comb(c.sum(0)).sum()
    expected = sum_a * sum_b / comb(n)
    max_index = (sum_a + sum_b) / 2
    ari = 1.0 if max_index == expected else float((sum_ij - expected) / (max_index - expected))
    homogeneity = 1.0 if h_y == 0 else 1 - (h_y - mi) / h_y
    completeness = 1.0 if h_p == 0 else 1 - (h_p - mi) / h_p
    sizes = c.sum(0)
    return Quality(nmi=float(nmi), ari=ari, homogeneity=float(homogeneity),
                   completeness=float(completeness), purity=float(c.max(0).sum() / n),
                   clusters=int(c.shape[1]), clusters_5plus=int((sizes >= 5).sum()))


def follow_merges(pred: Sequence[int], merges: Sequence[tuple[int, int]]) -> list[int]:
    """Cluster ids as a consumer of the events topic sees them at the end of the stream:
    each id announced as merged (``clusters_merged``: ``src`` now means ``dst``) replaced by
    the id it ended in, following chains.

    >>> follow_merges([1, 2, 3, 4], [(2, 1), (4, 3), (3, 1)])
    [1, 1, 1, 1]
    """
    into: dict[int, int] = {}
    for src, dst in merges:
        into[int(src)] = int(dst)

    def final(c: int) -> int:
        seen = 0
        while c in into and seen <= len(into):  # a cycle cannot arise; the bound makes sure
            c = into[c]
            seen += 1
        return c

    return [final(int(c)) for c in pred]
