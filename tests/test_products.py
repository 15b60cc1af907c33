"""The product of a batch with the centres, in float32, bfloat16 and int8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream.clustering.products import (
    INT8_FLAGS,
    ROW_STEP,
    Int8Rows,
    cpu_flags,
    cross,
    cross_int8,
    quantise,
    resolve_precision,
)


def units(n: int, d: int, seed: int) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def test_fp32_is_numpys_product() -> None:
    X, C = units(50, 96, 0), units(70, 96, 1)
    np.testing.assert_array_equal(cross(X, C, "fp32"), X @ C.T)


def test_bf16_is_within_its_rounding_of_fp32() -> None:
    X, C = units(256, 896, 2), units(300, 896, 3)
    C[:5] = X[:5]  # some pairs near 1
    S = cross(X, C, "bf16")
    assert S.dtype == np.float32 and S.shape == (256, 300)
    exact = X @ C.T
    assert np.abs(S - exact).max() <= 2.0 ** -7
    assert not np.array_equal(S, exact)  # rounded: not the float32 product under another name


@pytest.mark.parametrize("n", [1, ROW_STEP - 1, ROW_STEP, ROW_STEP + 1, 3 * ROW_STEP - 5])
def test_bf16_rows_padded_to_the_step_stay_out_of_the_result(n: int) -> None:
    X, C = units(n, 96, 8), units(40, 96, 9)
    S = cross(X, C, "bf16")
    assert S.shape == (n, 40)
    assert np.abs(S - X @ C.T).max() <= 2.0 ** -7


def test_bf16_products_of_every_batch_size_take_a_few_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch size up to 256 reaches the product as one of 4 row counts (each builds its
    oneDNN kernel once), not as 256."""
    shapes: set[tuple[int, ...]] = set()
    zeros = torch.zeros

    def spy(*args: object, **kw: object) -> torch.Tensor:
        t = zeros(*args, **kw)  # type: ignore[call-overload]
        shapes.add(tuple(t.shape))
        return t

    monkeypatch.setattr(torch, "zeros", spy)
    C = units(8, 16, 10)
    for n in range(1, 257):
        assert cross(units(n, 16, n), C, "bf16").shape == (n, 8)
    assert {s[0] for s in shapes} == {64, 128, 192, 256}


def test_auto_follows_the_cpu() -> None:
    """int8 where the CPU has int8 dot-product instructions, else float32; never bf16
    (not faster without AMX, measured)."""
    assert resolve_precision("auto") == ("int8" if cpu_flags() & INT8_FLAGS else "fp32")
    for precision in ("fp32", "bf16", "int8"):
        assert resolve_precision(precision) == precision
    with pytest.raises(ValueError, match="precision='int4' should be one of auto, fp32, bf16, int8"):
        resolve_precision("int4")


def test_quantise_round_trips_within_half_a_step() -> None:
    A = units(300, 896, 11)
    A[7] = 0.0  # a zero row
    q, scale = quantise(A)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    assert np.abs(q).max() == 127
    back = q.astype(np.float32) * scale[:, None]
    assert (np.abs(back - A) <= scale[:, None] / 2 + 1e-7).all()
    assert not q[7].any()
    # each row's largest entry is exactly +-127 steps
    assert (np.abs(q[np.arange(300) != 7]).max(axis=1) == 127).all()


def test_int8_is_within_its_rounding_of_fp32() -> None:
    X, C = units(256, 896, 12), units(300, 896, 13)
    C[:5] = X[:5]  # some pairs near 1
    exact = X @ C.T
    S = cross(X, C, "int8")
    assert S.dtype == np.float32 and S.shape == (256, 300)
    assert np.abs(S - exact).max() <= 2.0 ** -7
    assert np.abs(S - exact).std() <= 1e-3
    assert not np.array_equal(S, exact)  # rounded: not the float32 product under another name
    np.testing.assert_array_equal(S, cross_int8(X, *quantise(C)))


def test_int8_rows_kept_in_step_give_the_product_of_their_rows() -> None:
    """Rows set, overwritten and compacted: the held copy is always the quantised rows, and
    its products are those of quantising them afresh."""
    C = units(40, 64, 14)
    rows = Int8Rows(capacity=50, dim=64)
    rows.set(np.arange(40), C)
    C[[3, 9]] = units(2, 64, 15)
    rows.set(np.array([3, 9]), C[[3, 9]])
    keep = np.array([0, 3, 9, 20, 39])
    rows.keep(keep)
    C = C[keep]
    q, scale = quantise(C)
    np.testing.assert_array_equal(rows.q[:5], q)
    np.testing.assert_array_equal(rows.scale[:5], scale)
    X = units(7, 64, 16)
    np.testing.assert_array_equal(rows.cross(X, 5), cross_int8(X, q, scale))
    np.testing.assert_array_equal(rows.cross_quantised(*quantise(X), 5), rows.cross(X, 5))
    S = rows.cross_rows(np.array([1, 2]), np.array([0, 4]))
    np.testing.assert_allclose(S, C[[1, 2]] @ C[[0, 4]].T, atol=2.0 ** -7)


def test_int8_without_torchs_int8_product_is_refused_and_auto_falls_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from stream.clustering import products

    assert products.has_int8_product()  # the pinned torch has it on this CPU
    monkeypatch.setattr(products, "has_int8_product", lambda: False)
    assert resolve_precision("auto") == "fp32"
    with pytest.raises(ValueError, match="precision='int8' needs torch._int_mm"):
        resolve_precision("int8")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_products_keep_the_callers_torch_threads(precision: str) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cross(units(8, 16, 4), units(8, 16, 5), precision)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_empty_operands(precision: str) -> None:
    assert cross(np.zeros((0, 4), np.float32), units(3, 4, 6), precision).shape == (0, 3)
    assert cross(units(3, 4, 7), np.zeros((0, 4), np.float32), precision).shape == (3, 0)


def test_int8_rows_with_no_rows_held() -> None:
    assert Int8Rows(4, 4).cross(units(2, 4, 8), 0).shape == (2, 0)
