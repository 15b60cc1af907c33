from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from encoders import Encoder, load_encoder
from encoders.hashing import HashingEncoder

TEXTS = ["Rover finds water ice on Mars", "Mars rover discovers ice near the pole",
         "Dockworkers strike shuts container ports", "Cup final decided on penalties", "", "!!!"]


def test_hashing_rows_are_unit_float32_and_similar_texts_are_close() -> None:
    enc = HashingEncoder(dim=256)
    X = enc.encode(TEXTS)
    assert X.shape == (6, 256) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    assert X[0] @ X[1] > X[0] @ X[2]
    assert isinstance(enc, Encoder)


def test_hashing_is_the_same_in_another_process() -> None:
    """CRC-32, not hash(): another interpreter (another hash seed) gives the same vector."""
    code = ("from encoders.hashing import HashingEncoder;import sys;"
            "sys.stdout.write(HashingEncoder(dim=64).encode(['port strike closes docks']).tobytes().hex())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}, check=True).stdout for seed in ("1", "2")}
    assert len(outs) == 1


def test_load_encoder_specs() -> None:
    assert load_encoder("hashing:128").dim == 128
    with pytest.raises(ValueError, match="encoder='word2vec'"):
        load_encoder("word2vec")


def varied_texts(n: int = 200) -> list[str]:
    """``n`` texts unlike each other in length, script and form: news titles from the demo
    corpus, long articles past the model's 256 tokens, accents, CJK, emoji, numbers, URLs,
    single words and punctuation."""
    import json

    titles = [json.loads(line)["text"] for line in (REPO / "stream" / "demo_corpus.jsonl")
              .read_text().splitlines()]
    odd = ["Zürich café owners protest rent rises", "东京股市收盘上涨", "Séisme de magnitude 6,1 au large du Chili",
           "🚀 launch delayed again 🙄", "GDP +2.4% y/y in Q3; CPI 3.1%", "https://example.org/a?b=c",
           "strike", "???", "Breaking: " + "very " * 30 + "long headline", "ALL CAPS TITLE ABOUT PORTS",
           "Москва объявила о переговорах", "مباحثات السلام تستأنف", "1 2 3 4 5 6 7 8 9 10"]
    texts = list(odd)
    for i in range(n):
        if len(texts) >= n:
            break
        t = titles[(i * 7) % len(titles)]
        texts.append(" ".join([t] * (1 + i % 40)) if i % 5 == 0 else t)  # up to ~600 tokens
    return texts[:n]


@pytest.fixture(scope="module")
def transformer():
    from encoders.transformer import TransformerEncoder

    return TransformerEncoder(device="cpu", batch_size=4, precision="fp32")


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """sentence-transformers' embeddings of :func:`varied_texts`, fp32 on the CPU."""
    from sentence_transformers import SentenceTransformer

    from encoders.transformer import default_model_dir

    model = SentenceTransformer(str(default_model_dir()), device="cpu")
    return model.encode(varied_texts(), normalize_embeddings=True, batch_size=32)


def test_varied_texts_are_200_and_some_pass_the_token_limit(transformer) -> None:
    texts = varied_texts()
    lengths = [len(x) for x in transformer.tokenize(texts)]
    assert len(set(texts)) == 200 and max(lengths) == transformer.max_length and min(lengths) <= 4


def test_transformer_fp32_matches_sentence_transformers(transformer, reference) -> None:
    ours = transformer.encode(varied_texts())
    assert ours.shape == (200, 384) and ours.dtype == np.float32
    assert (ours * reference).sum(1).min() >= 0.999


def test_reduced_precision_matches_sentence_transformers(reference) -> None:
    from encoders.transformer import TransformerEncoder, cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bfloat16")
    enc = TransformerEncoder(device="cpu", precision="bf16")
    assert enc.precision == "bf16"
    ours = enc.encode(varied_texts())
    cos = (ours * reference).sum(1)
    assert cos.min() >= 0.99 and cos.min() < 0.999999  # bf16 really ran


def test_precision_is_checked_against_the_device() -> None:
    from encoders.transformer import resolve_precision

    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(ValueError, match="precision='fp16' runs on CUDA only"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision='int4' should be one of"):
        resolve_precision("int4", "cpu")


def test_transformer_keeps_input_order(transformer) -> None:
    texts = ["short", "a somewhat longer sentence about ports", "mid length text"]
    together = transformer.encode(texts)
    alone = np.stack([transformer.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_batching_does_not_change_the_vectors(transformer) -> None:
    """Token budget, rows per pass and tokenising chunks change how the work is cut, not the
    result."""
    texts = varied_texts(60)
    base = transformer.encode(texts)
    old = (transformer.batch_size, transformer.max_tokens, transformer.chunk_size)
    try:
        transformer.batch_size, transformer.max_tokens, transformer.chunk_size = 64, 300, 7
        np.testing.assert_allclose(transformer.encode(texts), base, atol=1e-5)
    finally:
        transformer.batch_size, transformer.max_tokens, transformer.chunk_size = old


def test_plan_batches_respects_rows_and_token_budget() -> None:
    from encoders.transformer import plan_batches

    rng = np.random.default_rng(0)
    widths = np.sort(rng.integers(1, 300, 1000))[::-1]
    spans = plan_batches(widths, max_rows=64, max_tokens=2048)
    assert spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    for s, e in spans:
        assert e - s <= 64 and ((e - s) * widths[s] <= 2048 or e - s == 1)


def test_plan_batches_is_the_cheapest_cut() -> None:
    """Against every way of cutting (exhaustive on short inputs) and against the plain cut
    into full passes: the plan costs (padded tokens plus a fixed cost per pass) no more than
    either, and with no cost per pass it pads nothing."""
    import itertools

    from encoders.transformer import plan_batches

    def cost(widths: np.ndarray, spans: list[tuple[int, int]], per_pass: int) -> int:
        return sum((e - s) * int(widths[s]) + per_pass for s, e in spans)

    def fits(widths: np.ndarray, spans: list[tuple[int, int]], rows: int, tokens: int) -> bool:
        return all(e - s == 1 or (e - s <= rows and (e - s) * widths[s] <= tokens)
                   for s, e in spans)

    def full_passes(widths: np.ndarray, rows: int, tokens: int) -> list[tuple[int, int]]:
        spans, s = [], 0
        while s < len(widths):
            spans.append((s, min(len(widths), s + min(rows, max(1, tokens // widths[s])))))
            s = spans[-1][1]
        return spans

    rng = np.random.default_rng(1)
    for trial in range(120):
        n = int(rng.integers(1, 9)) if trial < 60 else int(rng.integers(1, 300))
        widths = np.sort(rng.integers(3, 40, n))[::-1]
        rows, tokens = int(rng.integers(1, 6)) if trial < 60 else 128, 16384
        for per_pass in (0, 16, 64, 512):
            spans = plan_batches(widths, rows, tokens, pass_cost=per_pass)
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
            assert fits(widths, spans, rows, tokens)
            plain = full_passes(widths, rows, tokens)
            assert cost(widths, spans, per_pass) <= cost(widths, plain, per_pass)
            if n < 9:  # every cut of the n documents
                every = ([(s, e) for s, e in zip((0, *c), (*c, n), strict=True)]
                         for k in range(n) for c in itertools.combinations(range(1, n), k))
                best = min(cost(widths, sp, per_pass) for sp in every
                           if fits(widths, sp, rows, tokens))
                assert cost(widths, spans, per_pass) == best
        unpadded = plan_batches(widths, rows, tokens, pass_cost=0)
        assert all(widths[s] == widths[e - 1] for s, e in unpadded)


def test_padding_is_vectorised_and_exact() -> None:
    from encoders.transformer import pad

    ids = [[1, 2, 3, 4], [5], [6, 7]]
    batch, mask = pad(ids)
    assert batch.tolist() == [[1, 2, 3, 4], [5, 0, 0, 0], [6, 7, 0, 0]]
    assert mask.sum(1).tolist() == [4, 1, 2]


def test_out_of_memory_splits_the_batch_and_loses_nothing(transformer, monkeypatch) -> None:
    """A pass that raises CUDA out-of-memory is split in two and retried; the vectors are the
    same and the token budget shrinks for what follows (forced here on the CPU)."""
    import torch

    texts = varied_texts(40)
    base = transformer.encode(texts)
    real = type(transformer)._forward
    calls: list[int] = []

    def forward(self, batch, mask):
        calls.append(len(batch))
        if len(batch) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, batch, mask)

    monkeypatch.setattr(type(transformer), "_forward", forward)
    old = (transformer.batch_size, transformer.max_tokens, transformer.pass_cost)
    try:  # full passes of 16 rows, each too big for the "GPU"
        transformer.batch_size, transformer.max_tokens, transformer.pass_cost = 16, 100_000, 10**9
        got = transformer.encode(texts)
        assert transformer.max_tokens < 100_000
    finally:
        transformer.batch_size, transformer.max_tokens, transformer.pass_cost = old
    np.testing.assert_allclose(got, base, atol=1e-5)
    assert max(calls) > 8  # passes too big for the "GPU" were tried, split and retried


def test_cuda_asked_without_cuda_is_a_clear_error() -> None:
    import torch

    from encoders.transformer import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")


def test_token_budget_defaults_by_device_and_is_checked() -> None:
    from encoders.transformer import TransformerEncoder

    assert TransformerEncoder(device="cpu", precision="fp32").max_tokens == 4096
    assert TransformerEncoder(device="cpu", precision="fp32", max_tokens=300).max_tokens == 300
    with pytest.raises(ValueError, match="max_tokens=0 should be >= 1"):
        TransformerEncoder(device="cpu", max_tokens=0)
