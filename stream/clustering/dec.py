"""Deep Embedded Clustering (DEC), the batch step behind ``topicstream bootstrap``.

Xie, Girshick & Farhadi, "Unsupervised Deep Embedding for Clustering Analysis", ICML 2016.
DEC learns a clustering of a whole data set at once, so it is not one of the online
clusterers: it fits the topics of a *history* (last week's documents) and the result
becomes the initial state of the online clusterer (:mod:`stream.bootstrap`), which then
carries on from those topics instead of from nothing.

The algorithm, on ``X`` (n, d), the embeddings the online clusterer sees:

1. an autoencoder's encoder ``f`` (trained beforehand, :mod:`encoders.reducer`) maps ``X``
   to codes ``z = f(x)``, L2-normalised as everywhere in topicstream, then scaled by one
   constant so that the mean squared distance of a code to its k-means centre is 1 (unit
   codes lie within a distance of 2 of each other, where the kernel below is nearly flat);
2. ``k`` centres ``mu`` start from k-means on the codes (the paper's initialisation);
3. the soft assignment is Student's t with one degree of freedom,
   ``q_ij ∝ (1 + |z_i - mu_j|^2 / alpha) ^ (-(alpha + 1) / 2)``;
4. the target sharpens it and normalises by cluster frequency, so that large clusters do
   not swallow the rest: ``p_ij ∝ q_ij^2 / f_j`` with ``f_j = sum_i q_ij``;
5. ``KL(P || Q)`` is minimised over ``f``'s weights and ``mu`` by SGD with momentum, ``P``
   recomputed on the whole set every ``update_interval`` steps; training stops when fewer
   than ``tol`` of the hard assignments changed between two updates (the paper's 0.1%), or
   at ``max_iter`` steps or ``minutes``.

Warning: DEC needs ``k``, and with many clusters its self-training can empty some of them
(measured on news-t: 68 clusters became 40 or 41 within a minute; see the README).
:mod:`stream.bootstrap` takes ``k`` from a label-free rule (the
clusters of 5 or more documents that the online clusterer itself finds on the history),
never from labels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class DecResult:
    """What :func:`fit_dec` found: hard labels of every row, the codes and centres."""

    labels: np.ndarray  # (n,) int64 in [0, k)
    codes: np.ndarray  # (n, code_dim) float32, unit rows, after refinement
    centres: np.ndarray  # (k, code_dim) float32
    init_labels: np.ndarray  # (n,) the k-means initialisation, before refinement
    steps: int = 0
    changed: list[float] = field(default_factory=list)  # share of labels changed per update
    seconds: float = 0.0


def soft_assign(z: Any, centres: Any, alpha: float = 1.0) -> Any:
    """DEC's Student's-t soft assignment ``q`` (rows sum to 1), torch tensors in and out."""
    import torch

    d2 = torch.cdist(z, centres).pow(2)
    q = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(dim=1, keepdim=True)


def target_distribution(q: Any) -> Any:
    """DEC's auxiliary target ``p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j')``."""
    w = q.pow(2) / q.sum(dim=0)
    return w / w.sum(dim=1, keepdim=True)


def _codes(net: Any, X: Any, scale: float = 1.0, batch: int = 4096) -> Any:
    import torch

    return torch.cat([torch.nn.functional.normalize(net(X[i:i + batch]), dim=1) * scale
                      for i in range(0, len(X), batch)])


def fit_dec(X: np.ndarray, net: Any, k: int, *, alpha: float = 1.0, batch_size: int = 256,
            lr: float = 0.01, momentum: float = 0.9, update_interval: int = 140,
            tol: float = 0.001, max_iter: int = 20000, minutes: float = 2.0, seed: int = 0,
            n_init: int = 4) -> DecResult:
    """Cluster the rows of ``X`` into ``k`` groups with DEC (see the module docstring).

    Parameters
    ----------
    X
        ``(n, d)`` float32 embeddings.
    net
        The autoencoder's encoder, a :class:`torch.nn.Module` from ``(b, d)`` to
        ``(b, code_dim)``; it is trained further (pass a copy to keep the original).
    k
        Number of clusters, ``1 <= k <= n``.
    alpha
        Degrees of freedom of the Student's t kernel (the paper uses 1).
    batch_size, lr, momentum
        SGD on ``KL(P || Q)`` (the paper: 256, 0.01, 0.9).
    update_interval
        Steps between recomputations of the target ``P`` on the whole set.
    tol
        Stop when less than this share of hard labels changed between two updates.
    max_iter, minutes
        Bounds on the refinement.
    seed
        Seeds k-means and the batch order.
    n_init
        k-means restarts for the initial centres.

    Examples
    --------
    >>> import numpy as np, torch
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.normal(size=(3, 16))
    >>> X = np.repeat(centres, 50, axis=0) + 0.05 * rng.normal(size=(150, 16))
    >>> X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Linear(16, 4)
    >>> result = fit_dec(X, net, k=3, minutes=0.1)
    >>> sorted(np.bincount(result.labels).tolist())
    [50, 50, 50]
    """
    import torch
    from sklearn.cluster import KMeans

    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"X should be a non-empty (n, d) array, got shape {X.shape}")
    n = len(X)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} should be between 1 and the number of rows ({n})")
    for name, value in (("batch_size", batch_size), ("update_interval", update_interval),
                        ("max_iter", max_iter)):
        if value < 1:
            raise ValueError(f"{name}={value} should be >= 1")
    if not alpha > 0:
        raise ValueError(f"alpha={alpha} should be > 0")
    if not minutes > 0:
        raise ValueError(f"minutes={minutes} should be > 0")

    t0 = time.monotonic()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    Xt = torch.from_numpy(X)
    net.train()
    with torch.no_grad():
        z0 = _codes(net, Xt).numpy()
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(z0)
    init_labels = km.labels_.astype(np.int64)
    # unit codes sit within a distance of 2 of each other, where the Student's t kernel is
    # nearly flat (q close to uniform over k clusters, and DEC's refinement drifts); the
    # codes are scaled so that the mean squared distance to the own centre is 1, the
    # kernel's unit, fixed for the whole run
    within = float(np.mean(np.sum((z0 - km.cluster_centers_[init_labels]) ** 2, axis=1)))
    scale = 1.0 / max(np.sqrt(within), 1e-6)
    centres = torch.nn.Parameter(torch.from_numpy(
        (km.cluster_centers_ * scale).astype(np.float32)))
    opt = torch.optim.SGD([*net.parameters(), centres], lr=lr, momentum=momentum)
    deadline = t0 + 60.0 * minutes
    labels = init_labels.copy()
    changed: list[float] = []
    step = 0
    target = None
    perm = rng.permutation(n)
    cursor = 0
    while step < max_iter and time.monotonic() < deadline:
        if step % update_interval == 0:
            with torch.no_grad():
                q = soft_assign(_codes(net, Xt, scale), centres, alpha)
                target = target_distribution(q)
                new = q.argmax(dim=1).numpy().astype(np.int64)
            share = float(np.mean(new != labels))
            labels = new
            if step > 0:
                changed.append(share)
                log.debug("DEC step %d: %.4f of the labels changed", step, share)
                if share < tol:
                    break
        if cursor >= n:
            perm, cursor = rng.permutation(n), 0
        idx = torch.from_numpy(perm[cursor:cursor + batch_size])
        cursor += batch_size
        z = torch.nn.functional.normalize(net(Xt[idx]), dim=1) * scale
        q_b = soft_assign(z, centres, alpha)
        assert target is not None
        loss = torch.nn.functional.kl_div(q_b.clamp_min(1e-12).log(), target[idx],
                                          reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    net.eval()
    with torch.no_grad():
        codes = _codes(net, Xt, scale)
        labels = soft_assign(codes, centres, alpha).argmax(dim=1).numpy().astype(np.int64)
    log.info("DEC: %d clusters of %d rows, %d steps in %.1f s", k, n, step,
             time.monotonic() - t0)
    return DecResult(labels, codes.numpy() / scale, centres.detach().numpy() / scale, init_labels, step,
                     changed, time.monotonic() - t0)


__all__ = ["DecResult", "fit_dec", "soft_assign", "target_distribution"]
