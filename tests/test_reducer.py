"""Reducers (encoders/reducer.py): training, save/load, errors, the encoder wrapper, the
setting and the CLI. Small synthetic vectors: each test takes seconds, no transformer."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_cli import assert_one_line_error, cli

from conftest import REPO, edit_config
from encoders import Encoder
from encoders.hashing import HashingEncoder
from encoders.reducer import (
    ReducedEncoder,
    Reducer,
    ReducerTrainResult,
    build_reducer,
    load_reducer,
    train_reducer,
)
from stream.app import Unreachable, build_clusterer, build_encoder
from stream.config import Config, ConfigError, load_config

DIM, CODE, K = 48, 8, 10
CORPUS = REPO / "stream" / "demo_corpus.jsonl"
FAST = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # tiny networks: threads only cost


def blobs(n_per: int, seed: int, centroids: np.ndarray | None = None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``K`` topics: unit centroids in ``DIM`` dimensions, rows = centroid + Gaussian noise
    (norm about 1, as large as the centroid), normalised."""
    rng = np.random.default_rng(seed)
    if centroids is None:
        centroids = rng.normal(size=(K, DIM))
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    y = np.repeat(np.arange(K), n_per)
    X = centroids[y] + rng.normal(size=(len(y), DIM)) / np.sqrt(DIM)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), y, centroids


X, Y, CENTROIDS = blobs(30, seed=0)
X_TEST, Y_TEST, _ = blobs(30, seed=1, centroids=CENTROIDS)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny networks on a shared 2-core machine run far faster on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ReducerTrainResult]:
    root = tmp_path_factory.mktemp("reducers")
    return {kind: train_reducer(kind, X, root / kind, code_dim=CODE, hidden=32, epochs=40,
                                minutes=0.5, seed=1, batch_size=64, progress=False,
                                base_threshold=0.15, base_merge_threshold=0.1,
                                encoder_spec="hashing:48", encoder_name="hashing-48",
                                device="cpu")
            for kind in ("ae", "vae")}


def nearest_centroid_accuracy(Z: np.ndarray, Z_test: np.ndarray) -> float:
    """Centroids of the training codes per topic; share of test codes nearest their own."""
    topics = Y
    cent = np.stack([Z[topics == c].mean(axis=0) for c in range(K)])
    return float(np.mean(np.argmax(Z_test @ cent.T, axis=1) == Y_TEST))


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_training_lowers_the_loss_and_saves_a_versioned_directory(
        trained: dict[str, ReducerTrainResult], kind: str) -> None:
    result = trained[kind]
    assert len(result.losses) == 40 and result.steps == 40 * 5
    assert result.losses[-1] < 0.7 * result.losses[0]
    assert result.out_dir is not None
    assert sorted(p.name for p in result.out_dir.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((result.out_dir / "config.json").read_text())
    assert (cfg["format"], cfg["version"], cfg["kind"], cfg["in_dim"], cfg["code_dim"],
            cfg["hidden"], cfg["encoder"], cfg["encoder_name"]) == (
        "topicstream-reducer", 1, kind, DIM, CODE, 32, "hashing:48", "hashing-48")
    assert cfg["default_threshold"] == result.default_threshold
    assert cfg["default_merge_threshold"] == result.default_merge_threshold
    assert -1.0 < result.default_merge_threshold < result.default_threshold < 1.0  # type: ignore[operator]
    assert cfg["training"]["epoch_losses"] == [round(x, 6) for x in result.losses]
    assert set(cfg["training"]["final_loss_parts"]) == (
        {"recon", "structure"} | ({"kl"} if kind == "vae" else set()))


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_save_then_load_gives_identical_unit_codes(trained: dict[str, ReducerTrainResult],
                                                   kind: str) -> None:
    import torch

    result = trained[kind]
    reducer = Reducer(result.out_dir)  # type: ignore[arg-type]
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, reducer.model.state_dict()[name]), name
    codes = reducer.reduce(X_TEST)
    assert codes.shape == (len(X_TEST), CODE) and codes.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(codes, result.reduce(X_TEST))
    assert np.array_equal(codes, Reducer(result.out_dir).reduce(X_TEST))  # type: ignore[arg-type]
    assert reducer.reduce(np.empty((0, DIM), np.float32)).shape == (0, CODE)
    assert (reducer.kind, reducer.in_dim, reducer.code_dim) == (kind, DIM, CODE)
    with pytest.raises(ValueError, match=r"expects \(n, 48\) vectors, got shape \(3, 40\)"):
        reducer.reduce(np.ones((3, 40), np.float32))


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_codes_keep_the_topics_apart(trained: dict[str, ReducerTrainResult], kind: str) -> None:
    """Held-out rows are nearest their own topic's centroid in code space nearly always,
    as in the input space; an untrained network of the same shape does far worse."""
    import torch

    assert nearest_centroid_accuracy(X, X_TEST) >= 0.98  # the task is easy in the input
    result = trained[kind]
    accuracy = nearest_centroid_accuracy(result.reduce(X), result.reduce(X_TEST))
    torch.manual_seed(1)
    untrained = ReducerTrainResult(model=build_reducer(kind, DIM, CODE, 32).eval(), kind=kind,
                                   in_dim=DIM, code_dim=CODE, hidden=32)
    baseline = nearest_centroid_accuracy(untrained.reduce(X), untrained.reduce(X_TEST))
    assert accuracy >= 0.95 and accuracy > baseline + 0.15, (accuracy, baseline)


def test_without_out_dir_nothing_is_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.chdir(tmp_path)
    result = train_reducer("ae", X[:64], None, code_dim=4, hidden=16, epochs=2, batch_size=32,
                           progress=False, device="cpu")
    assert result.out_dir is None and list(tmp_path.iterdir()) == []
    assert result.config["format"] == "topicstream-reducer" and result.steps == 4
    assert result.reduce(X[:3]).shape == (3, 4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "pca"}, "kind='pca' should be one of ae, vae"),
    ({"code_dim": 0}, "code_dim=0 should be >= 1"),
    ({"hidden": -3}, "hidden=-3 should be >= 1"),
    ({"epochs": 0}, "epochs=0 should be >= 1"),
    ({"minutes": 0.0}, "minutes=0.0 should be > 0"),
    ({"batch_size": 1}, "batch_size=1 should be >= 2"),
    ({"X": X * 2}, "X should have unit rows: row 0 has norm 2.0000"),
    ({"X": np.zeros((0, DIM), np.float32)}, "X should be a non-empty"),
    ({"device": "tpu"}, "device='tpu'"),
])
def test_train_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    args = {"kind": "ae", "X": X[:8], "out_dir": None, "epochs": 1, "progress": False,
            "device": "cpu", **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        train_reducer(**args)


def _copy(result: ReducerTrainResult, tmp_path: Path) -> Path:
    return Path(shutil.copytree(result.out_dir, tmp_path / "red"))  # type: ignore[arg-type]


@pytest.mark.parametrize(("damage", "error", "message"), [
    (lambda p: (p / "model.safetensors").write_bytes(b"\x00garbage" * 10), ValueError,
     "model.safetensors: not a readable safetensors file"),
    (lambda p: (p / "model.safetensors").write_bytes(
        (p / "model.safetensors").read_bytes()[:500]), ValueError, "model.safetensors"),
    (lambda p: (p / "model.safetensors").unlink(), FileNotFoundError, "model.safetensors: missing"),
    (lambda p: (p / "config.json").unlink(), FileNotFoundError, "config.json: missing"),
    (lambda p: (p / "config.json").write_text("{not json"), ValueError, "config.json: not JSON"),
    (lambda p: edit_config(p, format="topicstream-distilled"), ValueError,
     "format='topicstream-distilled', expected 'topicstream-reducer'"),
    (lambda p: edit_config(p, version=2), ValueError, "version=2, this topicstream reads version 1"),
    (lambda p: edit_config(p, kind="pca"), ValueError, "kind='pca'"),
    (lambda p: edit_config(p, code_dim=0), ValueError, "code_dim=0 should be a positive integer"),
    (lambda p: edit_config(p, default_threshold="high"), ValueError, "default_threshold='high'"),
    (lambda p: edit_config(p, code_dim=16), ValueError, "tensors do not match config.json"),
    (lambda p: edit_config(p, kind="vae"), ValueError, "tensors do not match config.json"),
])
def test_damaged_directories_give_clear_errors(trained: dict[str, ReducerTrainResult],
                                               tmp_path: Path, damage: Any, error: type,
                                               message: str) -> None:
    path = _copy(trained["ae"], tmp_path)
    damage(path)
    with pytest.raises(error, match=message.replace("(", r"\(")) as info:
        Reducer(path)
    assert str(path) in str(info.value)


def test_missing_directory_and_bad_specs(trained: dict[str, ReducerTrainResult],
                                         tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such directory"):
        Reducer(tmp_path / "nothing")
    with pytest.raises(ValueError, match="reducer='pca:/x' should be KIND:PATH"):
        load_reducer("pca:/x")
    with pytest.raises(ValueError, match="reducer='ae' should be KIND:PATH"):
        load_reducer("ae")
    with pytest.raises(ValueError, match="holds a 'ae' reducer, not 'vae'"):
        load_reducer(f"vae:{trained['ae'].out_dir}")


def test_the_wrapped_encoder_is_an_encoder_of_codes(trained: dict[str, ReducerTrainResult]
                                                    ) -> None:
    inner = HashingEncoder(dim=DIM)
    reducer = Reducer(trained["vae"].out_dir)  # type: ignore[arg-type]
    enc = ReducedEncoder(inner, reducer)
    assert isinstance(enc, Encoder)
    assert (enc.dim, enc.device, enc.name) == (CODE, "cpu", "hashing-48+vae8:vae")
    assert enc.default_threshold == reducer.default_threshold
    assert enc.default_merge_threshold == reducer.default_merge_threshold
    texts = ["mars rover finds ice", "port strike ends", "rover on mars"]
    codes = enc.encode(texts)
    assert np.array_equal(codes, reducer.reduce(HashingEncoder(dim=DIM).encode(texts)))
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, rtol=1e-5)
    assert enc.tokens_seen == inner.tokens_seen > 0
    assert enc.encode([]).shape == (0, CODE)


def test_a_reducer_on_an_encoder_of_another_dimension_is_refused(
        trained: dict[str, ReducerTrainResult]) -> None:
    reducer = Reducer(trained["ae"].out_dir)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expects 48-d vectors of hashing-48, encoder "
                                         "hashing-64 gives 64-d"):
        ReducedEncoder(HashingEncoder(dim=64), reducer)


def test_the_setting_wraps_the_encoder_for_every_command(
        trained: dict[str, ReducerTrainResult]) -> None:
    spec = f"ae:{trained['ae'].out_dir}"
    cfg = load_config(env={"TOPICSTREAM_REDUCER": spec}, overrides={"encoder": "hashing:48"})
    assert cfg.reducer == spec and Config().reducer == ""
    enc = build_encoder(cfg)
    assert isinstance(enc, ReducedEncoder) and enc.dim == CODE
    clusterer = build_clusterer(cfg, enc)
    assert clusterer.threshold == trained["ae"].default_threshold  # type: ignore[attr-defined]
    assert clusterer.merge_threshold == trained["ae"].default_merge_threshold  # type: ignore[attr-defined]
    assert not isinstance(build_encoder(Config(encoder="hashing:48")), ReducedEncoder)
    with pytest.raises(ConfigError, match="expects 48-d vectors"):
        build_encoder(Config(encoder="hashing:64", reducer=spec))
    with pytest.raises(Unreachable, match="no such directory"):
        build_encoder(Config(encoder="hashing:48", reducer="vae:/no/such/dir"))
    for bad in ("pca:/x", "ae", "ae:", "/x"):
        with pytest.raises(ConfigError, match=f"reducer={bad!r} should be KIND:PATH"):
            load_config(env={}, overrides={"reducer": bad})


def test_cli_train_ae_then_cluster_with_it(tmp_path: Path) -> None:
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(line + "\n" for line in CORPUS.read_text().splitlines()[:80]))
    out = tmp_path / "ae"
    proc = cli("train", "ae", "--dataset", str(data), "--out", str(out), "--encoder",
               "hashing:64", "--code-dim", "8", "--epochs", "3", "--batch-size", "32",
               "--minutes", "0.5", "--no-progress", env=FAST)
    assert proc.returncode == 0, proc.stderr
    assert "trained ae8 on 80 vectors of tiny.jsonl (hashing-64, 64-d" in proc.stdout
    assert f"--reducer ae:{out}" in proc.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["encoder"], cfg["in_dim"], cfg["code_dim"], cfg["training"]["epochs_run"],
            cfg["training"]["steps"], cfg["training"]["device"]) == (
        "hashing:64", 64, 8, 3, 9, "cpu")
    assert cfg["base_threshold"] == 0.15  # the hashing encoder's
    assigned = tmp_path / "assign.jsonl"
    proc = cli("cluster", str(data), "--encoder", "hashing:64", "--reducer", f"ae:{out}",
               "--out", str(assigned), env=FAST)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in assigned.read_text().splitlines()]
    assert len(rows) == 80 and all("+ae8:ae" in row["model"] for row in rows)
    assert_one_line_error(cli("cluster", str(data), "--encoder", "hashing:32", "--reducer",
                              f"ae:{out}", env=FAST), "expects 64-d vectors", "gives 32-d")


def test_cli_train_errors_are_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "o")
    assert_one_line_error(cli("train", "pca", "--dataset", str(CORPUS), "--out", out),
                          "kind='pca' should be one of static, cnn, bilstm, attention, ae, vae")
    assert_one_line_error(cli("train", "ae", "--dataset", str(CORPUS), "--out", out,
                              "--code-dim", "0"), "--code-dim='0' should be >= 1")
    assert_one_line_error(cli("train", "static", "--dataset", str(CORPUS), "--out", out,
                              "--code-dim", "8"), "apply to ae and vae only")
    assert_one_line_error(cli("train", "vae", "--dataset", str(CORPUS), "--out", out,
                              "--encoder", "word2vec"), "encoder='word2vec'")
    assert_one_line_error(cli("cluster", str(CORPUS), "--reducer", "ae:/no/such/dir"),
                          "no such directory")
    assert_one_line_error(cli("cluster", str(CORPUS), "--reducer", "zip:/x"),
                          "reducer='zip:/x' should be KIND:PATH")
    for command in (["cluster"], ["run"], ["bench", "quality"]):
        assert "--reducer" in cli(*command, "--help").stdout, command
