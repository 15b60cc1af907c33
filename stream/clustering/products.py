"""The matrix product of a batch with the centres, in float32, bfloat16 or int8.

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

The int8 path (:class:`Int8Rows`) keeps an int8 copy of the centres in step with them, row by
row (symmetric, one scale per row: ``c ~ s * q`` with ``s = max |c_i| / 127``), quantises
the batch the same way, and multiplies in exact int32 arithmetic (``torch._int_mm``, one
thread), which CPUs with VNNI dot-product instructions run about four times as fast per core
as float32. For unit vectors of 896 dimensions an entry is within about ``2 ** -8`` of the
float32 product (on the hybrid encoder's vectors of news and news-t, 256 x 1,000 entries:
largest difference 0.0036-0.0043, standard deviation 5e-4, measured). Measured on a 2-core AMD EPYC (AVX512-VNNI and AVX512-BF16, no AMX), 256 x 896 by
896 x 1,000: float32 OpenBLAS on two threads 2.7-2.9 ms, bfloat16 through torch on one thread
2.5 ms, int8 on one thread 1.1-1.2 ms.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np

PRECISIONS = ("auto", "fp32", "bf16", "int8")
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""CPU flags (as Linux names them) of the int8 dot-product instructions that make the int8
product fast."""
ROW_STEP = 64
"""The bfloat16 product pads ``X`` with zero rows to a multiple of this: oneDNN builds a kernel
for each new shape (1-3 ms on first use, measured), and a service's micro-batches come in
every size up to the largest, so unpadded each new size would stall its batch once."""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in ``/proc/cpuinfo``; empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(precision: str) -> str:
    """``auto`` is ``int8`` where the CPU has int8 dot-product instructions (VNNI or AMX)
    and torch has its int8 product, else ``fp32``.

    ``bf16`` is never picked by ``auto``: it was twice as fast as float32 on a CPU with AMX,
    but no faster on one with AVX512-BF16 alone (2.5 against 2.7 ms, measured), and every
    CPU with AMX has VNNI too.

    >>> resolve_precision("fp32")
    'fp32'
    >>> resolve_precision("fp64")
    Traceback (most recent call last):
    ...
    ValueError: precision='fp64' should be one of auto, fp32, bf16, int8
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} should be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "int8" if cpu_flags() & INT8_FLAGS and has_int8_product() else "fp32"
    if precision == "int8" and not has_int8_product():
        raise ValueError("precision='int8' needs torch._int_mm, which this torch lacks: "
                         "use 'fp32'")
    return precision


@functools.cache
def has_int8_product() -> bool:
    """Whether torch's int8 matrix product (``torch._int_mm``, a private function) exists
    and runs on the CPU here: tried once on a tiny product, and the answer kept."""
    import torch

    try:
        a = torch.ones((2, 8), dtype=torch.int8)
        return int(torch._int_mm(a, a.T)[0, 0]) == 8
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def padded_rows(n: int) -> int:
    """The rows of the bfloat16 product for ``n`` rows of ``X``: ``n`` rounded up to a
    multiple of :data:`ROW_STEP`.

    >>> padded_rows(1), padded_rows(64), padded_rows(65), padded_rows(256)
    (64, 64, 128, 256)
    """
    return -(-n // ROW_STEP) * ROW_STEP


def cross(X: np.ndarray, C: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """``X @ C.T`` as a float32 array, in ``precision`` (``fp32``, ``bf16`` or ``int8``; for
    int8 over many batches, keep the centres quantised in an :class:`Int8Rows`).

    >>> X = np.eye(2, 3, dtype=np.float32)
    >>> cross(X, X, "bf16").tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    if precision == "fp32" or X.size == 0 or C.size == 0:
        return X @ C.T
    if precision == "int8":
        return cross_int8(X, *quantise(C))
    import torch

    n = X.shape[0]
    with one_torch_thread(), torch.inference_mode():
        a = torch.zeros((padded_rows(n), X.shape[1]), dtype=torch.bfloat16)
        a[:n] = torch.from_numpy(np.ascontiguousarray(X))
        b = torch.from_numpy(np.ascontiguousarray(C)).to(torch.bfloat16)
        return (a @ b.T)[:n].float().numpy()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside, the caller's thread setting restored after (see the
    module's pitfall: torch's pool and OpenBLAS's spin against each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def quantise(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantisation, one scale per row: ``A ~ scale[:, None] * q`` with
    ``q`` in ``[-127, 127]`` and ``scale = max |A_i| / 127`` (a zero row gets a tiny scale
    and zeros).

    >>> q, s = quantise(np.array([[0.5, -0.25, 0.0]], np.float32))
    >>> q.tolist(), round(float(s[0]) * 127, 4)
    ([[127, -64, 0]], 0.5)
    """
    if A.shape[1] == 0:
        return np.zeros(A.shape, np.int8), np.ones(len(A), np.float32)
    top = np.abs(A).max(axis=1).astype(np.float32, copy=False)
    scale = np.maximum(top / np.float32(127.0), np.float32(1e-30))
    scaled = np.einsum("ij,i->ij", A, np.float32(1.0) / scale)  # faster than A * col[:, None]
    q = np.rint(scaled, out=scaled).astype(np.int8)
    return q, scale


def cross_int8(X: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``X @ C.T`` as float32, for ``C`` given quantised (:func:`quantise`) as ``q`` and
    ``scale``: ``X`` is quantised the same way and the int8 product taken exactly in int32
    on one torch thread (see the module's pitfall), then scaled back.

    >>> X = np.eye(2, 3, dtype=np.float32)
    >>> cross_int8(X, *quantise(X)).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    return int8_product(*quantise(X), q, scale)


def int8_product(xq: np.ndarray, xs: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(xs * xq) @ (scale * q).T`` as float32, exact in int32 before scaling."""
    if xq.shape[0] == 0 or q.shape[0] == 0:
        return np.zeros((xq.shape[0], q.shape[0]), np.float32)
    import torch

    with one_torch_thread():
        r = torch._int_mm(torch.from_numpy(xq), torch.from_numpy(q).T).numpy()
    # int32 to float32 is exact while |r| <= dim * 127**2 < 2**24 (up to 1,040 dims)
    S = np.multiply(r, xs[:, None], dtype=np.float32)
    S *= scale[None, :]
    return S


class Int8Rows:
    """An int8 copy of a float32 matrix of rows (the centres), kept in step with it row by
    row, so a batch's product with it (:meth:`cross`) does not quantise every centre again.

    Quantising costs a few passes over the rows that changed; the copy is a quarter of the
    float32 rows' size (0.9 MB for 1,000 rows of 896).

    >>> C = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    >>> rows = Int8Rows(capacity=4, dim=2)
    >>> rows.set(np.arange(2), C)
    >>> print(rows.cross(np.array([[0.0, 1.0]], np.float32), 2).round(2))
    [[0.  0.8]]
    """

    def __init__(self, capacity: int, dim: int) -> None:
        self.q = np.zeros((capacity, dim), np.int8)
        self.scale = np.zeros(capacity, np.float32)

    def set(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Rows ``rows`` now hold ``values`` (one row of ``values`` per index)."""
        self.q[rows], self.scale[rows] = quantise(values)

    def keep(self, keep: np.ndarray) -> None:
        """Keep only the rows ``keep`` (ascending), moved to the front in their order."""
        self.q[:keep.size] = self.q[keep]
        self.scale[:keep.size] = self.scale[keep]

    def cross(self, X: np.ndarray, k: int) -> np.ndarray:
        """``X @ rows[:k].T`` through the int8 product."""
        return cross_int8(X, self.q[:k], self.scale[:k])

    def cross_quantised(self, xq: np.ndarray, xs: np.ndarray, k: int) -> np.ndarray:
        """:meth:`cross` of a batch already quantised (:func:`quantise`)."""
        return int8_product(xq, xs, self.q[:k], self.scale[:k])

    def cross_rows(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The product of the held rows ``rows`` with the held rows ``cols`` (transposed),
        nothing quantised again."""
        return int8_product(self.q[rows], self.scale[rows], self.q[cols], self.scale[cols])
