"""Macro topics (stream.macro), the topic board (stream.board) and its HTTP side."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from conftest import REPO, documents
from stream.bench_board import synthetic_model
from stream.board import BoardQueryError, TopicBoard, build_view, parse_query
from stream.http import StatusServer
from stream.macro import agglomerate, macro_topics, public_clusters
from stream.state.memory import MemoryStore
from stream.topics import TopicParams


def blobs(n_per: int = 5, themes: int = 4, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.eye(dim, dtype=np.float32)[:themes] * 3
    truth = np.repeat(np.arange(themes), n_per)
    X = centers[truth] + 0.3 * rng.standard_normal((len(truth), dim)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True), truth


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return len(set(zip(a.tolist(), b.tolist(), strict=True))) == len(set(a.tolist())) == len(set(b.tolist()))


def test_ward_agglomeration_finds_the_themes_and_matches_the_weighted_criterion() -> None:
    X, truth = blobs()
    assert same_partition(agglomerate(X, np.ones(len(X)), 4), truth)
    assert len(set(agglomerate(X, np.ones(len(X)), 3).tolist())) == 3
    # a weight counts as that many copies of the point: Ward's criterion is additive
    w = np.arange(1, len(X) + 1, dtype=np.float64)
    copies = np.repeat(X, w.astype(int), axis=0)
    owner = np.repeat(np.arange(len(X)), w.astype(int))
    weighted = agglomerate(X, w, 4)
    expanded = agglomerate(copies, np.ones(len(copies)), 4)
    assert same_partition(weighted[owner], expanded)
    with pytest.raises(ValueError, match="n_groups=0"):
        agglomerate(X, np.ones(len(X)), 0)


def test_average_agglomeration_finds_the_themes_and_respects_the_bound() -> None:
    X, truth = blobs()
    assert same_partition(agglomerate(X, np.ones(len(X)), 4, "average"), truth)
    assert len(set(agglomerate(X, np.ones(len(X)), 2, "average").tolist())) == 2
    # a distance limit stops merging before the bound: the themes stay apart
    assert same_partition(agglomerate(X, np.ones(len(X)), 1, "average", max_distance=0.5), truth)
    with pytest.raises(ValueError, match="n_groups=0"):
        agglomerate(X, np.ones(len(X)), 0, "average")
    with pytest.raises(ValueError, match="linkage='single'"):
        agglomerate(X, np.ones(len(X)), 2, "single")


def test_macro_topics_cover_every_cluster_once_with_merged_keywords() -> None:
    state, topics = synthetic_model(600, dim=32, themes=5)
    macros = macro_topics(state, topics, 5000.0, max_macro_topics=5, max_leaves=100)
    assert 1 <= len(macros) <= 5
    members = [c for m in macros for c in m.members]
    assert sorted(members) == state.ids.tolist()
    pc = public_clusters(state, 5000.0)
    w = dict(zip(pc.ids.tolist(), pc.weights.tolist(), strict=True))
    for m in macros:
        assert m.id == m.members[0] == max(m.members, key=lambda c: w[c])
        assert m.keywords and len(m.keywords) <= 8
        assert m.size == int(sum(pc.sizes[np.searchsorted(pc.ids, m.members)]))
    assert [m.weight for m in macros] == sorted((m.weight for m in macros), reverse=True)
    with pytest.raises(ValueError, match="max_macro_topics=0"):
        macro_topics(state, topics, 5000.0, max_macro_topics=0)


def test_board_answers_from_its_cache_until_the_model_changes() -> None:
    state, topics = synthetic_model(300, dim=16, themes=4)
    store = MemoryStore(half_life=5000.0)
    store.import_state(state, topics, {})
    reads = {"n": 0}
    real = store.export_state

    def counting(cards=None):  # type: ignore[no-untyped-def]
        reads["n"] += 1
        return real(cards)

    store.export_state = counting  # type: ignore[method-assign]
    board = TopicBoard(store, TopicParams(), max_macro_topics=6, default_n=10, background=False)
    first = json.loads(board.answer())
    assert reads["n"] == 1 and len(first["topics"]) == 10 and first["clusters"] == 300
    t = first["topics"][0]
    for key in ("id", "keywords", "exemplars", "size", "growth", "emerging", "macro", "history"):
        assert key in t
    assert [x["weight"] for x in first["topics"]] == sorted((x["weight"] for x in first["topics"]), reverse=True)
    assert {x["macro"] for x in first["topics"]} <= {m["id"] for m in first["macros"]}
    assert len(first["macros"]) <= 6
    by_size = json.loads(board.answer(5, "size"))["topics"]
    assert [x["size"] for x in by_size] == sorted((x["size"] for x in by_size), reverse=True)
    by_growth = json.loads(board.answer(5, "growth"))["topics"]
    assert [x["growth"] for x in by_growth] == sorted((x["growth"] for x in by_growth), reverse=True)
    assert board.answer() is board.answer()  # the same bytes: nothing recomputed
    assert reads["n"] == 1
    word = first["topics"][0]["keywords"][0]
    found = json.loads(board.answer(50, "weight", word[:3].upper()))["topics"]
    assert found and all(any(word[:3] in k for k in x["keywords"]) for x in found)
    # a commit moves the version: the next answer is rebuilt, and the sparkline has 2 samples
    from stream.bench_board import _small_batch

    delta, tdelta = _small_batch(state, np.random.default_rng(0))
    store.commit(delta, [], tdelta)
    board.sample_every_s = 0.0
    second = json.loads(board.answer())
    assert reads["n"] == 2 and second["version"] == first["version"] + 1
    assert len(second["history_docs"]) == 2 and len(second["topics"][0]["history"]) == 2
    with pytest.raises(BoardQueryError, match="sort='bogus'"):
        board.answer(5, "bogus")
    with pytest.raises(BoardQueryError, match="n=0"):
        board.answer(0)
    with pytest.raises(BoardQueryError, match="n='x'"):
        parse_query("n=x")


def test_growth_rolls_stale_cards_to_the_newest_bucket() -> None:
    state, topics = synthetic_model(50, dim=8, themes=2)
    p = TopicParams()
    view = build_view(state, topics, p)
    now = max(c.bucket for c in topics.cards.values())
    for i, cid in enumerate(view.ids.tolist()):
        card = topics.cards[cid]
        if card.bucket == now:
            assert view.recent[i] == card.n and view.baseline[i] == pytest.approx(card.mean)
        else:  # nothing arrived since: no recent documents, a baseline decayed towards 0
            assert view.recent[i] == 0.0
            assert view.baseline[i] <= max(card.mean, card.n) + 1e-9
    np.testing.assert_allclose(view.growth, view.recent - view.baseline)


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def test_status_server_serves_the_board_page_and_api() -> None:
    state, topics = synthetic_model(100, dim=8, themes=3)
    store = MemoryStore(half_life=5000.0)
    store.import_state(state, topics, {})
    server = StatusServer("127.0.0.1", 0, CollectorRegistry(), alive=lambda: True,
                          ready=lambda: True, board=TopicBoard(store)).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        code, body, ctype = get(base + "/")
        assert code == 200 and ctype.startswith("text/html") and b"board.js" in body
        assert b"http://" not in body and b"https://" not in body  # no CDN
        code, body, ctype = get(base + "/board.js")
        assert code == 200 and "javascript" in ctype and b"api/topics" in body
        code, body, _ = get(base + "/api/topics?n=3&sort=growth")
        assert code == 200 and len(json.loads(body)["topics"]) == 3
        code, body, _ = get(base + "/api/topics?sort=nope")
        assert code == 400 and "sort='nope'" in json.loads(body)["error"]
        assert get(base + "/metrics")[0] == 200
    finally:
        server.close()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream", *args], capture_output=True,
                          text=True, timeout=180, cwd=REPO)


def test_inspect_tree_shows_macro_topics_with_their_clusters(tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in documents(400)) + "\n")
    state = tmp_path / "state.npz"
    done = cli("cluster", str(data), "--encoder", "hashing", "--state-file", str(state),
               "--out", "/dev/null")
    assert done.returncode == 0, done.stderr
    shown = cli("inspect", "--state-file", str(state), "--tree", "--json", "--top", "1000",
                "--max-macro-topics", "4")
    assert shown.returncode == 0, shown.stderr
    tree = json.loads(shown.stdout)
    assert 1 <= len(tree["macro_topics"]) <= 4
    assert sum(m["clusters"] for m in tree["macro_topics"]) == tree["clusters"]
    assert sum(c["size"] for m in tree["macro_topics"] for c in m["members"]) == 400
    text = cli("inspect", "--state-file", str(state), "--tree", "--top", "2")
    assert text.returncode == 0 and "macro" in text.stdout and "├─" in text.stdout


def test_bench_board_prints_latency_percentiles() -> None:
    done = cli("bench", "board", "--clusters", "400", "--requests", "30", "--store", "memory",
               "--change-every", "10")
    assert done.returncode == 0, done.stderr
    assert "p50" in done.stdout and "p99" in done.stdout and "400 clusters" in done.stdout
    bad = cli("bench", "board", "--clusters", "0")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--clusters=0" in bad.stderr
