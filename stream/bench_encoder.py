"""``topicstream bench encoder``: the transformer encoder against sentence-transformers.

Both encode the same texts on the same device in the same run. The baseline is
sentence-transformers' ``encode`` at its best settings: each of fp32 and the device's half
precision (fp16 on CUDA, bf16 on a CPU with native bfloat16) at each candidate batch size is
timed on a sample, and the fastest is timed on the whole set. After a warm-up the two sides
take turns, ``repeat`` rounds, and each side's best run counts.

Figures: documents/s, real tokens/s, the padding ratio (padded tokens that were padding), the
smallest cosine between our vectors and sentence-transformers' fp32 vectors, and on CUDA the
achieved TFLOP/s (2 x encoder parameters x padded tokens, plus attention's
4 x layers x dim x width**2 per sequence; the embedding tables are lookups, not counted)
next to the device's dense fp16 peak.

With ``pipeline=True`` it also runs one worker (``topicstream run``) with the same encoder
settings over a private broker and Redis, and reports its steady documents/s: the worker
encodes in micro-batches while it polls, clusters, publishes and commits.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from encoders.transformer import TransformerEncoder, cpu_has_bf16, default_model_dir

log = logging.getLogger(__name__)

#: dense fp16/bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of the device name
PEAK_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0),
               ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0))


@dataclass
class EncoderRow:
    """One ``bench encoder`` result (``--json`` writes these fields)."""

    device: str
    device_name: str
    precision: str
    documents: int
    mean_tokens: float
    docs_per_s: float
    tokens_per_s: float
    padding_ratio: float
    tflops: float | None
    peak_tflops: float | None
    baseline_docs_per_s: float
    baseline: str
    ratio: float
    cosine_min: float
    pipeline_docs_per_s: float | None = None
    pipeline_ratio: float | None = None  # end to end over the raw encoder above
    worker_encoder_docs_per_s: float | None = None  # the worker's encoder set-up, alone
    worker_encoder_ratio: float | None = None  # end to end over the worker's encoder alone

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def long_documents(texts: Sequence[str], tokens: int, count: Callable[[list[str]], list[int]]
                   ) -> list[str]:
    """Documents of about ``tokens`` tokens each, made by joining consecutive texts."""
    lengths = count(list(texts))
    out: list[str] = []
    i, n = 0, len(texts)
    while i < n:
        parts: list[str] = []
        total = 0
        while total < tokens and len(parts) < n:
            parts.append(texts[i % n])
            total += lengths[i % n] - 2  # [CLS] and [SEP] are counted once per document
            i += 1
        out.append(" ".join(parts))
    return out


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(torch.device(device)))
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _best_seconds(run: Callable[[], Any], device: str, repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        out = run()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _choose_baseline(texts: Sequence[str], device: str, batch_sizes: Sequence[int]
                     ) -> tuple[Any, int, str, np.ndarray]:
    """sentence-transformers' fastest settings, chosen on ``texts`` (a sample). Returns the
    model at its fastest precision, its fastest batch size, their name, and fp32 vectors of
    the sample."""
    import torch
    from sentence_transformers import SentenceTransformer

    half = torch.float16 if device.startswith("cuda") else (
        torch.bfloat16 if cpu_has_bf16() else None)
    reference = None
    best: tuple[float, Any, int, str] | None = None
    for dtype in [torch.float32] + ([half] if half is not None else []):
        model = SentenceTransformer(str(default_model_dir()), device=device).to(dtype)
        for bs in batch_sizes:
            def run(m: Any = model, b: int = bs) -> Any:
                return m.encode(list(texts), batch_size=b, normalize_embeddings=True,
                                show_progress_bar=False, convert_to_numpy=True)
            run()  # warm-up
            seconds, vecs = _best_seconds(run, device, 1)
            if dtype == torch.float32 and reference is None:
                reference = np.asarray(vecs, np.float32)
            name = f"{str(dtype).removeprefix('torch.')}, batch_size={bs}"
            log.info("sentence-transformers %s: %.0f docs/s on the sample", name, len(texts) / seconds)
            if best is None or seconds < best[0]:
                best = (seconds, model, bs, name)
    assert best is not None and reference is not None
    _, fastest, bs, name = best
    return fastest, bs, name, reference


def run_encoder_bench(texts: Sequence[str], device: str = "auto", precision: str = "auto",
                      batch_size: int = 256, max_tokens: int | None = None, repeat: int = 2,
                      sample: int = 2000, batch_sizes: Sequence[int] | None = None,
                      pipeline: Callable[[], tuple[float, float]] | None = None) -> EncoderRow:
    """Time our encoder and sentence-transformers on ``texts`` (see the module docstring).

    The two sides take turns, ``repeat`` rounds of one run each, and each side's best run
    counts: on a shared machine whose speed drifts, neither side gets the quiet minutes."""
    enc = TransformerEncoder(device=device, precision=precision, batch_size=batch_size,
                             max_tokens=max_tokens)
    dev = enc.device
    enc.encode(list(texts[:512]))  # warm-up: kernels, allocator, tokenizer threads
    ours_sample = enc.encode(list(texts[:sample]))
    if batch_sizes is None:
        batch_sizes = (64, 128, 256, 512, 1024) if dev.startswith("cuda") else (32, 64, 128, 256, 512)
    model, bs, base_name, reference = _choose_baseline(texts[:sample], dev, batch_sizes)

    def theirs_fn() -> Any:
        return model.encode(list(texts), batch_size=bs, normalize_embeddings=True,
                            show_progress_bar=False, convert_to_numpy=True)

    seconds = base_seconds = float("inf")
    real = padded = attention = 0.0
    for _ in range(repeat):
        before = (enc.tokens_seen, enc.padded_tokens_seen, enc.attention_flops)
        s, _ = _best_seconds(lambda: enc.encode(texts), dev, 1)
        if s < seconds:
            seconds = s
            real = enc.tokens_seen - before[0]
            padded = enc.padded_tokens_seen - before[1]
            attention = enc.attention_flops - before[2]
        base_seconds = min(base_seconds, _best_seconds(theirs_fn, dev, 1)[0])
    enc.close()
    gc.collect()
    tflops = peak = None
    name = _device_name(dev)
    if dev.startswith("cuda"):
        tflops = (2.0 * enc.flop_params * padded + attention) / seconds / 1e12
        peak = next((p for key, p in PEAK_TFLOPS if key in name), None)
    docs_per_s = len(texts) / seconds
    base_dps = len(texts) / base_seconds
    pipe, alone = pipeline() if pipeline is not None else (None, None)
    return EncoderRow(
        device=dev, device_name=name, precision=enc.precision,
        documents=len(texts), mean_tokens=real / len(texts), docs_per_s=docs_per_s,
        tokens_per_s=real / seconds, padding_ratio=1.0 - real / max(padded, 1.0),
        tflops=tflops, peak_tflops=peak, baseline_docs_per_s=base_dps, baseline=base_name,
        ratio=docs_per_s / base_dps,
        cosine_min=float((ours_sample * reference).sum(1).min()),
        pipeline_docs_per_s=pipe, pipeline_ratio=None if pipe is None else pipe / docs_per_s,
        worker_encoder_docs_per_s=alone,
        worker_encoder_ratio=None if pipe is None or not alone else pipe / alone)


def print_encoder_row(r: EncoderRow, out: Any) -> None:
    print(f"bench encoder: {r.documents} documents, {r.mean_tokens:.1f} tokens each on average; "
          f"device {r.device} ({r.device_name}), precision {r.precision}", file=out)
    print(f"  topicstream          {r.docs_per_s:>10,.0f} docs/s  {r.tokens_per_s:>12,.0f} tokens/s"
          f"  padding {r.padding_ratio:.1%}  min cosine to sentence-transformers fp32 "
          f"{r.cosine_min:.4f}", file=out)
    if r.tflops is not None:
        peak = f" of {r.peak_tflops:,.0f} peak ({r.tflops / r.peak_tflops:.1%})" \
            if r.peak_tflops else " (peak unknown for this device)"
        print(f"  achieved             {r.tflops:>10,.1f} TFLOP/s{peak}", file=out)
    print(f"  sentence-transformers{r.baseline_docs_per_s:>10,.0f} docs/s  ({r.baseline}, its "
          f"fastest here)", file=out)
    print(f"  ratio                {r.ratio:>10.2f} x", file=out)
    if r.pipeline_docs_per_s is not None and r.pipeline_ratio is not None:
        print(f"  one worker, end to end {r.pipeline_docs_per_s:>8,.0f} docs/s  "
              f"({r.pipeline_ratio:.0%} of the raw encoder)", file=out)
    if r.worker_encoder_docs_per_s is not None and r.worker_encoder_ratio is not None:
        print(f"  the worker's encoder alone {r.worker_encoder_docs_per_s:>4,.0f} docs/s  (its "
              f"processes, micro-batches in flight, nothing else running; end to end is "
              f"{r.worker_encoder_ratio:.0%} of it)", file=out)


def _in_micro_batches(encoder: Any, texts: Sequence[str], batch_size: int) -> Callable[[], None]:
    """A run of ``encoder`` over ``texts`` in micro-batches of ``batch_size`` as the worker
    calls it: ``encoder.concurrent_calls`` batches in flight (1 for most encoders)."""
    calls = max(1, int(getattr(encoder, "concurrent_calls", 1)))
    batches = [list(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]

    def run() -> None:
        if calls == 1:
            for batch in batches:
                encoder.encode(batch)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(calls) as pool:
            for _ in pool.map(encoder.encode, batches):
                pass
    return run


def docs_per_s_in_flight(encoder: Any, texts: Sequence[str], batch_size: int,
                         repeat: int = 1) -> float:
    """Documents/s of ``encoder`` on ``texts`` in micro-batches as the worker calls it (see
    :func:`_in_micro_batches`): the best of ``repeat`` rounds after a warm-up round (a CPU's
    bf16 kernels are built for each new pass shape the first time it comes)."""
    run = _in_micro_batches(encoder, texts, batch_size)
    run()
    seconds, _ = _best_seconds(run, encoder.device, repeat)
    return len(texts) / seconds


# -- bench encoder --encoders: every model's speed on the same texts ---------------------------
@dataclass
class ModelSpeed:
    """One model of ``bench encoder --encoders``: its documents/s on the texts, in
    micro-batches of ``batch_size`` as the worker calls it, best of ``repeat`` rounds."""

    model: str
    name: str
    device: str
    dim: int
    documents: int
    batch_size: int
    docs_per_s: float
    relative: float  # docs/s over the first model's


def run_model_speeds(models: Sequence[tuple[str, Any]], texts: Sequence[str], batch_size: int,
                     repeat: int) -> list[ModelSpeed]:
    """Time each ``(spec, encoder)`` on ``texts`` in micro-batches; after a warm-up on the
    first batch the models take turns, ``repeat`` rounds, and each model's best run counts."""
    best = [float("inf")] * len(models)
    for _, encoder in models:
        encoder.encode(texts[:batch_size])
    for _ in range(repeat):
        for j, (_, encoder) in enumerate(models):
            seconds, _ = _best_seconds(_in_micro_batches(encoder, texts, batch_size),
                                       encoder.device, 1)
            best[j] = min(best[j], seconds)
    first = len(texts) / best[0]
    return [ModelSpeed(spec, encoder.name, encoder.device, int(encoder.dim), len(texts),
                       batch_size, round(len(texts) / s, 1), round(len(texts) / s / first, 2))
            for (spec, encoder), s in zip(models, best, strict=True)]


def print_model_speeds(rows: Sequence[ModelSpeed], out: Any) -> None:
    r0 = rows[0]
    print(f"bench encoder: {r0.documents} documents in micro-batches of {r0.batch_size}, each "
          "model's best round; x: docs/s over the first model's", file=out)
    head = f"{'model':<40} {'device':<7} {'dim':>5} {'docs/s':>10} {'x':>7}"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        print(f"{r.model:<40} {r.device:<7} {r.dim:>5} {r.docs_per_s:>10,.0f} {r.relative:>7.2f}",
              file=out)
