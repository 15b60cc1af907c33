from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

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


@pytest.fixture(scope="module")
def transformer():
    from encoders.transformer import TransformerEncoder

    return TransformerEncoder(device="cpu", batch_size=4)


def test_transformer_matches_sentence_transformers(transformer) -> None:
    from sentence_transformers import SentenceTransformer

    from encoders.transformer import default_model_dir

    texts = [t for t in TEXTS if t] + ["a much longer text " * 40]
    ours = transformer.encode(texts)
    ref = SentenceTransformer(str(default_model_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (len(texts), 384)
    assert (ours * ref).sum(1).min() >= 0.999


def test_transformer_keeps_input_order(transformer) -> None:
    texts = ["short", "a somewhat longer sentence about ports", "mid length text"]
    together = transformer.encode(texts)
    alone = np.stack([transformer.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_cuda_asked_without_cuda_is_a_clear_error() -> None:
    import torch

    from encoders.transformer import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
