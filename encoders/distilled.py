"""Distilled encoders: small, fast students of the transformer, for CPU-only deployments.

Four students share the teacher's WordPiece tokenizer (same ids) and start from its input
embedding table (``embeddings.word_embeddings.weight``):

- ``static``: the mean of the token embeddings (word-embedding averaging, the strong
  baseline of Wieting et al., "Towards Universal Paraphrastic Sentence Embeddings", ICLR
  2016; distilled from a transformer as in Model2Vec-style static embeddings), computed by
  one :class:`torch.nn.EmbeddingBag` over the whole batch;
- ``cnn``: a 1-D convolution over the token embeddings, max pooling over time and a linear
  projection (Kim, "Convolutional Neural Networks for Sentence Classification", EMNLP 2014),
  added to the static mean. The projection starts at zero, so the CNN starts as the static
  student and learns a correction on top of it. Hyperparameters: ``kernel_sizes``,
  ``channels``;
- ``bilstm``: a bidirectional LSTM over the token embeddings (Hochreiter & Schmidhuber,
  "Long Short-Term Memory", Neural Computation 1997; bidirectional: Graves & Schmidhuber,
  "Framewise Phoneme Classification with Bidirectional LSTM", Neural Networks 2005), max
  pooling over time of its hidden states (the BiLSTM-max encoder of Conneau et al.,
  "Supervised Learning of Universal Sentence Representations from Natural Language
  Inference Data" (InferSent), EMNLP 2017) and a linear projection, added to the static
  mean; the projection starts at zero, as in ``cnn``. The batch runs as a packed sequence,
  so each direction reads only the text's own tokens. Hyperparameter: ``hidden`` (units
  per direction);
- ``attention``: additive attention pooling (Yang et al., "Hierarchical Attention Networks
  for Document Classification", NAACL 2016; Lin et al., "A Structured Self-attentive
  Sentence Embedding", ICLR 2017): a one-hidden-layer MLP scores each token,
  ``v . tanh(W e_t + U q + b)``, a softmax over the text's tokens gives the weights, and
  the vector is the weighted sum of the token embeddings. The token embeddings carry no
  context, so the query ``q`` is the text's mean embedding: a token's weight depends on
  the text it is in (without ``q`` the weights would be a per-token constant, which the
  static student can already express by rescaling its rows). ``v`` starts at zero: uniform
  weights, the mean, so the student starts as ``static``. Hyperparameter:
  ``attention_hidden`` (width of the scoring MLP).

Padding never changes a text's vector: the convolution sees zeros past a text's end (as at
its start), the LSTM runs on packed sequences, and max pooling and the softmax skip the
padding positions. Inference sorts a call's texts by length so a batch pads little.

All are trained by knowledge distillation (Hinton et al., "Distilling the Knowledge in a
Neural Network", 2015; for sentence embeddings, Reimers & Gurevych, "Making Monolingual
Sentence Embeddings Multilingual using Knowledge Distillation", EMNLP 2020): the teacher
encodes the (unlabelled) texts once, and the student minimises ``1 - cos(student, teacher)``.
Labels are never read.

A trained student is a directory: ``model.safetensors`` (weights, no pickle),
``config.json`` (format ``topicstream-distilled``, version 1, kind, shapes,
hyperparameters, default threshold) and the teacher's ``tokenizer.json``. Load it with
``load_encoder("distilled:DIR")``. A configuration without a hyperparameter (written
before it existed) gets its default.

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

from encoders.trained import CONFIG, WEIGHTS, load_weights, matched_threshold
from encoders.trained import read_config as read_model_config

log = logging.getLogger(__name__)

FORMAT = "topicstream-distilled"
VERSION = 1
KINDS = ("static", "cnn", "bilstm", "attention")
TOKENIZER = "tokenizer.json"
#: hyperparameters of the students and their defaults (a config without one gets its default)
DEFAULTS: dict[str, Any] = {"kernel_sizes": [3], "channels": 512, "hidden": 256,
                            "attention_hidden": 128}
#: the hyperparameters each kind uses
USES: dict[str, tuple[str, ...]] = {"static": (), "cnn": ("kernel_sizes", "channels"),
                                    "bilstm": ("hidden",), "attention": ("attention_hidden",)}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} should be one of {', '.join(KINDS)}")


def _check_hyperparameters(kernel_sizes: Sequence[int], channels: int, hidden: int,
                           attention_hidden: int) -> None:
    if len(kernel_sizes) == 0 or any(not isinstance(k, int) or k < 1 for k in kernel_sizes):
        raise ValueError(f"kernel_sizes={list(kernel_sizes)!r} should be a non-empty list of "
                         "integers >= 1")
    for name, value in (("channels", channels), ("hidden", hidden),
                        ("attention_hidden", attention_hidden)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} should be >= 1")


def build_model(kind: str, vocab_size: int, dim: int, kernel_sizes: Sequence[int] = (3,),
                channels: int = 512, hidden: int = 256, attention_hidden: int = 128) -> Any:
    """The student network (a :class:`torch.nn.Module`) with fresh weights.

    Parameters
    ----------
    kind
        One of :data:`KINDS` (module docstring).
    vocab_size, dim
        Shape of the token embedding table (the teacher's).
    kernel_sizes, channels
        ``cnn``: convolution widths, and output channels of each convolution.
    hidden
        ``bilstm``: LSTM units per direction.
    attention_hidden
        ``attention``: width of the scoring MLP.

    Returns
    -------
    torch.nn.Module
        ``forward(flat_ids, offsets, padded)``: ``flat_ids`` and ``offsets`` are the batch's
        token ids end to end and where each text starts (``static``: the ``EmbeddingBag``
        mean); ``padded`` is the ``(rows, width)`` right-padded id matrix of the other kinds,
        which take the mean from it (one lookup of the table) and read the texts' lengths
        from ``offsets``, never from the padding id. The table is ``bag.weight`` in every
        kind. Returns
        ``(rows, dim)`` un-normalised sentence vectors. Every kind but ``static`` starts
        equal to ``static`` (zero projection or zero attention scores).
    """
    import torch
    from torch import nn

    _check_kind(kind)
    _check_hyperparameters(kernel_sizes, channels, hidden, attention_hidden)

    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag = nn.EmbeddingBag(vocab_size, dim, mode="mean")
            if kind == "cnn":
                self.convs = nn.ModuleList(nn.Conv1d(dim, channels, k, padding=k // 2)
                                           for k in kernel_sizes)
                self.proj = nn.Linear(channels * len(kernel_sizes), dim)
            elif kind == "bilstm":
                self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
                self.proj = nn.Linear(2 * hidden, dim)
            elif kind == "attention":
                self.att_token = nn.Linear(dim, attention_hidden)  # W e_t + b
                self.att_query = nn.Linear(dim, attention_hidden, bias=False)  # U q
                self.att_score = nn.Linear(attention_hidden, 1, bias=False)  # v
                nn.init.zeros_(self.att_score.weight)  # uniform weights: the mean
            if kind in ("cnn", "bilstm"):
                nn.init.zeros_(self.proj.weight)
                nn.init.zeros_(self.proj.bias)

        def forward(self, flat_ids: Any, offsets: Any, padded: Any = None) -> Any:
            if kind == "static":
                return self.bag(flat_ids, offsets)
            # lengths from the offsets, never from the padding id (the tokenizer gives every
            # text [CLS] and [SEP]; a text of no tokens would count one, so no row is empty)
            ends = torch.cat([offsets[1:], offsets.new_tensor([flat_ids.numel()])])
            lengths = (ends - offsets).clamp(min=1)
            mask = torch.arange(padded.shape[1]) < lengths[:, None]  # (rows, width)
            # one lookup of the padded matrix, zeros past each text's end (one dense gradient
            # of the table, not two: the table is most of the backward pass)
            emb = nn.functional.embedding(padded, self.bag.weight).masked_fill(
                ~mask[:, :, None], 0.0)  # (rows, width, dim)
            mean = emb.sum(dim=1) / lengths[:, None]  # the static student's vector
            if kind == "cnn":
                # zeros past the end, as the convolution's own padding before the start
                x = emb.transpose(1, 2)
                feats = []
                for conv in self.convs:
                    h = torch.relu(conv(x))[:, :, :mask.shape[1]]  # (rows, channels, width)
                    h = h.masked_fill(~mask[:, None, :], 0.0)  # relu >= 0: 0 is neutral
                    feats.append(h.amax(dim=2))
                return mean + self.proj(torch.cat(feats, dim=1))
            if kind == "bilstm":
                packed = nn.utils.rnn.pack_padded_sequence(
                    emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
                states, _ = self.lstm(packed)
                h, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True,
                                                        total_length=mask.shape[1])
                pooled = h.masked_fill(~mask[:, :, None], -math.inf).amax(dim=1)
                return mean + self.proj(pooled)
            # attention
            u = torch.tanh(self.att_token(emb) + self.att_query(mean)[:, None, :])
            scores = self.att_score(u).squeeze(2).masked_fill(~mask, -math.inf)
            weights = torch.softmax(scores, dim=1)  # exactly 0 on padding
            return torch.bmm(weights[:, None, :], emb).squeeze(1)

    return Student()


def _flatten(ids: Sequence[Sequence[int]], kind: str) -> tuple[Any, Any, Any]:
    """Token id lists to the student's inputs: flat ids, offsets, and (all but static) a
    right-padded matrix."""
    import torch

    from encoders.transformer import pad

    lens = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    flat = np.fromiter((t for x in ids for t in x), np.int64, int(lens.sum()))
    offsets = np.zeros(len(ids), np.int64)
    np.cumsum(lens[:-1], out=offsets[1:])
    padded = None
    if kind != "static":
        batch, _ = pad(ids)
        padded = torch.from_numpy(batch)
    return torch.from_numpy(flat), torch.from_numpy(offsets), padded


def _embed(model: Any, kind: str, ids: Sequence[Sequence[int]], batch_size: int) -> np.ndarray:
    """Unit vectors of tokenised texts, ``batch_size`` at a time; all kinds but ``static``
    take the texts by length, so that each batch pads to about its own width."""
    import torch

    n = len(ids)
    out = np.empty((n, int(model.bag.embedding_dim)), dtype=np.float32)
    if n == 0:
        return out
    lens = np.fromiter((len(x) for x in ids), np.int64, n)
    order = np.arange(n) if kind == "static" else np.argsort(-lens, kind="stable")
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            flat, offsets, padded = _flatten([ids[i] for i in idx], kind)
            vec = torch.nn.functional.normalize(model(flat, offsets, padded), dim=1)
            out[idx] = vec.numpy()
    return out


class DistilledEncoder:
    """A trained student (``static``, ``cnn``, ``bilstm`` or ``attention``: see the module
    docstring), as an :class:`~encoders.Encoder`: 384-d float32 unit rows, like the teacher's.

    Parameters
    ----------
    path
        Directory written by :func:`train_distilled` (``topicstream train``).
    batch_size
        Texts per forward pass (all kinds but ``static`` sort a call's texts by length
        first, so padding is small).

    Raises
    ------
    FileNotFoundError
        The directory, ``config.json``, ``model.safetensors`` or ``tokenizer.json`` is missing.
    ValueError
        ``config.json`` is not JSON or names another format or version, or a bad
        hyperparameter; the weights file is corrupted, or a tensor's shape does not match
        the config.
    """

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 1024) -> None:
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

        hyper = {key: cfg.get(key, default) for key, default in DEFAULTS.items()}
        hyper["kernel_sizes"] = tuple(hyper["kernel_sizes"])
        self.model = build_model(self.kind, int(cfg["vocab_size"]), self.dim, **hyper)
        used = "".join(f", {key}={cfg.get(key, DEFAULTS[key])!r}" for key in USES[self.kind])
        load_weights(self.model, path, f"kind={self.kind!r}, vocab_size={cfg['vocab_size']}, "
                     f"dim={self.dim}{used}", "topicstream train")

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        ids = self.tokenize(texts)
        self.tokens_seen += sum(len(x) for x in ids)
        return _embed(self.model, self.kind, ids, self.batch_size)


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a distilled encoder directory, checked (format, version, kind,
    shapes, the hyperparameters it has)."""
    cfg = read_model_config(path, FORMAT, VERSION, KINDS, "a distilled encoder is a directory "
                            "written by 'topicstream train'")
    cfg_file = path / CONFIG

    def positive(value: Any) -> bool:  # bool is an int; true is no size
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    for key in ("dim", "vocab_size", "max_length", "channels", "hidden", "attention_hidden"):
        if (key in cfg or key in ("dim", "vocab_size", "max_length")) and not positive(
                cfg.get(key)):
            raise ValueError(f"{cfg_file}: {key}={cfg.get(key)!r} should be a positive integer")
    sizes = cfg.get("kernel_sizes", [3])
    if not isinstance(sizes, list) or not sizes or not all(positive(k) for k in sizes):
        raise ValueError(f"{cfg_file}: kernel_sizes={sizes!r} should be a non-empty list of "
                         "positive integers")
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


def train_distilled(kind: str, texts: Sequence[str], out_dir: str | Path, epochs: int = 20,
                    minutes: float = 5.0, seed: int = 0, batch_size: int = 128,
                    lr: float = 2e-3, max_length: int = 128, kernel_sizes: Sequence[int] = (3,),
                    channels: int = 512, hidden: int = 256, attention_hidden: int = 128,
                    teacher_dir: str | Path | None = None, precision: str = "auto",
                    progress: bool = True, teacher: Any = None) -> TrainResult:
    """Distil the transformer into a student of kind ``kind`` and save it to ``out_dir``.

    The teacher (:class:`~encoders.transformer.TransformerEncoder`, all-MiniLM-L6-v2 by
    default) encodes ``texts`` once; the student, its token embeddings initialised from the
    teacher's input embedding table, is trained with AdamW on ``1 - cos(student, teacher)``
    for ``epochs`` passes over the texts or ``minutes`` minutes, whichever ends first
    (the epoch in progress stops at the time bound). Unlabelled: only texts are seen.

    Parameters
    ----------
    kind
        One of :data:`KINDS`: ``static``, ``cnn``, ``bilstm`` or ``attention``.
    texts
        Training texts.
    out_dir
        Directory to write (created; files already there of the same names are replaced).
    epochs, minutes
        Bounds on training (the teacher's encoding and the threshold come on top).
    seed
        Seeds torch and the numpy shuffles: the same inputs give the same student (on the
        same machine and thread count).
    batch_size
        Texts per optimisation step.
    lr
        AdamW learning rate (no weight decay on the embedding table, so the rows of tokens
        absent from the training texts stay the teacher's).
    max_length
        Tokens per text at most (the rest is cut).
    kernel_sizes, channels, hidden, attention_hidden
        The students' hyperparameters (:func:`build_model`); all are written to
        ``config.json``, each kind reads its own.
    teacher_dir, precision
        The teacher's directory (default: the bundled all-MiniLM-L6-v2) and precision.
    progress
        Show a progress bar on stderr.
    teacher
        A ready teacher encoder (else one is built from ``teacher_dir`` and ``precision``).

    Returns
    -------
    TrainResult
        Losses, steps, times, the default threshold and the trained network.
    """
    import torch
    from safetensors.torch import save_file

    from encoders.transformer import TransformerEncoder, default_model_dir

    _check_kind(kind)
    _check_hyperparameters(kernel_sizes, channels, hidden, attention_hidden)
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
    hyper: dict[str, Any] = {"kernel_sizes": tuple(kernel_sizes), "channels": channels,
                             "hidden": hidden, "attention_hidden": attention_hidden}
    model = build_model(kind, int(vocab_size), int(dim), **hyper)
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
    # fused: one kernel over each tensor, several times faster on the CPU than the default
    # (the embedding table, 11.7M parameters, is most of the step of every kind)
    opt = torch.optim.AdamW(groups, lr=lr, fused=True)
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

    # the threshold rule (module docstring), on a sample of the training texts only
    sample = rng.choice(n, size=min(n, 2000), replace=False)
    student = _embed(model, kind, [ids[i] for i in sample], 1024)
    teacher_threshold = float(getattr(teacher, "default_threshold", 0.4))
    result.default_threshold = matched_threshold(target[sample], student, teacher_threshold)

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
    shutil.copyfile(teacher_path / TOKENIZER, out / TOKENIZER)
    config = {
        "format": FORMAT, "version": VERSION, "kind": kind, "dim": int(dim),
        "vocab_size": int(vocab_size), "max_length": max_length,
        "kernel_sizes": list(kernel_sizes), "channels": channels, "hidden": hidden,
        "attention_hidden": attention_hidden,
        "default_threshold": result.default_threshold,
        "threshold_rule": "teacher threshold moved to the same quantile of the student's "
                          "pairwise cosines on the training texts",
        "teacher": teacher.name, "teacher_threshold": teacher_threshold,
        "training": {"texts": n, "epochs_run": len(result.losses), "steps": result.steps,
                     "epochs": epochs, "minutes": minutes, "seed": seed,
                     "batch_size": batch_size, "lr": lr, "optimizer": "AdamW",
                     "loss": "1 - cos", "epoch_losses": [round(x, 6) for x in result.losses],
                     "seconds": round(result.seconds, 1)},
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    log.info("saved the %s student to %s (default threshold %.4f)", kind, out,
             result.default_threshold)
    return result


__all__ = ["DEFAULTS", "DistilledEncoder", "KINDS", "TrainResult", "build_model",
           "read_config", "train_distilled"]
