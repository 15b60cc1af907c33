"""The encoder and the whole worker on CUDA; skipped on a machine without a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_encoders import varied_texts

from conftest import create_topic, documents, read_topic
from stream.services import Service

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from encoders.transformer import default_model_dir

    model = SentenceTransformer(str(default_model_dir()), device="cpu")
    return model.encode(varied_texts(), normalize_embeddings=True, batch_size=32)


@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.999), ("fp16", 0.99), ("bf16", 0.99)])
def test_cuda_encoder_matches_sentence_transformers(reference, precision: str, floor: float) -> None:
    from encoders.transformer import TransformerEncoder

    enc = TransformerEncoder(device="cuda", precision=precision)
    assert enc.device == "cuda" and next(enc.model.parameters()).is_cuda
    ours = enc.encode(varied_texts())
    assert ours.shape == (200, 384) and ours.dtype == np.float32
    assert (ours * reference).sum(1).min() >= floor


def test_cuda_auto_is_fp16_and_order_is_kept() -> None:
    from encoders.transformer import TransformerEncoder

    enc = TransformerEncoder(device="auto")
    assert enc.device == "cuda" and enc.precision == "fp16"
    assert enc.max_tokens == 16384  # CPU-only choices stay off CUDA
    assert enc.model.config._attn_implementation != "topicstream_cpu"
    texts = varied_texts(50)
    together = enc.encode(texts)
    alone = np.stack([enc.encode([t])[0] for t in texts])
    assert (together * alone).sum(1).min() >= 0.999


def test_cuda_index_past_the_devices_is_a_clear_error() -> None:
    from encoders.transformer import resolve_device

    with pytest.raises(RuntimeError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.integration
def test_worker_on_cuda_end_to_end(kafka: Service, redis_server: Service,
                                   names: dict[str, str]) -> None:
    from test_pipeline import produce, settings

    from stream.app import build_worker
    from stream.config import load_config

    n = 600
    create_topic(kafka, names["input"])
    produce(kafka, names["input"], documents(n))
    cfg = load_config(env={}, overrides=settings(kafka, redis_server, names, encoder="hybrid",
                                                 device="cuda", exit_when_idle=6.0))
    built = build_worker(cfg)
    try:
        assert built.worker.encoder.device == "cuda"
        stats = built.worker.run()
    finally:
        built.close()
    assert stats.docs == n and stats.rejected == 0
    ids = {json.loads(m.value)["id"] for m in read_topic(kafka, names["assignments"])}
    assert ids == {f"doc-{i}" for i in range(n)}
