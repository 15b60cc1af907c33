"""Distilled encoders: training by distillation, save/load, errors, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_cli import assert_one_line_error, cli

from conftest import REPO
from encoders import Encoder, load_encoder
from encoders.distilled import DistilledEncoder, TrainResult, train_distilled
from stream.config import load_config

CORPUS = REPO / "stream" / "demo_corpus.jsonl"
TEXTS = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()[:60]]


@pytest.fixture(scope="module")
def teacher() -> Any:
    from encoders.transformer import TransformerEncoder

    return TransformerEncoder(device="cpu")


@pytest.fixture(scope="module")
def trained(teacher: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainResult]:
    root = tmp_path_factory.mktemp("distilled")
    return {kind: train_distilled(kind, TEXTS, root / kind, epochs=6, minutes=0.5, seed=1,
                                  batch_size=16, progress=False, teacher=teacher)
            for kind in ("static", "cnn")}


@pytest.mark.parametrize("kind", ["static", "cnn"])
def test_training_lowers_the_loss_and_saves_a_loadable_encoder(
        trained: dict[str, TrainResult], kind: str) -> None:
    result = trained[kind]
    assert len(result.losses) >= 2 and result.losses[-1] < 0.8 * result.losses[0]
    files = sorted(p.name for p in result.out_dir.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json"]
    cfg = json.loads((result.out_dir / "config.json").read_text())
    assert (cfg["format"], cfg["version"], cfg["kind"], cfg["dim"]) == (
        "topicstream-distilled", 1, kind, 384)
    enc = load_encoder(f"distilled:{result.out_dir}")
    assert isinstance(enc, Encoder) and isinstance(enc, DistilledEncoder)
    X = enc.encode(TEXTS + ["", "!!!"])
    assert X.shape == (62, 384) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    assert enc.tokens_seen > 0 and enc.default_threshold == cfg["default_threshold"]
    assert -1.0 < enc.default_threshold < 1.0


@pytest.mark.parametrize("kind", ["static", "cnn"])
def test_save_then_load_gives_the_same_vectors_bit_for_bit(
        trained: dict[str, TrainResult], kind: str) -> None:
    import torch

    result = trained[kind]
    enc = DistilledEncoder(result.out_dir)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, enc.model.state_dict()[name]), name
    loaded = enc.encode(TEXTS)
    enc.model = result.model  # the network as trained, never saved
    assert np.array_equal(loaded, enc.encode(TEXTS))
    assert np.array_equal(loaded, DistilledEncoder(result.out_dir).encode(TEXTS))


def test_the_student_is_close_to_the_teacher(trained: dict[str, TrainResult],
                                             teacher: Any) -> None:
    T = teacher.encode(TEXTS)
    S = DistilledEncoder(trained["cnn"].out_dir).encode(TEXTS)
    assert float(np.mean(np.sum(T * S, axis=1))) > 0.8


def _copy(result: TrainResult, tmp_path: Path) -> Path:
    return Path(shutil.copytree(result.out_dir, tmp_path / "enc"))


def _edit_config(path: Path, **changes: Any) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(("damage", "error", "message"), [
    (lambda p: (p / "model.safetensors").write_bytes(b"\x00garbage" * 10), ValueError,
     "model.safetensors: not a readable safetensors file"),
    (lambda p: (p / "model.safetensors").write_bytes(
        (p / "model.safetensors").read_bytes()[:1000]), ValueError, "model.safetensors"),
    (lambda p: (p / "model.safetensors").unlink(), FileNotFoundError, "model.safetensors: missing"),
    (lambda p: (p / "config.json").unlink(), FileNotFoundError, "config.json: missing"),
    (lambda p: (p / "tokenizer.json").unlink(), FileNotFoundError, "tokenizer.json: missing"),
    (lambda p: (p / "config.json").write_text("{not json"), ValueError, "config.json: not JSON"),
    (lambda p: _edit_config(p, format="pickle"), ValueError,
     "format='pickle', expected 'topicstream-distilled'"),
    (lambda p: _edit_config(p, version=2), ValueError, "version=2"),
    (lambda p: _edit_config(p, kind="lstm"), ValueError, "kind='lstm'"),
    (lambda p: _edit_config(p, vocab_size=100), ValueError, "tensors do not match config.json"),
    (lambda p: _edit_config(p, kind="cnn"), ValueError, "tensors do not match config.json"),
])
def test_damaged_directories_give_clear_errors(trained: dict[str, TrainResult], tmp_path: Path,
                                               damage: Any, error: type, message: str) -> None:
    path = _copy(trained["static"], tmp_path)
    damage(path)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        DistilledEncoder(path)


def test_specs_and_config_accept_distilled(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distilled:PATH needs the directory"):
        load_encoder("distilled")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_encoder(f"distilled:{tmp_path / 'nothing'}")
    assert load_config(env={}, overrides={"encoder": "distilled:/x"}).encoder == "distilled:/x"
    with pytest.raises(ValueError, match="'distilled:PATH'"):
        load_encoder("word2vec")


def test_train_rejects_bad_arguments(teacher: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind='rnn'"):
        train_distilled("rnn", TEXTS, tmp_path, teacher=teacher)
    with pytest.raises(ValueError, match="no texts"):
        train_distilled("static", [], tmp_path, teacher=teacher)


def test_cli_train_then_cluster(tmp_path: Path) -> None:
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(line + "\n" for line in CORPUS.read_text().splitlines()[:40]))
    out = tmp_path / "static"
    proc = cli("train", "static", "--dataset", str(data), "--out", str(out), "--epochs", "2",
               "--minutes", "0.2", "--batch-size", "16", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "trained static on 40 texts" in proc.stdout
    assert DistilledEncoder(out).encode(["a rover found ice"]).shape == (1, 384)
    proc = cli("cluster", str(data), "--encoder", f"distilled:{out}", "--out",
               str(tmp_path / "assign.jsonl"))
    assert proc.returncode == 0, proc.stderr


def test_cli_train_errors_are_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "o")
    assert_one_line_error(cli("train", "lstm", "--dataset", str(CORPUS), "--out", out),
                          "kind='lstm'")
    assert_one_line_error(cli("train", "static", "--dataset", "/no/such.jsonl", "--out", out),
                          "no such file")
    assert_one_line_error(cli("train", "cnn", "--dataset", str(CORPUS), "--out", out,
                              "--minutes", "soon"), "--minutes='soon'")
    assert_one_line_error(cli("train", "cnn", "--dataset", str(CORPUS), "--out", out,
                              "--epochs", "0"), "--epochs='0' should be >= 1")
    assert_one_line_error(cli("cluster", str(CORPUS), "--encoder", f"distilled:{out}"),
                          "no such directory")
