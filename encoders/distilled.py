"""Distilled encoders: small, fast students of the transformer, for CPU-only deployments.

Two students share the teacher's WordPiece tokenizer (same ids) and start from its input
embedding table (``embeddings.word_embeddings.weight``):

- ``static``: the mean of the token embeddings (word-embedding averaging, the strong
  baseline of Wieting et al., "Towards Universal Paraphrastic Sentence Embeddings", ICLR
  2016; distilled from a transformer as in Model2Vec-style static embeddings), computed by
  one :class:`torch.nn.EmbeddingBag` over the whole batch;
- ``cnn``: a 1-D convolution over the token embeddings, max pooling over time and a linear
  projection (Kim, "Convolutional Neural Networks for Sentence Classification", EMNLP 2014),
  added to the static mean. The projection starts at zero, so the CNN starts as the static
  student and learns a correction on top of it.

Both are trained by knowledge distillation (Hinton et al., "Distilling the Knowledge in a
Neural Network", 2015; for sentence embeddings, Reimers & Gurevych, "Making Monolingual
Sentence Embeddings Multilingual using Knowledge Distillation", EMNLP 2020): the teacher
encodes the (unlabelled) texts once, and the student minimises ``1 - cos(student, teacher)``.
Labels are never read.

A trained student is a directory: ``model.safetensors`` (weights, no pickle),
``config.json`` (format ``topicstream-distilled``, version 1, kind, shapes,
hyperparameters, default threshold) and the teacher's ``tokenizer.json``. Load it with
``load_encoder("distilled:DIR")``.

Default threshold (the cosine to join a cluster): the teacher's threshold (0.4 for
sentence-transformer models) moved to the same *quantile* of the student's cosines. At the
end of training, on up to 2000 of the training texts, ``q`` is the share of text pairs whose
teacher cosine is below the teacher's threshold, and the student's threshold is the
``q``-quantile of the student's cosines of the same pairs. It uses the training texts only,
never labels, so a student that packs texts closer together than the teacher (averaged
embeddings do) gets a correspondingly higher threshold.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "topicstream-distilled"
VERSION = 1
KINDS = ("static", "cnn")
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} should be one of {', '.join(KINDS)}")


def build_model(kind: str, vocab_size: int, dim: int, kernel_sizes: Sequence[int] = (3,),
                channels: int = 512) -> Any:
    """The student network (a :class:`torch.nn.Module`) with fresh weights.

    ``forward(flat_ids, offsets, padded)``: ``flat_ids`` and ``offsets`` are the batch's
    token ids end to end and where each text starts (for the ``EmbeddingBag`` mean);
    ``padded`` is the ``(rows, width)`` padded id matrix (0 = padding), used by ``cnn`` only.
    Returns ``(rows, dim)`` un-normalised sentence vectors.
    """
    import torch
    from torch import nn

    _check_kind(kind)

    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag = nn.EmbeddingBag(vocab_size, dim, mode="mean")
            if kind == "cnn":
                self.convs = nn.ModuleList(nn.Conv1d(dim, channels, k, padding=k // 2)
                                           for k in kernel_sizes)
                self.proj = nn.Linear(channels * len(kernel_sizes), dim)
                nn.init.zeros_(self.proj.weight)
                nn.init.zeros_(self.proj.bias)

        def forward(self, flat_ids: Any, offsets: Any, padded: Any = None) -> Any:
            mean = self.bag(flat_ids, offsets)
            if kind == "static":
                return mean
            mask = padded != 0  # (rows, width)
            emb = nn.functional.embedding(padded, self.bag.weight).transpose(1, 2)
            feats = []
            for conv in self.convs:
                h = torch.relu(conv(emb))[:, :, :mask.shape[1]]  # (rows, channels, width)
                h = h.masked_fill(~mask[:, None, :], 0.0)  # relu >= 0, so 0 is neutral for max
                feats.append(h.amax(dim=2))
            return mean + self.proj(torch.cat(feats, dim=1))

    return Student()


def _flatten(ids: Sequence[Sequence[int]], kind: str) -> tuple[Any, Any, Any]:
    """Token id lists to the student's inputs: flat ids, offsets, and (cnn) a padded matrix."""
    import torch

    from encoders.transformer import pad

    lens = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    flat = np.fromiter((t for x in ids for t in x), np.int64, int(lens.sum()))
    offsets = np.zeros(len(ids), np.int64)
    np.cumsum(lens[:-1], out=offsets[1:])
    padded = None
    if kind == "cnn":
        batch, _ = pad(ids)
        padded = torch.from_numpy(batch)
    return torch.from_numpy(flat), torch.from_numpy(offsets), padded


class DistilledEncoder:
    """A trained ``static`` or ``cnn`` student (see the module docstring), as an
    :class:`~encoders.Encoder`: 384-d float32 unit rows, like the teacher's.

    Parameters
    ----------
    path
        Directory written by :func:`train_distilled` (``topicstream train``).
    batch_size
        Texts per forward pass (``cnn`` sorts a call's texts by length first, so padding is
        small).

    Raises
    ------
    FileNotFoundError
        The directory, ``config.json``, ``model.safetensors`` or ``tokenizer.json`` is missing.
    ValueError
        ``config.json`` is not JSON or names another format or version, the weights file is
        corrupted, or a tensor's shape does not match the config.
    """

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 1024) -> None:
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        if device not in ("cpu", "auto"):
            raise ValueError(f"device={device!r}: distilled encoders run on the CPU")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} should be >= 1")
        self.path = path = Path(path)
        self.config = cfg = read_config(path)
        self.kind: str = cfg["kind"]
        self.dim = int(cfg["dim"])
        self.max_length = int(cfg["max_length"])
        self.device = "cpu"
        self.batch_size = batch_size
        self.default_threshold = float(cfg.get("default_threshold", 0.4))
        self.name = f"distilled-{self.kind}:{path.name}"
        self.tokens_seen = 0

        tok_file = path / TOKENIZER
        if not tok_file.is_file():
            raise FileNotFoundError(f"{tok_file}: missing (a distilled encoder directory holds "
                                    f"{CONFIG}, {WEIGHTS} and {TOKENIZER})")
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise ValueError(f"{tok_file}: not a tokenizers file ({exc})") from exc
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.no_padding()

        self.model = build_model(self.kind, int(cfg["vocab_size"]), self.dim,
                                 tuple(cfg.get("kernel_sizes", (3,))), int(cfg.get("channels", 512)))
        wfile = path / WEIGHTS
        if not wfile.is_file():
            raise FileNotFoundError(f"{wfile}: missing (train one with 'topicstream train')")
        try:
            state = load_file(str(wfile))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{wfile}: not a readable safetensors file ({exc})") from exc
        expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if expected != got:
            diff = sorted(set(expected.items()) ^ set(got.items()))
            raise ValueError(f"{wfile}: tensors do not match {CONFIG} (kind={self.kind!r}, "
                             f"vocab_size={cfg['vocab_size']}, dim={self.dim}): expected "
                             f"{expected}, differences {diff}")
        self.model.load_state_dict({k: v.float() for k, v in state.items()})
        self.model.eval()
        self._torch = torch

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        ids = self.tokenize(texts)
        lens = np.fromiter((len(x) for x in ids), np.int64, n)
        self.tokens_seen += int(lens.sum())
        # cnn: by length, so each batch pads to about its own width; static needs no padding
        order = np.argsort(-lens, kind="stable") if self.kind == "cnn" else np.arange(n)
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                flat, offsets, padded = _flatten([ids[i] for i in idx], self.kind)
                vec = torch.nn.functional.normalize(self.model(flat, offsets, padded), dim=1)
                out[idx] = vec.numpy()
        return out


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a distilled encoder directory, checked (format, version, kind)."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory (a distilled encoder is a directory "
                                "written by 'topicstream train')")
    cfg_file = path / CONFIG
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: missing (not a distilled encoder directory)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_file}: not JSON ({exc})") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else cfg
        raise ValueError(f"{cfg_file}: format={got!r}, expected {FORMAT!r}")
    if cfg.get("version") != VERSION:
        raise ValueError(f"{cfg_file}: version={cfg.get('version')!r}, this topicstream reads "
                         f"version {VERSION}")
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{cfg_file}: kind={kind!r} should be one of {', '.join(KINDS)}")
    for key in ("dim", "vocab_size", "max_length"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise ValueError(f"{cfg_file}: {key}={cfg.get(key)!r} should be a positive integer")
    return cfg


@dataclass
class TrainResult:
    """What :func:`train_distilled` did: per-epoch mean losses, time, where it saved."""

    out_dir: Path
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    teacher_seconds: float = 0.0
    default_threshold: float = 0.4
    model: Any = None  # the trained student network, in eval mode


def _matched_threshold(teacher: np.ndarray, student: np.ndarray, teacher_threshold: float,
                       rng: np.random.Generator, sample: int = 2000) -> float:
    """The student's cosine at the quantile where the teacher's threshold sits (module doc)."""
    n = len(teacher)
    if n < 2:
        return teacher_threshold
    idx = rng.choice(n, size=min(n, sample), replace=False)
    iu = np.triu_indices(len(idx), k=1)
    t = (teacher[idx] @ teacher[idx].T)[iu]
    s = (student[idx] @ student[idx].T)[iu]
    q = float(np.mean(t < teacher_threshold))
    return round(float(np.quantile(s, q)), 4)


def train_distilled(kind: str, texts: Sequence[str], out_dir: str | Path, epochs: int = 20,
                    minutes: float = 5.0, seed: int = 0, batch_size: int = 128,
                    lr: float = 2e-3, max_length: int = 128, kernel_sizes: Sequence[int] = (3,),
                    channels: int = 512, teacher_dir: str | Path | None = None,
                    precision: str = "auto", progress: bool = True,
                    teacher: Any = None) -> TrainResult:
    """Distil the transformer into a ``static`` or ``cnn`` student and save it to ``out_dir``.

    The teacher (:class:`~encoders.transformer.TransformerEncoder`, all-MiniLM-L6-v2 by
    default) encodes ``texts`` once; the student, its token embeddings initialised from the
    teacher's input embedding table, is trained with AdamW on ``1 - cos(student, teacher)``
    for ``epochs`` passes over the texts or ``minutes`` minutes, whichever ends first
    (the epoch in progress stops at the time bound). Unlabelled: only texts are seen.

    Parameters
    ----------
    kind
        ``static`` or ``cnn``.
    texts
        Training texts.
    out_dir
        Directory to write (created; files already there of the same names are replaced).
    epochs, minutes
        Bounds on training.
    seed
        Seeds torch and the numpy shuffles: the same inputs give the same student (on the
        same machine and thread count).
    batch_size
        Texts per optimisation step.
    lr
        AdamW learning rate (no weight decay on the embedding table, so the rows of tokens
        absent from the training texts stay the teacher's).
    teacher
        A ready teacher encoder (else one is built from ``teacher_dir`` and ``precision``).
    """
    import torch
    from safetensors.torch import save_file

    from encoders.transformer import TransformerEncoder, default_model_dir

    _check_kind(kind)
    if epochs < 1:
        raise ValueError(f"epochs={epochs} should be >= 1")
    if not minutes > 0:
        raise ValueError(f"minutes={minutes} should be > 0")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} should be >= 1")
    if max_length < 2:
        raise ValueError(f"max_length={max_length} should be >= 2")
    if len(texts) == 0:
        raise ValueError("no texts to train on")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} exists and is not a directory")

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    if teacher is None:
        teacher = TransformerEncoder(teacher_dir, device="cpu", precision=precision)
    teacher_path = Path(teacher_dir) if teacher_dir else default_model_dir()
    log.info("teacher %s encodes %d texts", teacher.name, len(texts))
    target = teacher.encode(texts).astype(np.float32)
    teacher_seconds = time.monotonic() - t0

    table = teacher.model.embeddings.word_embeddings.weight.detach().float().cpu()
    vocab_size, dim = table.shape
    model = build_model(kind, int(vocab_size), int(dim), tuple(kernel_sizes), channels)
    with torch.no_grad():
        model.bag.weight.copy_(table)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(teacher_path / TOKENIZER))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    ids = [e.ids for e in tokenizer.encode_batch(list(texts))]

    emb_params = [model.bag.weight]
    other = [p for n, p in model.named_parameters() if n != "bag.weight"]
    groups: list[dict[str, Any]] = [{"params": emb_params, "weight_decay": 0.0}]
    if other:
        groups.append({"params": other, "weight_decay": 0.01})
    opt = torch.optim.AdamW(groups, lr=lr)
    target_t = torch.from_numpy(target)
    n = len(ids)
    steps_per_epoch = math.ceil(n / batch_size)
    deadline = time.monotonic() + 60.0 * minutes
    result = TrainResult(out_dir=out, teacher_seconds=teacher_seconds)
    from tqdm import tqdm

    bar = tqdm(total=epochs * steps_per_epoch, file=sys.stderr, disable=not progress,
               desc=f"distil {kind}", unit="step", dynamic_ncols=True)
    start = time.monotonic()
    model.train()
    try:
        for epoch in range(epochs):
            perm = rng.permutation(n)
            total, count = 0.0, 0
            for s in range(0, n, batch_size):
                idx = perm[s:s + batch_size]
                flat, offsets, padded = _flatten([ids[i] for i in idx], kind)
                pred = model(flat, offsets, padded)
                loss = (1.0 - torch.nn.functional.cosine_similarity(
                    pred, target_t[torch.from_numpy(idx)], dim=1)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = float(loss.detach())
                total += value * len(idx)
                count += len(idx)
                result.steps += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}")
                if time.monotonic() > deadline:
                    break
            result.losses.append(total / count)
            log.info("epoch %d: mean loss %.4f", epoch + 1, result.losses[-1])
            if time.monotonic() > deadline:
                log.info("time bound of %.2f minutes reached after %d epoch(s)", minutes,
                         epoch + 1)
                break
    finally:
        bar.close()
    model.eval()
    result.model = model
    result.seconds = time.monotonic() - start

    # the student's vectors of the training texts, for the threshold rule (module docstring)
    with torch.inference_mode():
        parts = []
        for s in range(0, n, 1024):
            flat, offsets, padded = _flatten(ids[s:s + 1024], kind)
            parts.append(torch.nn.functional.normalize(model(flat, offsets, padded), dim=1))
        student = torch.cat(parts).numpy()
    teacher_threshold = float(getattr(teacher, "default_threshold", 0.4))
    result.default_threshold = _matched_threshold(target, student, teacher_threshold, rng)

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
    shutil.copyfile(teacher_path / TOKENIZER, out / TOKENIZER)
    config = {
        "format": FORMAT, "version": VERSION, "kind": kind, "dim": int(dim),
        "vocab_size": int(vocab_size), "max_length": max_length,
        "kernel_sizes": list(kernel_sizes), "channels": channels,
        "default_threshold": result.default_threshold,
        "threshold_rule": "teacher threshold moved to the same quantile of the student's "
                          "pairwise cosines on the training texts",
        "teacher": teacher.name, "teacher_threshold": teacher_threshold,
        "training": {"texts": n, "epochs_run": len(result.losses), "steps": result.steps,
                     "epochs": epochs, "minutes": minutes, "seed": seed,
                     "batch_size": batch_size, "lr": lr, "optimizer": "AdamW",
                     "loss": "1 - cos", "epoch_losses": [round(x, 6) for x in result.losses]},
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    log.info("saved the %s student to %s (default threshold %.4f)", kind, out,
             result.default_threshold)
    return result


__all__ = ["DistilledEncoder", "KINDS", "TrainResult", "build_model", "read_config",
           "train_distilled"]
