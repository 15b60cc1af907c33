"""Distilled encoders: training by distillation, save/load, errors, the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_cli import assert_one_line_error, cli

from conftest import REPO, edit_config
from encoders import Encoder, load_encoder
from encoders.distilled import KINDS, DistilledEncoder, TrainResult, build_model, train_distilled
from stream.config import load_config

CORPUS = REPO / "stream" / "demo_corpus.jsonl"
TEXTS = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()[:60]]
# small hidden sizes, written to config.json and read back (the defaults are larger)
HYPER = {"kernel_sizes": (3, 4), "channels": 64, "hidden": 48, "attention_hidden": 32}


@pytest.fixture(scope="module")
def teacher() -> Any:
    from encoders.transformer import TransformerEncoder

    return TransformerEncoder(device="cpu")


@pytest.fixture(scope="module")
def trained(teacher: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainResult]:
    root = tmp_path_factory.mktemp("distilled")
    return {kind: train_distilled(kind, TEXTS, root / kind, epochs=6, minutes=0.5, seed=1,
                                  batch_size=16, progress=False, teacher=teacher, **HYPER)
            for kind in KINDS}


def test_the_four_kinds() -> None:
    assert KINDS == ("static", "cnn", "bilstm", "attention")


@pytest.mark.parametrize("kind", KINDS)
def test_training_lowers_the_loss_and_saves_a_loadable_encoder(
        trained: dict[str, TrainResult], kind: str) -> None:
    result = trained[kind]
    assert len(result.losses) >= 2 and result.losses[-1] < 0.8 * result.losses[0]
    files = sorted(p.name for p in result.out_dir.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json"]
    cfg = json.loads((result.out_dir / "config.json").read_text())
    assert (cfg["format"], cfg["version"], cfg["kind"], cfg["dim"]) == (
        "topicstream-distilled", 1, kind, 384)
    assert {k: cfg[k] for k in HYPER} == {**HYPER, "kernel_sizes": [3, 4]}
    enc = load_encoder(f"distilled:{result.out_dir}")
    assert isinstance(enc, Encoder) and isinstance(enc, DistilledEncoder)
    X = enc.encode(TEXTS + ["", "!!!"])
    assert X.shape == (62, 384) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    assert enc.tokens_seen > 0 and enc.default_threshold == cfg["default_threshold"]
    assert -1.0 < enc.default_threshold < 1.0


@pytest.mark.parametrize("kind", KINDS)
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


@pytest.mark.parametrize("kind", KINDS)
def test_the_student_is_close_to_the_teacher(trained: dict[str, TrainResult],
                                             teacher: Any, kind: str) -> None:
    T = teacher.encode(TEXTS)
    S = DistilledEncoder(trained[kind].out_dir).encode(TEXTS)
    assert float(np.mean(np.sum(T * S, axis=1))) > 0.8


@pytest.mark.parametrize("kind", KINDS)
def test_padding_never_changes_a_vector(trained: dict[str, TrainResult], kind: str) -> None:
    enc = DistilledEncoder(trained[kind].out_dir)
    # training moved the parts past the mean away from their start (else this tests nothing)
    state = enc.model.state_dict()
    moved = {"static": "bag.weight", "cnn": "proj.weight", "bilstm": "proj.weight",
             "attention": "att_score.weight"}[kind]
    assert float(state[moved].abs().max()) > 1e-4
    short = TEXTS[:8]
    long = [" ".join(TEXTS[i:i + 12]) for i in range(0, 48, 12)]  # 128 tokens (truncated)
    assert min(len(x) for x in enc.tokenize(long)) == 128
    assert max(len(x) for x in enc.tokenize(short)) < 40
    alone = np.concatenate([enc.encode([text]) for text in short])
    together = enc.encode(long[:2] + short + long[2:])[2:-2]
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    enc.batch_size = 3  # batches of other widths and other neighbours
    np.testing.assert_allclose(enc.encode(short[::-1] + long)[7::-1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_every_student_starts_as_the_static_one(kind: str) -> None:
    import torch

    from encoders.distilled import _flatten

    torch.manual_seed(0)
    ids = [[101, 7, 8, 9, 102], [101, 5, 102], [101, *range(20, 60), 102]]
    model = build_model(kind, 200, 16, kernel_sizes=(2, 3), channels=8, hidden=8,
                        attention_hidden=4)
    flat, offsets, padded = _flatten(ids, kind)
    with torch.no_grad():
        out = model(flat, offsets, padded)
        mean = torch.stack([model.bag.weight[x].mean(0) for x in map(torch.tensor, ids)])
    torch.testing.assert_close(out, mean, atol=1e-6, rtol=0)


def _copy(result: TrainResult, tmp_path: Path) -> Path:
    return Path(shutil.copytree(result.out_dir, tmp_path / "enc"))


@pytest.mark.parametrize(("damage", "error", "message"), [
    (lambda p: (p / "model.safetensors").write_bytes(b"\x00garbage" * 10), ValueError,
     "model.safetensors: not a readable safetensors file"),
    (lambda p: (p / "model.safetensors").write_bytes(
        (p / "model.safetensors").read_bytes()[:1000]), ValueError, "model.safetensors"),
    (lambda p: (p / "model.safetensors").unlink(), FileNotFoundError, "model.safetensors: missing"),
    (lambda p: (p / "config.json").unlink(), FileNotFoundError, "config.json: missing"),
    (lambda p: (p / "tokenizer.json").unlink(), FileNotFoundError, "tokenizer.json: missing"),
    (lambda p: (p / "config.json").write_text("{not json"), ValueError, "config.json: not JSON"),
    (lambda p: edit_config(p, format="pickle"), ValueError,
     "format='pickle', expected 'topicstream-distilled'"),
    (lambda p: edit_config(p, version=2), ValueError, "version=2"),
    (lambda p: edit_config(p, kind="lstm"), ValueError, "kind='lstm'"),
    (lambda p: edit_config(p, vocab_size=100), ValueError, "tensors do not match config.json"),
    (lambda p: edit_config(p, kind="cnn"), ValueError, "tensors do not match config.json"),
    (lambda p: edit_config(p, kind="bilstm"), ValueError,
     "tensors do not match config.json (kind='bilstm', vocab_size=30522, dim=384, hidden=48)"),
    (lambda p: edit_config(p, kind="attention"), ValueError,
     "tensors do not match config.json (kind='attention', vocab_size=30522, dim=384, "
     "attention_hidden=32)"),
    (lambda p: edit_config(p, hidden=0), ValueError, "hidden=0 should be a positive integer"),
    (lambda p: edit_config(p, attention_hidden="big"), ValueError,
     "attention_hidden='big' should be a positive integer"),
    (lambda p: edit_config(p, channels=True), ValueError, "channels=True should be"),
    (lambda p: edit_config(p, kernel_sizes=[3, 0]), ValueError,
     "kernel_sizes=[3, 0] should be a non-empty list of positive integers"),
])
def test_damaged_directories_give_clear_errors(trained: dict[str, TrainResult], tmp_path: Path,
                                               damage: Any, error: type, message: str) -> None:
    path = _copy(trained["static"], tmp_path)
    damage(path)
    with pytest.raises(error, match=re.escape(message)):
        DistilledEncoder(path)


@pytest.mark.parametrize(("kind", "edit", "message"), [
    ("bilstm", {"hidden": 64}, "kind='bilstm', vocab_size=30522, dim=384, hidden=64)"),
    ("bilstm", {"kind": "attention"}, "kind='attention'"),
    ("attention", {"attention_hidden": 16}, "attention_hidden=16)"),
    ("attention", {"kind": "bilstm"}, "kind='bilstm'"),
    ("cnn", {"kernel_sizes": [3]}, "kernel_sizes=[3], channels=64)"),
    ("cnn", {"channels": 65}, "channels=65)"),
])
def test_shapes_that_do_not_match_the_config_are_named(
        trained: dict[str, TrainResult], tmp_path: Path, kind: str, edit: dict[str, Any],
        message: str) -> None:
    path = _copy(trained[kind], tmp_path)
    edit_config(path, **edit)
    with pytest.raises(ValueError, match="tensors do not match config.json") as info:
        DistilledEncoder(path)
    assert message in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_a_config_without_the_newer_keys_loads_with_the_defaults(
        trained: dict[str, TrainResult], tmp_path: Path, kind: str) -> None:
    path = _copy(trained[kind], tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    for key in ("hidden", "attention_hidden"):  # version 1 as written before bilstm/attention
        del cfg[key]
    (path / "config.json").write_text(json.dumps(cfg))
    if kind in ("static", "cnn"):
        assert np.array_equal(DistilledEncoder(path).encode(TEXTS),
                              DistilledEncoder(trained[kind].out_dir).encode(TEXTS))
    else:  # trained with a smaller size than the default: the shapes say so
        default = "hidden=256" if kind == "bilstm" else "attention_hidden=128"
        with pytest.raises(ValueError, match=f"tensors do not match.*{default}"):
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
    for bad, message in [({"hidden": 0}, "hidden=0 should be >= 1"),
                         ({"attention_hidden": -2}, "attention_hidden=-2 should be >= 1"),
                         ({"channels": 0}, "channels=0 should be >= 1"),
                         ({"kernel_sizes": ()}, "kernel_sizes=[] should be a non-empty list")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            train_distilled("bilstm", TEXTS, tmp_path, teacher=teacher, **bad)
    assert not any(tmp_path.iterdir())


class _QuickTeacher:
    """The teacher's table and name, random targets: no transformer pass over the texts."""

    def __init__(self, teacher: Any) -> None:
        self.model, self.name, self.default_threshold = teacher.model, teacher.name, 0.4

    def encode(self, texts: list[str]) -> np.ndarray:
        X = np.random.default_rng(0).normal(size=(len(texts), 384)).astype(np.float32)
        return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_the_time_bound_stops_an_epoch_midway(teacher: Any, tmp_path: Path) -> None:
    texts = TEXTS * 20  # 1200 texts: 300 steps of 4 an epoch, far more than 0.6 s
    result = train_distilled("bilstm", texts, tmp_path / "b", epochs=50, minutes=0.01, seed=0,
                             batch_size=4, progress=False, teacher=_QuickTeacher(teacher),
                             hidden=32)
    assert len(result.losses) == 1 and 1 <= result.steps < 300
    assert result.seconds < 0.6 + 5.0  # the bound and one step (a slow, shared machine)
    assert DistilledEncoder(tmp_path / "b").encode(["x"]).shape == (1, 384)


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
                          "kind='lstm' should be one of static, cnn, bilstm, attention")
    assert_one_line_error(cli("train", "static", "--dataset", "/no/such.jsonl", "--out", out),
                          "no such file")
    assert_one_line_error(cli("train", "cnn", "--dataset", str(CORPUS), "--out", out,
                              "--minutes", "soon"), "--minutes='soon'")
    assert_one_line_error(cli("train", "cnn", "--dataset", str(CORPUS), "--out", out,
                              "--epochs", "0"), "--epochs='0' should be >= 1")
    assert_one_line_error(cli("cluster", str(CORPUS), "--encoder", f"distilled:{out}"),
                          "no such directory")
