"""The CPU attention of encoders.attention against PyTorch's own, on both sides of the
width at which it switches kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from encoders import attention


@pytest.mark.parametrize("width", [1, 7, attention.PLAIN_UP_TO, attention.PLAIN_UP_TO + 1, 70])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_is_softmax_of_scaled_scores(width: int, masked: bool) -> None:
    g = torch.Generator().manual_seed(width)
    q, k, v = (torch.randn(3, 4, width, 8, generator=g) for _ in range(3))
    mask = None
    if masked:  # the last rows are padded: their keys are masked out, as transformers does
        lengths = torch.tensor([width, max(1, width // 2), 1])
        keep = torch.arange(width)[None, :] < lengths[:, None]
        mask = torch.zeros(3, 1, width, width).masked_fill(~keep[:, None, None, :], -1e30)
    out, weights = attention.width_dispatched_attention(torch.nn.Module(), q, k, v, mask, 0.3)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * 0.3
    if mask is not None:
        scores = scores + mask
    expected = torch.einsum("bhqk,bhkd->bhqd", torch.softmax(scores, -1), v).transpose(1, 2)
    assert weights is None and out.shape == (3, width, 4, 8) and out.is_contiguous()
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).transpose(1, 2)
    np.testing.assert_allclose(out.numpy(), sdpa.numpy(), atol=1e-5)


def test_attention_refuses_dropout() -> None:
    q = torch.zeros(1, 1, 2, 4)
    with pytest.raises(ValueError, match="dropout=0.1 should be 0"):
        attention.width_dispatched_attention(torch.nn.Module(), q, q, q, None, dropout=0.1)


def test_cpu_encoder_runs_it_and_drops_the_unused_pooler() -> None:
    from encoders.transformer import TransformerEncoder

    enc = TransformerEncoder(device="cpu", precision="fp32")
    assert enc.model.config._attn_implementation == attention.NAME
    assert enc.model.pooler is None
    calls = []
    original = attention.width_dispatched_attention

    def spy(*args, **kwargs):
        calls.append(args[1].shape[2])
        return original(*args, **kwargs)

    from transformers import AttentionInterface

    AttentionInterface._global_mapping[attention.NAME] = spy
    try:
        enc.encode(["a short title"])
        enc.encode([" ".join(["a much longer text about the port strike"] * 8)])
    finally:
        AttentionInterface._global_mapping[attention.NAME] = original
    assert calls and max(calls) > attention.PLAIN_UP_TO >= min(calls)  # both kernels ran
