"""The matrix product of a batch with the centres, in float32 or in bfloat16.

The product of a micro-batch with every centre (``X @ C.T``, e.g. 256 x 896 by 896 x 1,000)
is the largest single cost of a clustering step. numpy has no bfloat16 product, so the
bfloat16 path goes through torch (a dependency already, for the encoders) on a CPU that
computes bfloat16 natively (AVX512-BF16 or AMX), where it runs about twice as fast as
float32 OpenBLAS on two threads, on one thread.

Pitfall: the bfloat16 product runs on *one* torch thread. torch's OpenMP pool and
OpenBLAS's threads both spin for a while after each call, so alternating two-threaded torch
products with numpy's two-threaded ones on a 2-core machine made the whole step twice as
slow or worse, not faster (measured). The thread setting is restored after each call, so an encoder
in the same process keeps its threads.

Inputs are rounded to bfloat16 (8 bits of mantissa) and accumulated in float32: for unit
vectors an entry is within about ``2 ** -8`` of the float32 product.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ("auto", "fp32", "bf16")
ROW_STEP = 64
"""The bfloat16 product pads ``X`` with zero rows to a multiple of this: oneDNN builds a kernel
for each new shape (1-3 ms on first use, measured), and a service's micro-batches come in
every size up to the largest, so unpadded each new size would stall its batch once."""


def resolve_precision(precision: str) -> str:
    """``auto`` is ``bf16`` where the CPU has native bfloat16, else ``fp32``.

    >>> resolve_precision("fp32")
    'fp32'
    >>> resolve_precision("fp64")
    Traceback (most recent call last):
    ...
    ValueError: precision='fp64' should be one of auto, fp32, bf16
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} should be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        from encoders.transformer import cpu_has_bf16  # the encoders' test of the same CPU

        return "bf16" if cpu_has_bf16() else "fp32"
    return precision


def padded_rows(n: int) -> int:
    """The rows of the bfloat16 product for ``n`` rows of ``X``: ``n`` rounded up to a
    multiple of :data:`ROW_STEP`.

    >>> padded_rows(1), padded_rows(64), padded_rows(65), padded_rows(256)
    (64, 64, 128, 256)
    """
    return -(-n // ROW_STEP) * ROW_STEP


def cross(X: np.ndarray, C: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """``X @ C.T`` as a float32 array, in ``precision`` (``fp32`` or ``bf16``).

    >>> X = np.eye(2, 3, dtype=np.float32)
    >>> cross(X, X, "bf16").tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    if precision == "fp32" or X.size == 0 or C.size == 0:
        return X @ C.T
    import torch

    n = X.shape[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            a = torch.zeros((padded_rows(n), X.shape[1]), dtype=torch.bfloat16)
            a[:n] = torch.from_numpy(np.ascontiguousarray(X))
            b = torch.from_numpy(np.ascontiguousarray(C)).to(torch.bfloat16)
            return (a @ b.T)[:n].float().numpy()
    finally:
        torch.set_num_threads(threads)
