"""The product of a batch with the centres, in float32 and in bfloat16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.transformer import cpu_has_bf16
from stream.clustering.products import ROW_STEP, cross, resolve_precision


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


def test_bf16_keeps_the_callers_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cross(units(8, 16, 4), units(8, 16, 5), "bf16")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_empty_operands() -> None:
    assert cross(np.zeros((0, 4), np.float32), units(3, 4, 6), "bf16").shape == (0, 3)
    assert cross(units(3, 4, 7), np.zeros((0, 4), np.float32), "bf16").shape == (3, 0)


def test_auto_follows_the_cpu() -> None:
    assert resolve_precision("auto") == ("bf16" if cpu_has_bf16() else "fp32")
    assert resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision='int8' should be one of auto, fp32, bf16"):
        resolve_precision("int8")
