"""``state export`` / ``state import``: a restored store continues exactly as the original.

Both stores are real: the in-memory store with its snapshot file and a private
redis-server (conftest's ``redis_server``); workers use the hashing encoder.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import documents
from stream.app import build_worker
from stream.bench import CollectingSink
from stream.cli import main
from stream.clustering import OnlineKMeans
from stream.clustering.river_backend import FORMAT_TAG
from stream.config import Config, load_config
from stream.contracts import TopicPartition
from stream.services import Service
from stream.state import NO_OFFSET, OffsetMove, StoreNotEmpty
from stream.state.export import (
    ExportFormatError,
    export_store,
    import_store,
    read_export,
    write_export,
)
from stream.state.memory import MemoryStore
from stream.state.redis_store import RedisStore
from stream.topics import TopicState

FIRST, NEXT = 240, 160  # documents before the export, and after it


def settings(kind: str, tmp_path: Path, redis: Service | None, name: str) -> Config:
    """A worker's settings on store ``kind``: a state file named ``name``, or Redis model
    ``name`` (the second Redis store lives in database 1)."""
    common = {"encoder": "hashing", "batch_size": "40", "half_life": "300",
              "maintain_every": "100", "metrics_port": "0"}
    if kind == "memory":
        return load_config(env={}, overrides={**common, "state_file": str(tmp_path / name)})
    assert redis is not None
    db = 1 if name.endswith("restored") else 0
    return load_config(env={}, overrides={**common, "model": name,
                                          "redis_url": redis.url.rsplit("/", 1)[0] + f"/{db}"})


def store_flags(cfg: Config) -> list[str]:
    if cfg.redis_url:
        return ["--redis-url", cfg.redis_url, "--model", cfg.model]
    return ["--state-file", str(cfg.state_file)]


def run_file(cfg: Config, path: Path) -> CollectingSink:
    """One worker over ``path`` from the offset its store holds, to the end of the file."""
    sink = CollectingSink()
    built = build_worker(cfg, input_file=path, sink=sink)
    try:
        built.worker.run()
    finally:
        built.close()
    return sink


def write_docs(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def stamped(start: int, n: int) -> list[dict[str, Any]]:
    """Documents ``start .. start + n`` with their own stream time (1 document per second),
    so the emerging-topic buckets do not depend on when the test runs."""
    rows = documents(start + n)[start:]
    for i, r in enumerate(rows, start):
        r["ts"] = 1_700_000_000 + i
    return rows


def comparable(sink: CollectingSink) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    drop = ("processed_at", "_published_at")
    return ([{k: v for k, v in a.items() if k not in drop} for a in sink.assignments],
            [{k: v for k, v in e.items() if k not in drop} for e in sink.events])


@pytest.mark.parametrize(("src", "dst"), [("memory", "memory"), ("redis", "redis"),
                                          ("memory", "redis"), ("redis", "memory")])
def test_restored_store_assigns_the_next_documents_exactly_as_the_original(
        src: str, dst: str, tmp_path: Path, request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture[str]) -> None:
    redis = request.getfixturevalue("redis_server") if "redis" in (src, dst) else None
    original = settings(src, tmp_path, redis, "original")
    restored = settings(dst, tmp_path, redis, "restored")
    data = tmp_path / "docs.jsonl"
    write_docs(data, stamped(0, FIRST))
    first = run_file(original, data)
    assert len(first.assignments) == FIRST

    dump = tmp_path / "state.json.gz"
    assert main(["state", "export", str(dump), *store_flags(original)]) == 0
    assert f"{FIRST} documents" in capsys.readouterr().out
    assert main(["state", "import", str(dump), *store_flags(restored)]) == 0
    assert "the input resumes where the export was taken" in capsys.readouterr().out

    write_docs(data, stamped(FIRST, NEXT))
    a, b = run_file(original, data), run_file(restored, data)
    assert [x["id"] for x in b.assignments] == [f"doc-{i}" for i in range(FIRST, FIRST + NEXT)]
    got_a, got_b = comparable(a), comparable(b)
    assert [x["cluster_id"] for x in got_a[0]] == [x["cluster_id"] for x in got_b[0]]
    assert [x["similarity"] for x in got_a[0]] == [x["similarity"] for x in got_b[0]]
    assert got_a == got_b  # keywords, new-cluster and outlier flags, model_version, events too
    assert any(x["is_new_cluster"] for x in got_a[0]) and any(x["keywords"] for x in got_a[0])


def feed(store: Any, n_batches: int, seed: int, km: OnlineKMeans | None = None,
         start: int = 0) -> tuple[OnlineKMeans, list[Any]]:
    """An online k-means learning unit vectors in batches of 50, committing each to
    ``store`` with its offsets on partition ``in:0``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 16))
    if km is None:
        km = OnlineKMeans(threshold=0.75, half_life=100.0, merge_threshold=0.6,
                          maintain_every=120, min_weight=0.3)
        km.set_id_allocator(store.allocate_ids)
    results = []
    for i in range(n_batches):
        X = centres[rng.integers(0, 8, 50)] + 0.4 * rng.normal(size=(50, 16))
        X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
        res = km.learn_predict(X)
        off = start + i * 50
        store.commit(res.delta, [OffsetMove(TopicPartition("in", 0),
                                            NO_OFFSET if off == 0 else off, off + 50)])
        results.append(res)
    return km, results


@pytest.mark.parametrize("dst", ["memory", "redis"])
def test_the_live_original_and_a_clusterer_restored_from_the_import_agree(
        dst: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The original clusterer object, never reloaded, against a fresh one restored from the
    imported store: the same next batches give the same ids and similarities, bit for bit."""
    src_store = MemoryStore(half_life=100.0, snapshot_path=tmp_path / "a.npz")
    km, _ = feed(src_store, 8, seed=1)
    write_export(tmp_path / "s.json", export_store(src_store))
    if dst == "memory":
        target: Any = MemoryStore(half_life=100.0, snapshot_path=tmp_path / "b.npz")
    else:
        target = RedisStore(request.getfixturevalue("redis_server").url, model="b",
                            half_life=100.0)
    import_store(target, read_export(tmp_path / "s.json"))
    again = OnlineKMeans(threshold=0.75, half_life=100.0, merge_threshold=0.6,
                         maintain_every=120, min_weight=0.3)
    again.set_id_allocator(target.allocate_ids)
    loaded = target.load_state()
    assert loaded is not None
    again.restore(loaded)
    assert target.load_offsets([TopicPartition("in", 0)]) == {TopicPartition("in", 0): 400}
    _, ra = feed(src_store, 6, seed=2, km=km, start=400)
    _, rb = feed(target, 6, seed=2, km=again, start=400)
    for x, y in zip(ra, rb, strict=True):
        np.testing.assert_array_equal(x.cluster_ids, y.cluster_ids)
        np.testing.assert_array_equal(x.similarity, y.similarity)
        np.testing.assert_array_equal(x.merged, y.merged)
    assert any(len(r.merged) or len(r.faded) for r in ra)  # maintenance ran after the import
    target.close()


def exported(tmp_path: Path) -> tuple[Path, MemoryStore]:
    """A state file with a model in it (kmeans state, topic cards, offsets) and its export."""
    store = MemoryStore(half_life=100.0, snapshot_path=tmp_path / "src.npz")
    feed(store, 3, seed=0)
    st = TopicState.from_json({"all": {"w": {"quake": 2.5}, "t": 150.0},
                               "0": {"w": {"quake": 2.5}, "t": 150.0,
                                     "x": [[0.9, "d1", "a quake"]], "b": 3, "n": 2.0,
                                     "m": 0.5, "v": 0.25, "a": 1, "f": 1.0, "l": 9.0, "s": 2}})
    snap = store.export_state()
    assert snap.state is not None
    store.import_state(snap.state, st, snap.offsets, force=True)  # the cards beside the model
    path = tmp_path / "state.json.gz"
    write_export(path, export_store(store))
    return path, store


def test_memory_to_redis_to_memory_round_trip_keeps_every_field(
        tmp_path: Path, redis_server: Service) -> None:
    path, src = exported(tmp_path)
    redis = RedisStore(redis_server.url, model="rt", half_life=100.0)
    import_store(redis, read_export(path))
    back = tmp_path / "back.json"
    write_export(back, export_store(redis, source={"store": "redis", "model": "rt"}))
    mem = MemoryStore(half_life=100.0, snapshot_path=tmp_path / "dst.npz")
    import_store(mem, read_export(back))
    # through Redis and back, into a new state file and read from it again
    again = MemoryStore(half_life=100.0, snapshot_path=tmp_path / "dst.npz").export_state()
    want = src.export_state()
    assert want.state is not None and again.state is not None
    a, b = want.state.sorted(), again.state.sorted()
    for name in ("ids", "sums", "weights", "counts", "last_t", "created_t", "row_labels"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    assert (a.dim, a.n_docs, a.next_id, a.version) == (b.dim, b.n_docs, b.next_id, b.version)
    assert want.topics is not None and again.topics is not None
    assert again.topics.to_json() == want.topics.to_json()
    assert again.offsets == want.offsets == {"in:0": 150}
    assert redis.allocate_ids(1).tolist() == [a.next_id]  # the id counter moved with it
    redis.close()


def test_the_file_is_versioned_json_with_typed_arrays(tmp_path: Path) -> None:
    path, src = exported(tmp_path)
    doc = json.loads(gzip.decompress(path.read_bytes()))
    assert (doc["format"], doc["version"]) == ("topicstream-state", 1)
    state = src.export_state().state
    assert state is not None
    assert doc["clusterer"]["clusters"] == len(state) and doc["clusterer"]["dim"] == 16
    sums = doc["clusterer"]["arrays"]["sums"]
    assert (sums["dtype"], sums["shape"]) == ("<f4", [len(state), 16])
    assert np.frombuffer(base64.b64decode(sums["base64"]), "<f4").tobytes() == state.sums.tobytes()
    assert doc["offsets"] == [{"topic": "in", "partition": 0, "offset": 150}]
    assert doc["topics"]["0"]["x"] == [[0.9, "d1", "a quake"]]
    assert doc["river"] is None
    plain = tmp_path / "plain.json"  # without .gz: plain JSON, read the same way
    write_export(plain, read_export(path))
    assert json.loads(plain.read_text())["clusterer"] == doc["clusterer"]


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_import_refuses_a_model_with_state_unless_forced(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    path, _ = exported(tmp_path)
    exp = read_export(path)
    if kind == "memory":
        target: Any = MemoryStore(half_life=100.0, snapshot_path=tmp_path / "t.npz")
    else:
        target = RedisStore(request.getfixturevalue("redis_server").url, model="t")
    feed(target, 1, seed=5)  # a different model: 50 documents, offset 50
    with pytest.raises(StoreNotEmpty, match="50 documents"):
        import_store(target, exp)
    kept = target.export_state()
    assert kept.state is not None and kept.state.n_docs == 50 and kept.offsets == {"in:0": 50}
    import_store(target, exp, force=True, offsets=False)  # --force --no-offsets
    now = target.export_state()
    assert now.state is not None and now.state.n_docs == 150
    assert now.offsets == {"in:0": 50}  # the target's own offsets stayed
    import_store(target, exp, force=True)
    assert target.export_state().offsets == {"in:0": 150}
    target.close()


def signed_river(key: bytes) -> bytes:
    """Bytes laid out as RiverClusterer.dumps writes them (never unpickled here)."""
    payload = pickle.dumps({"not": "unpickled"})
    return FORMAT_TAG + hmac.new(key, FORMAT_TAG + payload, hashlib.sha256).digest() + payload


def test_a_river_model_travels_as_its_signed_bytes_and_never_into_redis(
        tmp_path: Path, redis_server: Service, capsys: pytest.CaptureFixture[str]) -> None:
    key = b"k" * 32
    _, src = exported(tmp_path)
    blob = signed_river(key)
    (tmp_path / "src.npz.river").write_bytes(blob)
    dump = tmp_path / "river.json.gz"
    assert main(["state", "export", str(dump), "--state-file", str(tmp_path / "src.npz")]) == 0
    assert "a signed river model" in capsys.readouterr().out
    doc = json.loads(gzip.decompress(dump.read_bytes()))
    assert doc["river"]["format_tag"] == FORMAT_TAG.decode().strip()
    assert base64.b64decode(doc["river"]["signed_base64"]) == blob

    dst = tmp_path / "dst.npz"
    assert main(["state", "import", str(dump), "--state-file", str(dst)]) == 0
    assert (tmp_path / "dst.npz.river").read_bytes() == blob  # signature kept, byte for byte
    assert dst.is_file()

    assert main(["state", "import", str(dump), "--redis-url", redis_server.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "river model" in err[0] and "--state-file" in err[0]
    assert RedisStore(redis_server.url).load_state() is None  # nothing written

    other = tmp_path / "other.npz"
    assert main(["state", "import", str(dump), "--state-file", str(other),
                 "--state-key", "x" * 32]) == 2
    assert "signature does not match" in capsys.readouterr().err
    assert not other.exists() and not Path(str(other) + ".river").exists()


def one_line_error(code: int, capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("topicstream: error:"), err
    for w in words:
        assert w in err[0], err[0]
    return err[0]


def edited(path: Path, out: Path, edit: Any) -> Path:
    doc = json.loads(gzip.decompress(path.read_bytes()))
    edit(doc)
    out.write_text(json.dumps(doc))
    return out


def test_cli_refusals_are_one_line(tmp_path: Path, redis_server: Service,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = exported(tmp_path)
    target = ["--redis-url", redis_server.url, "--model", "m"]

    def imp(p: Path, *extra: str) -> int:
        return main(["state", "import", str(p), *target, *extra])

    one_line_error(main(["state", "export", str(tmp_path / "x.json"), *target]), capsys,
                   "'m'", "no state")
    one_line_error(main(["state", "export", str(tmp_path / "x.json")]), capsys,
                   "--redis-url", "--state-file")
    one_line_error(main(["state", "export", str(tmp_path / "x.json"), "--state-file",
                         str(tmp_path / "none.npz")]), capsys, "none.npz")
    one_line_error(imp(tmp_path / "missing.json"), capsys, "no such file", "missing.json")

    truncated = tmp_path / "truncated.json.gz"
    truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    one_line_error(imp(truncated), capsys, "truncated.json.gz", "not a readable")
    cut = tmp_path / "cut.json"
    text = gzip.decompress(path.read_bytes()).decode()
    cut.write_text(text[: len(text) // 2])
    one_line_error(imp(cut), capsys, "cut.json", "not a readable")

    cases: list[tuple[str, Any, tuple[str, ...]]] = [
        ("format", lambda d: d.update(format="something-else"), ("format='something-else'",)),
        ("version", lambda d: d.update(version=2), ("version=2", "reads version 1")),
        ("shape", lambda d: d["clusterer"].update(clusters=d["clusterer"]["clusters"] + 1),
         ("clusterer.arrays.ids.shape",)),
        ("bytes", lambda d: d["clusterer"]["arrays"]["sums"].update(
            base64=d["clusterer"]["arrays"]["sums"]["base64"][:-8]), ("arrays.sums holds",)),
        ("dtype", lambda d: d["clusterer"]["arrays"]["weights"].update(dtype="<f4"),
         ("weights.dtype='<f4'",)),
        ("missing", lambda d: d["clusterer"].pop("n_docs"), ("clusterer.n_docs is missing",)),
        ("offset", lambda d: d["offsets"][0].update(offset="12"), ("offsets[0].offset='12'",)),
        ("topics", lambda d: d["topics"]["0"].pop("t"), ("topics: not a topic state",)),
    ]
    for name, edit, words in cases:
        one_line_error(imp(edited(path, tmp_path / f"{name}.json", edit)), capsys, *words)
    assert RedisStore(redis_server.url, model="m").export_state().state is None  # untouched

    assert imp(path) == 0
    capsys.readouterr()
    one_line_error(imp(path), capsys, "already holds state", "--force")
    assert imp(path, "--force", "--no-offsets") == 0
    assert "offsets left as they were" in capsys.readouterr().out


def test_export_of_a_store_without_state_refuses() -> None:
    with pytest.raises(ExportFormatError, match="no state"):
        export_store(MemoryStore())


def test_redis_export_reuses_cached_cards_only_while_unchanged(redis_server: Service) -> None:
    """The topic board rereads the model through a card cache: unchanged cards come back as
    the cached objects, a changed card is parsed again, and the result always equals a read
    without the cache."""
    import dataclasses

    from stream.bench_board import synthetic_model
    from stream.topics import TopicParams

    params = TopicParams()
    state, topics = synthetic_model(50, dim=16, params=params)
    store = RedisStore(redis_server.url, model="card-cache", half_life=params.half_life)
    try:
        store.import_state(state, topics, {})
        cache: dict = {}
        first = store.export_state(cache)
        again = store.export_state(cache)
        assert first.topics is not None and again.topics is not None
        assert all(again.topics.cards[c] is first.topics.cards[c] for c in first.topics.cards)
        changed = next(iter(topics.cards))
        topics.cards[changed] = dataclasses.replace(topics.cards[changed], size=10**6)
        store.import_state(state, topics, {}, force=True)
        third = store.export_state(cache)
        assert third.topics is not None and third.topics.cards[changed].size == 10**6
        assert third.topics.cards[changed] is not again.topics.cards[changed]
        assert all(third.topics.cards[c] is again.topics.cards[c]
                   for c in third.topics.cards if c != changed)
        plain = store.export_state()
        assert plain.topics is not None and plain.topics.to_json() == third.topics.to_json()
    finally:
        store.close()
