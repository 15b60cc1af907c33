"""DEC (stream/clustering/dec.py) and the warm start it feeds (stream/bootstrap.py).

DEC runs on synthetic clusters (seconds); the bootstrap is written through the CLI into a
state file and into a private redis-server, and a worker then continues from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import documents
from stream.app import build_worker
from stream.bench import CollectingSink
from stream.bootstrap import clusters_from_labels, prune_members
from stream.cli import main
from stream.clustering import OnlineKMeans
from stream.clustering.dec import fit_dec, soft_assign, target_distribution
from stream.config import load_config
from stream.evaluate import quality
from stream.services import Service
from stream.state.memory import MemoryStore
from stream.state.redis_store import RedisStore


def blobs(k: int = 6, per: int = 60, dim: int = 32, noise: float = 0.25, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    y = np.repeat(np.arange(k), per)
    X = centres[y] + noise * rng.normal(size=(k * per, dim))
    perm = rng.permutation(len(y))
    X = X[perm] / np.linalg.norm(X[perm], axis=1, keepdims=True)
    return X.astype(np.float32), y[perm]


def test_target_distribution_sharpens_and_rows_sum_to_one() -> None:
    q = soft_assign(torch.tensor([[0.0, 0.0], [1.0, 0.1]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    p = target_distribution(q)
    assert torch.allclose(q.sum(1), torch.ones(2)) and torch.allclose(p.sum(1), torch.ones(2))
    assert bool((p.max(1).values > q.max(1).values).all())  # more confident than q


def test_dec_recovers_separated_clusters_and_is_seeded() -> None:
    X, y = blobs()
    torch.manual_seed(0)
    a = fit_dec(X, torch.nn.Linear(X.shape[1], 8), k=6, minutes=0.2, update_interval=20)
    torch.manual_seed(0)
    b = fit_dec(X, torch.nn.Linear(X.shape[1], 8), k=6, minutes=0.2, update_interval=20)
    assert quality(y, a.labels).nmi > 0.95
    assert np.array_equal(a.labels, b.labels)
    assert a.codes.shape == (len(X), 8)
    assert np.allclose(np.linalg.norm(a.codes, axis=1), 1.0, atol=1e-5)


def test_dec_validates_at_the_door() -> None:
    X, _ = blobs()
    net = torch.nn.Linear(X.shape[1], 4)
    with pytest.raises(ValueError, match="k=0 should be between 1"):
        fit_dec(X, net, k=0)
    with pytest.raises(ValueError, match="batch_size=0 should be >= 1"):
        fit_dec(X, net, k=2, batch_size=0)
    with pytest.raises(ValueError, match="non-empty"):
        fit_dec(X[:0], net, k=1)


def test_state_from_labels_is_what_online_kmeans_would_hold() -> None:
    """Streaming documents one cluster at a time through k-means with a threshold that keeps
    each label in its own cluster gives the same sums, weights and counts."""
    X, y = blobs(k=3, per=20, noise=0.05)
    state, rows = clusters_from_labels(X, y, half_life=30.0)
    km = OnlineKMeans(threshold=0.5, half_life=30.0, maintain_every=10_000)
    for i in range(len(X)):  # one document per batch: the clock advances as in the state
        km.learn_predict(X[i:i + 1])
    online = km.snapshot()
    assert len(online) == len(state) == 3
    t = float(len(X))
    assert np.allclose(np.sort(online.weights_at(t, 30.0)), np.sort(state.weights_at(t, 30.0)))
    assert sorted(online.counts.tolist()) == sorted(state.counts.tolist())
    assert state.n_docs == len(X) and state.next_id == 3
    assert np.array_equal(state.ids[rows], rows)  # ids 0..k-1 in order of first appearance
    assert rows[0] == 0 and state.created_t[0] == 1.0


def test_documents_far_from_their_centroid_are_left_out() -> None:
    X, y = blobs(k=2, per=30, noise=0.05)
    labels = y.copy()
    labels[0] = 1 - labels[0]  # put one document in the wrong cluster
    kept = prune_members(X, labels, threshold=0.4)
    assert kept[0] == -1 and (kept[1:] >= 0).all()
    state, rows = clusters_from_labels(X, kept, half_life=None)
    assert rows[0] == -1 and int(state.counts.sum()) == len(X) - 1 and state.n_docs == len(X)


def history(tmp_path: Path, n: int = 300) -> Path:
    path = tmp_path / "history.jsonl"
    rows = documents(n)
    for i, r in enumerate(rows):
        r["ts"] = 1_700_000_000 + i  # type: ignore[assignment]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    return path


FAST = ["--encoder", "hashing", "--ae-minutes", "0.03", "--dec-minutes", "0.03",
        "--no-progress", "--code-dim", "16"]


def test_bootstrap_writes_a_state_a_worker_continues_from(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    path = history(tmp_path)
    state_file = tmp_path / "model.npz"
    assert main(["bootstrap", "--dataset", str(path), "--state-file", str(state_file), *FAST]) == 0
    out = capsys.readouterr().out
    assert "bootstrapped state file" in out and "1 bad records skipped" in out
    store = MemoryStore(5000.0, snapshot_path=state_file)
    state, topics = store.load_state(), store.load_topics()
    assert state is not None and topics is not None
    assert state.n_docs == 300 and len(state) >= 2
    assert set(topics.cards) == set(state.ids.tolist())
    assert all(card.terms for card in topics.cards.values())  # keywords from the history

    # a second bootstrap without --force is refused in one line and changes nothing
    assert main(["bootstrap", "--dataset", str(path), "--state-file", str(state_file),
                 *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--force" in err

    # a worker continues from it: the history's topics label the new documents
    cfg = load_config(env={}, overrides={"encoder": "hashing", "state_file": str(state_file),
                                         "batch_size": "50", "metrics_port": "0"})
    stream_file = tmp_path / "stream.jsonl"
    stream_file.write_text("".join(json.dumps({**r, "id": "new-" + r["id"]}) + "\n"
                                   for r in documents(100)))
    sink = CollectingSink()
    built = build_worker(cfg, input_file=stream_file, sink=sink)
    try:
        built.worker.run()
    finally:
        built.close()
    assigned = {a["cluster_id"] for a in sink.assignments}
    assert len(sink.assignments) == 100
    assert assigned & set(state.ids.tolist())  # old topics reused, not only new clusters


def test_bootstrap_into_redis_moves_the_id_counter(tmp_path: Path, redis_server: Service,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = history(tmp_path, 200)
    args = ["bootstrap", "--dataset", str(path), "--redis-url", redis_server.url,
            "--model", "boot", *FAST]
    assert main(args) == 0
    store = RedisStore(redis_server.url, model="boot")
    try:
        state = store.load_state()
        assert state is not None and state.n_docs == 200
        assert int(store.allocate_ids(1)[0]) >= int(state.ids.max()) + 1
        assert store.load_offsets([]) == {}
    finally:
        store.close()
    capsys.readouterr()
    assert main([*args, "--clusterer", "denstream"]) == 2
    assert "only clusterer=kmeans" in capsys.readouterr().err


def test_bench_bootstrap_prints_every_start(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = history(tmp_path, 400)
    lines = path.read_text().splitlines()[:-1]
    path.write_text("\n".join(lines) + "\n")
    assert main(["bench", "bootstrap", "--dataset", str(path), *FAST]) == 0
    out = capsys.readouterr().out
    for start in ("cold (empty state)", "history streamed online", "AE + k-means",
                  "DEC (the bootstrap)"):
        assert start in out
    assert main(["bench", "bootstrap", "--dataset", str(path), "--history", "1.5"]) == 2
    assert "--history='1.5' should be below 1" in capsys.readouterr().err
