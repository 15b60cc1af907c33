"""Self-attention for the CPU encode path: plain matrix products for short passes, fused
scaled-dot-product attention for long ones.

PyTorch's fused CPU attention (``scaled_dot_product_attention``, flash kernel) walks the
batch and heads in blocks sized for long sequences; on news titles (10-30 tokens) it spends
more time in its loops than in arithmetic, and the plain form (``softmax(QK^T) V`` in two
batched products) is faster. On long passes the fused kernel wins by far, since the plain
form writes the whole ``(rows, heads, width, width)`` score tensor. On the development CPU
(2 threads, bf16, 4,096 tokens per call, 12 heads of 32; 2026-12-02):

    width     8     12    16    24    32    48    64    128   256
    plain    4.7   4.9   3.0   6.2   2.8   5.8   10.2  15.5  34.0  ms
    fused   10.4  11.0   3.6   6.1   2.8   4.9    3.1   4.4   7.1  ms

so passes up to :data:`PLAIN_UP_TO` tokens wide take the plain form. Both compute the same
attention; in bf16 their rounding differs a little (smallest cosine to the fp32 model over
1,000 news titles: 0.99991 with either, measured the same day). In fp32 the two agree to
1e-5 (``tests/test_attention.py``).

Registered with transformers' attention interface as :data:`NAME`; models that do not go
through that interface (MPNet) keep their own attention.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

#: the name under which the attention and its mask are registered with transformers
NAME = "topicstream_cpu"

#: widest pass (tokens) that takes the plain products; wider ones the fused kernel
PLAIN_UP_TO = 32


def width_dispatched_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of ``query``, ``key``, ``value`` of shape ``(rows, heads, width, head_dim)``
    under an additive ``attention_mask`` broadcastable to ``(rows, 1, width, width)`` (None:
    no padding); returns ``(rows, width, heads, head_dim)`` as transformers expects, and no
    attention weights. Inference only (``dropout`` must be 0)."""
    if dropout:
        raise ValueError(f"dropout={dropout} should be 0: this attention is for inference")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if query.shape[2] <= PLAIN_UP_TO:
        scores = torch.matmul(query, key.transpose(2, 3)).mul_(scaling)
        if attention_mask is not None:
            scores = scores + attention_mask
        out = torch.matmul(torch.softmax(scores, dim=-1), value)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                             scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def use_on(model: Any) -> None:
    """Switch ``model`` to this attention where it goes through transformers' attention
    interface (``model.config._attn_implementation`` then says :data:`NAME`); a model that
    does not is left as it is."""
    AttentionInterface.register(NAME, width_dispatched_attention)
    AttentionMaskInterface.register(NAME, eager_mask)  # additive mask in the model's dtype
    if model._can_set_attn_implementation():
        model.set_attn_implementation(NAME)
