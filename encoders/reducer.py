"""Reducers: compressors that come after the encoder and shrink its vectors to 32 or 64 dims.

A reducer maps an encoder's unit vectors (384-d for the transformer) to short unit codes,
so the clusterer keeps ``code_dim`` floats per centroid instead of ``in_dim`` (a cluster's
record in Redis is 40 bytes of counters plus 4 bytes a dimension: 1576 bytes at 384-d,
296 at 64-d, 168 at 32-d) and compares each document with ``code_dim`` floats per centroid.
Two kinds, both multilayer perceptrons ``in_dim -> hidden -> code_dim -> hidden -> in_dim``
(GELU, Hendrycks & Gimpel 2016), trained on unlabelled vectors with AdamW (Loshchilov &
Hutter, "Decoupled Weight Decay Regularization", ICLR 2019):

- ``ae``: an autoencoder (Hinton & Salakhutdinov, "Reducing the Dimensionality of Data with
  Neural Networks", Science 2006). The code is the bottleneck, L2-normalised; the decoder
  reads the normalised code, the vector the clusterer will see.
- ``vae``: a variational autoencoder (Kingma & Welling, "Auto-Encoding Variational Bayes",
  ICLR 2014): the encoder gives a mean ``mu`` and a log-variance; training decodes a sample
  ``mu + sigma * eps`` (the reparameterisation trick) and adds ``beta`` times the KL
  divergence to the standard normal prior (the weight of Higgins et al., "beta-VAE", ICLR
  2017). The code is ``mu``, L2-normalised. ``beta = 1e-4`` by default: the reconstruction
  term is one cosine a row while the KL is summed over the code's dimensions, and at
  ``beta = 1e-3`` (with the structure term) the posterior collapsed, the decoder ignoring
  the code (reconstruction loss 0.94). The log-variance head starts at -6 (sigma 0.05)
  rather than 0: with unit noise around a small initial ``mu`` the decoder first learns to
  ignore its input, and took some 60 epochs to start reading it.

Loss, for a batch of unit input rows ``x`` and their unit codes ``c``:

- reconstruction, ``1 - cos(x_hat, x)`` averaged over the rows. For unit inputs it is half
  the squared error between the unit-normalised reconstruction and the input, so it is MSE
  on the sphere and ignores the reconstruction's length, which no downstream step reads;
- ``vae`` only: ``+ beta * KL(q(z|x) || N(0, I))``, summed over the code's dimensions and
  averaged over the rows;
- structure: ``+ gamma * mean_i KL(P_i || Q_i)``, neighbourhood preservation as in
  stochastic neighbour embedding (Hinton & Roweis, "Stochastic Neighbor Embedding", NIPS
  2002), parametric as in van der Maaten ("Learning a Parametric Embedding by Preserving
  Local Structure", AISTATS 2009): within the batch, ``P_i = softmax_j(cos(x_i, x_j) / tau)``
  and ``Q_i = softmax_j(cos(c_i, c_j) / tau)`` over the other rows ``j``. Reconstruction
  alone only asks that the input be recoverable from the code; the clusterer needs each
  document's *nearest* neighbours kept (a document joins a centroid above a cosine
  threshold, which the quantile rule below re-maps, so the order of the near pairs is what
  counts). A small temperature (``tau = 0.05``) puts the weight on those near pairs.

  Why this term, measured (kmeans, transformer vectors of news.jsonl, trained on its first
  5554 titles, 100 epochs, code 64; NMI on news / news-t against 0.898 / 0.889
  uncompressed): ``ae`` without a structure term .885 / .880 (.885 / .879 with another
  seed); matching the batch's cosine *matrices* by squared error (similarity-preserving
  distillation, Tung & Mori, ICCV 2019; the stress of metric MDS, Kruskal 1964) .888 /
  .880, no better: random pairs of titles, nearly all unrelated, dominate that mean; the
  neighbourhood term .895 / .883 (.891 / .880, .893 / .883 with seeds 1, 2). PCA to 64
  dimensions: .886 / .881. ``vae``: .884 / .880 without the term, .893 / .882 with it.
  ``gamma = 0`` turns the term off.

Default threshold in code space: the base encoder's threshold (0.4 for the transformer)
moved to the same quantile of the codes' pairwise cosines on (up to 2000 of) the training
vectors, the rule of the students (:func:`encoders.trained.matched_threshold`, shared, not
copied); the base merge threshold, when the encoder has one, the same way.

A trained reducer is a directory: ``model.safetensors`` (weights, no pickle) and
``config.json`` (format ``topicstream-reducer``, version 1, kind, shapes, thresholds, the
encoder it was trained on, training record). Use it as ``--reducer KIND:DIR`` (the setting
``reducer``); :class:`ReducedEncoder` wraps the encoder. This module imports neither kafka
nor redis.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from encoders import Encoder
from encoders.trained import CONFIG, WEIGHTS, load_weights, matched_threshold
from encoders.trained import read_config as read_model_config

log = logging.getLogger(__name__)

FORMAT = "topicstream-reducer"
VERSION = 1
KINDS = ("ae", "vae")
INIT_LOGVAR = -6.0  # the vae's initial log-variance (module docstring)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} should be one of {', '.join(KINDS)}")


def _check_dims(in_dim: int, code_dim: int, hidden: int) -> None:
    for name, value in (("in_dim", in_dim), ("code_dim", code_dim), ("hidden", hidden)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} should be >= 1")


def build_reducer(kind: str, in_dim: int, code_dim: int = 64, hidden: int = 256) -> Any:
    """The reducer network (a :class:`torch.nn.Module`) with fresh weights.

    Parameters
    ----------
    kind
        ``ae`` (autoencoder) or ``vae`` (variational autoencoder; see the module docstring).
    in_dim
        The encoder's dimension.
    code_dim
        The code's dimension.
    hidden
        Width of the hidden layer on each side.

    Returns
    -------
    torch.nn.Module
        ``code(x)``: the un-normalised code (the ``vae``'s mean); ``forward(x)``: ``(x_hat,
        mu, logvar)``, the reconstruction, the code and (``vae``, else None) the
        log-variance; ``x_hat`` decodes the unit code (``ae``) or a sample around ``mu``
        (``vae`` in training mode; ``mu`` itself in eval mode).
    """
    import torch
    from torch import nn

    _check_kind(kind)
    _check_dims(in_dim, code_dim, hidden)

    class Reducer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU())
            self.mu = nn.Linear(hidden, code_dim)
            self.logvar = nn.Linear(hidden, code_dim) if kind == "vae" else None
            if self.logvar is not None:  # start near the autoencoder: sigma ~ 0.05
                nn.init.constant_(self.logvar.bias, INIT_LOGVAR)
            self.decoder = nn.Sequential(nn.Linear(code_dim, hidden), nn.GELU(),
                                         nn.Linear(hidden, in_dim))

        def code(self, x: Any) -> Any:
            return self.mu(self.encoder(x))

        def forward(self, x: Any) -> tuple[Any, Any, Any]:
            h = self.encoder(x)
            mu = self.mu(h)
            if self.logvar is None:
                return self.decoder(nn.functional.normalize(mu, dim=1)), mu, None
            logvar = self.logvar(h)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
            return self.decoder(z), mu, logvar

    return Reducer()


def reducer_loss(x: Any, x_hat: Any, mu: Any, logvar: Any, beta: float = 1e-4,
                 gamma: float = 1.0, tau: float = 0.05) -> tuple[Any, dict[str, Any]]:
    """The training loss of a batch (module docstring) and its parts (detached 0-d tensors,
    so a training step never waits on the device to read them).

    Parameters
    ----------
    x
        ``(rows, in_dim)`` unit input rows.
    x_hat, mu, logvar
        The network's output (``logvar`` None for ``ae``).
    beta
        Weight of the KL term (``vae``).
    gamma
        Weight of the neighbourhood (structure) term; 0 turns it off.
    tau
        Temperature of the neighbourhood term's softmax over cosines.
    """
    import torch
    from torch.nn.functional import cosine_similarity, log_softmax, normalize

    recon = (1.0 - cosine_similarity(x_hat, x, dim=1)).mean()
    loss = recon
    parts = {"recon": recon.detach()}
    if logvar is not None:
        kl = (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
        loss = loss + beta * kl
        parts["kl"] = kl.detach()
    if gamma > 0 and len(x) > 2:
        c = normalize(mu, dim=1)
        self_pairs = torch.eye(len(x), dtype=torch.bool, device=x.device)
        log_p = log_softmax((x @ x.T / tau).masked_fill(self_pairs, -1e9), dim=1)
        log_q = log_softmax((c @ c.T / tau).masked_fill(self_pairs, -1e9), dim=1)
        structure = (log_p.exp() * (log_p - log_q)).masked_fill(self_pairs, 0.0).sum(1).mean()
        loss = loss + gamma * structure
        parts["structure"] = structure.detach()
    return loss, parts


def _codes(model: Any, X: np.ndarray) -> np.ndarray:
    """Unit codes of ``X`` (one forward pass, on the model's device), as float32 numpy."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
        code = torch.nn.functional.normalize(model.code(x), dim=1)
        return code.cpu().numpy()


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device={device!r} should be 'auto', 'cpu' or 'cuda[:N]'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available here")
    return device


@dataclass
class ReducerTrainResult:
    """What :func:`train_reducer` did: per-epoch mean losses, time, thresholds, where it
    saved (``out_dir`` None: not saved)."""

    model: Any  # the trained network, on the CPU, in eval mode
    kind: str
    in_dim: int
    code_dim: int
    hidden: int
    out_dir: Path | None = None
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    default_threshold: float = 0.4
    default_merge_threshold: float | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def reduce(self, X: np.ndarray) -> np.ndarray:
        """Unit codes of ``X`` with the trained network, as :meth:`Reducer.reduce`."""
        return _codes(self.model, X)


def train_reducer(kind: str, X: np.ndarray, out_dir: str | Path | None = None,
                  code_dim: int = 64, hidden: int = 256, epochs: int = 100,
                  minutes: float = 5.0, seed: int = 0, batch_size: int = 256,
                  lr: float = 1e-3, beta: float = 1e-4, gamma: float = 1.0, tau: float = 0.05,
                  progress: bool = True, base_threshold: float = 0.4,
                  base_merge_threshold: float | None = None, encoder_spec: str = "",
                  encoder_name: str = "", device: str = "auto",
                  cpu_threads: int | None = 1) -> ReducerTrainResult:
    """Train an ``ae`` or ``vae`` reducer on unit vectors, and save it when ``out_dir`` is given.

    AdamW on the loss of :func:`reducer_loss` for ``epochs`` passes over ``X`` or ``minutes``
    minutes, whichever ends first (the epoch in progress stops at the time bound). No labels.

    Parameters
    ----------
    kind
        ``ae`` or ``vae``.
    X
        ``(n, in_dim)`` float32 rows of unit norm: the encoder's vectors of the training texts.
    out_dir
        Directory to write (created; files of the same names are replaced); None: not saved
        (the caller keeps ``result.model``).
    code_dim, hidden
        The code's dimension and the hidden width.
    epochs, minutes
        Bounds on training.
    seed
        Seeds torch and the numpy shuffles: the same inputs give the same reducer (on the
        same device and thread count).
    batch_size
        Rows per step (the structure term compares every pair of a batch).
    lr
        AdamW learning rate (weight decay 0.01).
    beta
        Weight of the ``vae``'s KL term.
    gamma, tau
        Weight (0: off) and temperature of the neighbourhood term.
    progress
        Show a progress bar with the loss on standard error.
    base_threshold, base_merge_threshold
        The encoder's default join and merge thresholds, moved to code space by the
        quantile rule (module docstring); a None merge threshold stays None.
    encoder_spec, encoder_name
        The encoder the vectors came from (its spec, e.g. ``transformer``, and its name),
        recorded in the config.
    device
        ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``. The saved weights are the same
        whatever the device; a reducer always runs on the CPU when loaded.
    cpu_threads
        Torch's intra-op threads while training on the CPU (restored after); None: as set.
        One by default: these matrices are small, and on the 2-core development machine,
        shared with other jobs, an epoch of 5554 vectors took 0.36-0.39 s on one thread
        against 1.7-2.4 s on two.

    Returns
    -------
    ReducerTrainResult
    """
    import torch

    _check_kind(kind)
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X should be a non-empty (n, in_dim) array, got shape {X.shape}")
    _check_dims(int(X.shape[1]), code_dim, hidden)
    if epochs < 1:
        raise ValueError(f"epochs={epochs} should be >= 1")
    if not minutes > 0:
        raise ValueError(f"minutes={minutes} should be > 0")
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size} should be >= 2")
    if not lr > 0:
        raise ValueError(f"lr={lr} should be > 0")
    if beta < 0 or gamma < 0:
        raise ValueError(f"beta={beta}, gamma={gamma} should be >= 0")
    if not tau > 0:
        raise ValueError(f"tau={tau} should be > 0")
    X = np.ascontiguousarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1)
    if not np.all(np.abs(norms - 1.0) < 1e-3):
        bad = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"X should have unit rows: row {bad} has norm {norms[bad]:.4f}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} exists and is not a directory")
    if cpu_threads is not None and cpu_threads < 1:
        raise ValueError(f"cpu_threads={cpu_threads} should be >= 1 (or None)")
    dev = _resolve_device(device)

    n, in_dim = X.shape
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_reducer(kind, int(in_dim), code_dim, hidden).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    data = torch.from_numpy(X).to(dev)
    steps_per_epoch = -(-n // batch_size)
    result = ReducerTrainResult(model=model, kind=kind, in_dim=int(in_dim), code_dim=code_dim,
                               hidden=hidden, out_dir=out, device=dev)
    from tqdm import tqdm

    bar = tqdm(total=epochs * steps_per_epoch, file=sys.stderr, disable=not progress,
               desc=f"train {kind}{code_dim}", unit="step", dynamic_ncols=True)
    threads = torch.get_num_threads()
    if dev == "cpu" and cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    start = time.monotonic()
    deadline = start + 60.0 * minutes
    model.train()
    try:
        for epoch in range(epochs):
            perm = torch.from_numpy(rng.permutation(n)).to(dev)
            total = torch.zeros((), device=dev)
            for s in range(0, n, batch_size):
                x = data[perm[s:s + batch_size]]
                x_hat, mu, logvar = model(x)
                loss, _ = reducer_loss(x, x_hat, mu, logvar, beta, gamma, tau)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(x)
                result.steps += 1
                bar.update(1)
                if result.steps % 10 == 0 or s + batch_size >= n:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.4f}")
                if time.monotonic() > deadline:
                    break
            result.losses.append(float(total) / min(n, s + batch_size))
            log.debug("epoch %d: mean loss %.5f", epoch + 1, result.losses[-1])
            if time.monotonic() > deadline:
                log.info("time bound of %.2f minutes reached after %d epoch(s)", minutes,
                         epoch + 1)
                break
    finally:
        bar.close()
        torch.set_num_threads(threads)
    result.seconds = time.monotonic() - start
    model.eval()
    result.model = model = model.cpu()

    codes = _codes(model, X)
    with torch.inference_mode():  # the loss's parts at the end, on up to 2048 rows
        x = torch.from_numpy(X[np.random.default_rng(seed).permutation(n)[:2048]])
        x_hat, mu, logvar = model(x)
        parts = reducer_loss(x, x_hat, mu, logvar, beta, gamma, tau)[1]
        final = {k: round(float(v), 6) for k, v in parts.items()}
    # the threshold rule (module docstring), on a sample of up to 2000 training vectors
    sample = np.random.default_rng(seed).choice(n, size=min(n, 2000), replace=False)
    result.default_threshold = matched_threshold(X[sample], codes[sample], base_threshold)
    if base_merge_threshold is not None:
        result.default_merge_threshold = matched_threshold(X[sample], codes[sample],
                                                            base_merge_threshold)
    result.config = {
        "format": FORMAT, "version": VERSION, "kind": kind, "in_dim": int(in_dim),
        "code_dim": code_dim, "hidden": hidden,
        "default_threshold": result.default_threshold,
        "default_merge_threshold": result.default_merge_threshold,
        "threshold_rule": "the encoder's threshold moved to the same quantile of the codes' "
                          "pairwise cosines on the training vectors",
        "encoder": encoder_spec, "encoder_name": encoder_name,
        "base_threshold": base_threshold,
        "base_merge_threshold": base_merge_threshold,
        "training": {"vectors": int(n), "epochs_run": len(result.losses),
                     "steps": result.steps, "epochs": epochs, "minutes": minutes,
                     "seconds": round(result.seconds, 2), "seed": seed,
                     "batch_size": batch_size, "lr": lr, "optimizer": "AdamW",
                     "weight_decay": 0.01, "device": dev,
                     "cpu_threads": cpu_threads if dev == "cpu" else None,
                     "loss": "1 - cos(x_hat, x)" + (" + beta * KL" if kind == "vae" else "")
                             + (" + gamma * neighbourhood KL" if gamma > 0 else ""),
                     "beta": beta if kind == "vae" else None, "gamma": gamma, "tau": tau,
                     "epoch_losses": [round(x, 6) for x in result.losses],
                     "final_loss_parts": final},
    }
    if out is not None:
        save_reducer(result, out)
    return result


def save_reducer(result: ReducerTrainResult, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` of a trained reducer to ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps(result.config, indent=2) + "\n", encoding="utf-8")
    result.out_dir = out
    log.info("saved the %s%d reducer to %s (default threshold %.4f)", result.kind,
             result.code_dim, out, result.default_threshold)
    return out


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a reducer directory, checked (format, version, kind, shapes)."""
    cfg = read_model_config(path, FORMAT, VERSION, KINDS, "a reducer is a directory written "
                            "by 'topicstream train ae|vae'")
    cfg_file = path / CONFIG
    for key in ("in_dim", "code_dim", "hidden"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{cfg_file}: {key}={value!r} should be a positive integer")
    for key in ("default_threshold", "default_merge_threshold"):
        value = cfg.get(key)
        if value is None and key == "default_merge_threshold":
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) \
                or not -1.0 <= value <= 1.0:
            raise ValueError(f"{cfg_file}: {key}={value!r} should be a number within [-1, 1]")
    return cfg


class Reducer:
    """A trained reducer, loaded from its directory (no pickle), on the CPU.

    Parameters
    ----------
    path
        Directory written by :func:`train_reducer` (``topicstream train ae|vae``).

    Raises
    ------
    FileNotFoundError
        The directory, ``config.json`` or ``model.safetensors`` is missing.
    ValueError
        ``config.json`` is not JSON, names another format, version or kind, or has a bad
        shape or threshold; the weights file is corrupted; a tensor's shape does not match
        the config.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = path = Path(path)
        self.config = cfg = read_config(path)
        self.kind: str = cfg["kind"]
        self.in_dim = int(cfg["in_dim"])
        self.code_dim = int(cfg["code_dim"])
        self.hidden = int(cfg["hidden"])
        self.default_threshold = float(cfg["default_threshold"])
        merge = cfg.get("default_merge_threshold")
        self.default_merge_threshold = None if merge is None else float(merge)
        self.encoder_spec = str(cfg.get("encoder") or "")
        self.encoder_name = str(cfg.get("encoder_name") or "")
        self.model = build_reducer(self.kind, self.in_dim, self.code_dim, self.hidden)
        load_weights(self.model, path, f"kind={self.kind!r}, in_dim={self.in_dim}, "
                     f"code_dim={self.code_dim}, hidden={self.hidden}",
                     f"topicstream train {self.kind}")

    def reduce(self, X: np.ndarray) -> np.ndarray:
        """``(n, code_dim)`` float32 unit codes of ``(n, in_dim)`` vectors, in one pass."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.in_dim:
            raise ValueError(f"reducer {self.path} expects (n, {self.in_dim}) vectors, got "
                             f"shape {X.shape}")
        if len(X) == 0:
            return np.empty((0, self.code_dim), np.float32)
        return _codes(self.model, X)


def parse_spec(spec: str) -> tuple[str, str]:
    """``KIND:PATH`` -> ``(kind, path)``, or a ValueError quoting the spec."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS or not path:
        raise ValueError(f"reducer={spec!r} should be KIND:PATH with KIND one of "
                         f"{', '.join(KINDS)} (a directory written by 'topicstream train')")
    return kind, path


def load_reducer(spec: str) -> Reducer:
    """The reducer of ``KIND:PATH``; its config must say the same kind."""
    kind, path = parse_spec(spec)
    reducer = Reducer(path)
    if reducer.kind != kind:
        raise ValueError(f"reducer={spec!r}: {reducer.path / CONFIG} holds a "
                         f"{reducer.kind!r} reducer, not {kind!r}")
    return reducer


class ReducedEncoder:
    """An :class:`~encoders.Encoder` whose vectors are a reducer's codes of another encoder's.

    Parameters
    ----------
    encoder
        The encoder whose vectors the reducer was trained on (same dimension).
    reducer
        A loaded :class:`Reducer`.

    Raises
    ------
    ValueError
        The encoder's dimension is not the reducer's input dimension.

    Notes
    -----
    ``default_threshold`` and ``default_merge_threshold`` are the reducer's (moved to code
    space at training); a reducer trained on another encoder of the same dimension loads
    with a warning. The reducer runs on the CPU (``device`` is the encoder's): one small
    matrix product a batch, after the encoder's vectors are back in host memory anyway.
    """

    def __init__(self, encoder: Encoder, reducer: Reducer) -> None:
        if int(encoder.dim) != reducer.in_dim:
            trained = f" of {reducer.encoder_name}" if reducer.encoder_name else ""
            raise ValueError(f"reducer {reducer.path} expects {reducer.in_dim}-d vectors"
                             f"{trained}, encoder {encoder.name} gives {encoder.dim}-d")
        if reducer.encoder_name and reducer.encoder_name != encoder.name:
            log.warning("reducer %s was trained on %s vectors, used on %s", reducer.path,
                        reducer.encoder_name, encoder.name)
        self.encoder = encoder
        self.reducer = reducer
        self.dim = reducer.code_dim
        self.device = encoder.device
        self.name = f"{encoder.name}+{reducer.kind}{reducer.code_dim}:{reducer.path.name}"
        self.default_threshold = reducer.default_threshold
        self.default_merge_threshold = reducer.default_merge_threshold

    @property
    def tokens_seen(self) -> int:
        return self.encoder.tokens_seen

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.reducer.reduce(self.encoder.encode(texts))


__all__ = ["KINDS", "ReducedEncoder", "Reducer", "ReducerTrainResult", "build_reducer",
           "load_reducer", "parse_spec", "read_config", "reducer_loss", "save_reducer",
           "train_reducer"]
