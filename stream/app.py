"""Wiring: build a worker's stages from a :class:`~stream.config.Config`, and check that the
servers it names can be reached before anything starts."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoders import Encoder, load_encoder
from stream.batcher import FieldNames, InputRules
from stream.clustering import Clusterer, OnlineKMeans
from stream.config import Config, ConfigError
from stream.metrics import Metrics
from stream.state import StateStore, StoreUnavailable

log = logging.getLogger(__name__)


class Unreachable(RuntimeError):
    """A server named in the configuration cannot be reached (reported in one line)."""


def input_rules(cfg: Config) -> InputRules:
    fields = FieldNames(cfg.id_field, cfg.text_field, cfg.ts_field, cfg.meta_field, cfg.label_field)
    return InputRules(fields, cfg.max_chars, cfg.max_record_bytes)


def clusterer_params(cfg: Config) -> dict[str, Any]:
    """``clusterer_params`` (``NAME=VALUE,...``) as typed constructor arguments."""
    from stream.clustering.params import parse_params

    items = [item.strip() for item in cfg.clusterer_params.split(",") if item.strip()]
    try:
        return parse_params(items)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def build_clusterer(cfg: Config, encoder: Encoder) -> Clusterer:
    """The clusterer of ``cfg``. Similarity thresholds default to the encoder's own (cosine
    similarities of a hashing encoder run far lower than a transformer's);
    ``clusterer_params`` override any constructor argument."""
    params = clusterer_params(cfg)
    threshold = cfg.threshold if cfg.threshold is not None else getattr(encoder, "default_threshold", 0.4)
    try:
        if cfg.clusterer == "kmeans":
            merge = cfg.merge_threshold if cfg.merge_threshold is not None else \
                getattr(encoder, "default_merge_threshold", None)
            kwargs: dict[str, Any] = dict(
                threshold=threshold, max_clusters=cfg.max_clusters, half_life=cfg.half_life,
                merge_threshold=merge, min_weight=cfg.min_weight,
                maintain_every=cfg.maintain_every, k=cfg.k)
            return OnlineKMeans(**{**kwargs, **params})
        if cfg.clusterer == "denstream":
            from stream.clustering.denstream import DenStream

            return DenStream(**{"half_life": cfg.half_life, **params})
        from stream.clustering.river_backend import RiverClusterer

        key = cfg.state_key.encode() if cfg.state_key else None
        return RiverClusterer(cfg.clusterer.partition(":")[2], params, key=key)
    except TypeError as exc:
        raise ConfigError(f"clusterer {cfg.clusterer!r}: {exc}") from exc


def build_encoder(cfg: Config) -> Encoder:
    """The encoder of ``cfg``, wrapped by its ``reducer`` (a compressor of its vectors,
    :class:`~encoders.reducer.ReducedEncoder`) when one is set."""
    reducer = None
    if cfg.reducer:  # loaded first: a bad path fails before the transformer loads
        from encoders.reducer import load_reducer

        try:
            reducer = load_reducer(cfg.reducer)
        except (FileNotFoundError, ValueError) as exc:
            raise Unreachable(f"reducer {cfg.reducer!r}: {exc}") from exc
    try:
        encoder = load_encoder(cfg.encoder, device=cfg.device, batch_size=cfg.encode_batch_size,
                               precision=cfg.encoder_precision, max_tokens=cfg.encode_max_tokens,
                               compile=cfg.encoder_compile)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        raise Unreachable(f"encoder {cfg.encoder!r}: {exc}") from exc
    if reducer is None:
        return encoder
    from encoders.reducer import ReducedEncoder

    try:
        return ReducedEncoder(encoder, reducer)
    except ValueError as exc:  # the wrong encoder for this reducer: a configuration mistake
        raise ConfigError(f"reducer {cfg.reducer!r}: {exc}") from exc


def encoder_in_child(cfg: Config) -> Encoder:
    """:func:`build_encoder` as run in the encoder's child process (see
    :mod:`encoders.process`)."""
    return build_encoder(cfg)


def build_worker_encoder(cfg: Config) -> Encoder:
    """The worker's encoder. A torch encoder runs in child processes (``encoder_processes``,
    :mod:`encoders.process`), where it never waits for the GIL that polling, clustering and
    committing hold: by default one single-threaded process per core on a CPU, one process
    on CUDA. The hashing encoder, cheap numpy work, stays in the worker."""
    n = cfg.encoder_processes
    if n == 0 or cfg.encoder.partition(":")[0] == "hashing":
        return build_encoder(cfg)
    from encoders.process import EncoderProcessError, ProcessEncoder, available_cpus, cpu_plan

    cores = available_cpus()
    processes, threads = cpu_plan(cores)
    try:
        if n > 0:
            return ProcessEncoder(encoder_in_child, cfg, processes=n, split=False,
                                  threads=None if cfg.device.startswith("cuda")
                                  else max(1, cores // n))
        if cfg.device.startswith("cuda"):
            return ProcessEncoder(encoder_in_child, cfg)
        # auto on a CPU (or device auto): start one, and the rest once it says it is on a
        # CPU; each takes a whole batch (the worker keeps one batch in flight per process)
        enc = ProcessEncoder(encoder_in_child, cfg, threads=threads, split=False)
        if enc.device == "cpu" and processes > 1:
            enc.add_processes(processes - 1)
        return enc
    except EncoderProcessError as exc:
        if exc.kind == "ConfigError":
            raise ConfigError(str(exc)) from exc
        raise Unreachable(str(exc)) from exc


@dataclass
class BlasLimit:
    """A one-thread BLAS limit set by :func:`leave_cores_to_encoder`; closing it puts back
    the thread counts there were before (the limit is process-wide, so a process that
    builds a worker and then goes on without it gets its threads back)."""

    limiter: Any

    def close(self) -> None:
        self.limiter.restore_original_limits()


def leave_cores_to_encoder(encoder: Encoder) -> BlasLimit | None:
    """Run this process's BLAS (numpy's products: clustering, topic cards) on one thread when
    ``encoder`` does its work in child processes on the CPU; returns the limit (close it to
    restore the threads), None when it set none.

    Together those children take every core (:func:`encoders.process.cpu_plan`), so a
    second BLAS thread in the worker finds no free core: OpenBLAS's threads spin while they
    wait for each other, against the encoders, and every product of a step costs several
    times its single-threaded time. Measured on the 2-core development machine (2026-12-03,
    ``topicstream bench scale --workers 1 --docs 16000 --partitions 1 --encoder transformer``
    on news titles): 1,210 documents/s end to end with two BLAS threads (the clustering
    stage 15-21 ms a batch), 1,366-1,613 with one (6-7 ms). With the encoder in this
    process, or on CUDA, the cores stay the worker's."""
    from threadpoolctl import threadpool_limits

    from encoders.process import ProcessEncoder

    if not isinstance(encoder, ProcessEncoder) or encoder.device != "cpu":
        return None

    limit = BlasLimit(threadpool_limits(limits=1, user_api="blas"))
    log.info("BLAS on one thread in the worker: its %d encoder processes hold the cores",
             len(encoder.pids))
    return limit


def build_store(cfg: Config) -> StateStore:
    if not cfg.redis_url:
        from stream.state.memory import MemoryStore

        return MemoryStore(half_life=cfg.half_life, snapshot_path=cfg.state_file,
                           topic_params=cfg.topic_params())
    import redis

    from stream.state.redis_store import RedisStore, redact

    client = redis.Redis.from_url(cfg.redis_url, password=cfg.redis_password or None,
                                  socket_timeout=5.0, socket_connect_timeout=5.0)
    store = RedisStore(cfg.redis_url, model=cfg.model, half_life=cfg.half_life, client=client,
                       topic_params=cfg.topic_params())
    try:
        store.ping()
    except StoreUnavailable as exc:
        raise Unreachable(f"Redis at {redact(cfg.redis_url)} is unreachable: {exc.__cause__ or exc}") from exc
    return store


def check_kafka(cfg: Config, create_topics: list[str] | None = None, partitions: int = 1) -> None:
    """Fail fast, in one line, when no broker answers; create missing output topics."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(request_timeout_ms=10000, **cfg.kafka_client_config())
    except (KafkaError, OSError) as exc:
        raise Unreachable(f"Kafka brokers at {cfg.brokers} are unreachable: {exc}") from exc
    try:
        if create_topics:
            existing = set(admin.list_topics())
            missing = [t for t in create_topics if t not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
    finally:
        admin.close()


class RiverModelFile:
    """A river model's signed pickle beside the in-memory store's snapshot: loaded (signature
    checked first) when the worker is built, saved when it closes, with the snapshot."""

    def __init__(self, clusterer: Any, path: Path) -> None:
        self.clusterer, self.path = clusterer, path
        if path.exists():
            clusterer.load(path)
            log.info("loaded the signed river model %s", path)

    def close(self) -> None:
        self.clusterer.save(self.path)


@dataclass
class Built:
    worker: Any
    closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for c in reversed(self.closers):
            try:
                c.close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                log.warning("closing %s: %s", type(c).__name__, exc)


def build_worker(cfg: Config, *, input_file: str | Path | None = None, sink: Any = None,
                 metrics: Metrics | None = None, encoder: Encoder | None = None,
                 replay_docs_per_s: float | None = None) -> Built:
    """A worker for ``cfg``: Kafka in and out, or ``input_file`` in (stamped at
    ``replay_docs_per_s`` when given, see :class:`~stream.source.FileSource`) and ``sink``
    out. If building fails part way, what was already started (the store, encoder
    processes, the BLAS limit, ...) is closed before the error goes up."""
    closers: list[Any] = []
    try:
        return _assemble_worker(cfg, closers, input_file=input_file, sink=sink,
                                metrics=metrics, encoder=encoder,
                                replay_docs_per_s=replay_docs_per_s)
    except BaseException:
        Built(None, closers).close()
        raise


def _assemble_worker(cfg: Config, closers: list[Any], *, input_file: str | Path | None,
                     sink: Any, metrics: Metrics | None, encoder: Encoder | None,
                     replay_docs_per_s: float | None) -> Built:
    """:func:`build_worker`'s body: each part that needs closing goes into ``closers`` as
    soon as it exists, in the order :meth:`Built.close` closes in reverse."""
    from stream.drift import DriftMonitor
    from stream.topics import TopicTracker
    from stream.worker import Worker

    metrics = metrics or Metrics()
    if cfg.clusterer.startswith("river:") and cfg.redis_url:
        raise ConfigError(f"clusterer={cfg.clusterer!r} is a single-worker backend: its river model "
                          "lives in one process and cannot be shared through Redis; run it without "
                          "redis_url (its signed model is saved beside state_file)")
    store = build_store(cfg)
    closers.append(store)
    if encoder is None:
        encoder = build_worker_encoder(cfg)
        limit = leave_cores_to_encoder(encoder)
        if limit is not None:
            closers.append(limit)  # closed after the encoder has ended
        if hasattr(encoder, "close"):
            closers.append(encoder)
    clusterer = build_clusterer(cfg, encoder)
    if cfg.clusterer.startswith("river:") and cfg.state_file:
        closers.append(RiverModelFile(clusterer, Path(cfg.state_file + ".river")))
    common: dict[str, Any] = dict(
        encoder=encoder, clusterer=clusterer, store=store, rules=input_rules(cfg),
        model_name=f"{cfg.clusterer}/{encoder.name}", batch_size=cfg.batch_size,
        max_wait_ms=cfg.max_wait_ms, metrics=metrics, refresh_interval_s=cfg.refresh_interval_s,
        log_interval_s=cfg.log_interval_s, exit_when_idle=cfg.exit_when_idle,
        topics=TopicTracker(cfg.topic_params()),
        drift=DriftMonitor(cfg.drift_window, cfg.drift_threshold), encode_ahead=cfg.encode_ahead)
    if input_file is not None:
        from stream.sink import FileSink
        from stream.source import FileSource

        probe = FileSource(input_file)
        stored = store.load_offsets([probe.tp]).get(probe.tp, 0)
        probe.close()
        file_source = FileSource(input_file, start=stored, replay_docs_per_s=replay_docs_per_s)
        closers.append(file_source)
        file_sink = sink or FileSink("-")
        closers.append(file_sink)
        worker = Worker(source=file_source, sink=file_sink, **common)
        if stored:
            worker.expected[file_source.tp] = stored
        return Built(worker, closers)

    from stream.sink import KafkaSink
    from stream.source import KafkaSource

    check_kafka(cfg, create_topics=[cfg.assignments_topic, cfg.events_topic, cfg.dlq_topic])
    kafka_cfg = cfg.kafka_client_config()
    holder: dict[str, Worker] = {}
    source = KafkaSource(
        [cfg.input_topic], lookup=store.load_offsets,
        on_assign=lambda stored: holder["w"].on_assign(stored),
        on_revoke=lambda tps: holder["w"].on_revoke(tps),
        consumer_config=dict(kafka_cfg, group_id=cfg.group_id,
                             session_timeout_ms=cfg.session_timeout_ms,
                             heartbeat_interval_ms=max(cfg.session_timeout_ms // 4, 500),
                             auto_offset_reset=cfg.auto_offset_reset,
                             partition_assignment_strategy=cfg.kafka_assignors(),
                             max_poll_records=cfg.batch_size,
                             fetch_max_bytes=max(52428800, cfg.max_record_bytes * 2),
                             max_partition_fetch_bytes=max(1048576, cfg.max_record_bytes + 1024)))
    closers.append(source)
    kafka_sink = sink or KafkaSink(cfg.assignments_topic, cfg.events_topic, cfg.dlq_topic,
                                   dict(kafka_cfg, max_request_size=max(1048576, cfg.max_record_bytes * 2)))
    closers.insert(len(closers) - 1, kafka_sink)  # the source closes first, then the sink
    worker = Worker(source=source, sink=kafka_sink, on_committed=source.commit_to_kafka, **common)
    holder["w"] = worker
    return Built(worker, closers)
