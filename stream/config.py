"""Configuration: defaults, then a file (TOML or JSON), then ``TOPICSTREAM_*`` environment
variables, then command-line flags; validated once at start.

Every field of :class:`Config` is settable in each of the three ways: ``batch_size`` is
``batch_size = 128`` in a file, ``TOPICSTREAM_BATCH_SIZE=128`` in the environment and
``--batch-size 128`` on the command line. Secrets (``redis_password``, ``kafka_sasl_password``,
``state_key``) can also be read from a file named by ``..._file``; they are never logged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from stream.topics import TopicParams

ENV_PREFIX = "TOPICSTREAM_"
ASSIGNORS = ("range", "roundrobin", "cooperative-sticky")
SECRET_FIELDS = ("redis_password", "kafka_sasl_password", "state_key")


class ConfigError(ValueError):
    """A user mistake in the configuration: reported in one line, never as a traceback."""


@dataclass
class Config:
    # Kafka
    brokers: str = "localhost:9092"
    input_topic: str = "documents"
    assignments_topic: str = "assignments"
    events_topic: str = "topic-events"
    dlq_topic: str = "documents-dlq"
    group_id: str = "topicstream"
    session_timeout_ms: int = 10000
    auto_offset_reset: str = "earliest"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None  # client certificate (mutual TLS)
    kafka_ssl_keyfile: str | None = None
    # partition assignment: range | roundrobin | cooperative-sticky (incremental rebalances:
    # only the partitions that move are revoked; each newly assigned one is sought to its
    # stored offset either way)
    kafka_assignment_strategy: str = "range"
    # state
    redis_url: str | None = None  # None: the in-memory store
    redis_password: str | None = None
    state_file: str | None = None  # snapshot of the in-memory store
    model: str = "default"
    refresh_interval_s: float = 5.0
    # input contract
    id_field: str = "id"
    text_field: str = "text"
    ts_field: str = "ts"
    meta_field: str = "meta"
    label_field: str = "label"
    max_chars: int = 2000
    max_record_bytes: int = 1_000_000
    # pipeline
    batch_size: int = 256
    max_wait_ms: int = 500
    encoder: str = "hybrid"
    # KIND:PATH (KIND ae | vae): a compressor after the encoder, trained by 'topicstream
    # train ae|vae' (encoders.reducer); "": none
    reducer: str = ""
    device: str = "auto"
    encode_batch_size: int = 256  # most rows per forward pass of a transformer
    encode_max_tokens: int | None = None  # most padded tokens per forward pass; None: 16,384 on CUDA, 4,096 on a CPU
    encoder_precision: str = "auto"  # auto | fp32 | bf16 | fp16 (CUDA); auto: fp16 on CUDA, bf16 on a CPU that has it
    encoder_compile: bool = False  # torch.compile the transformer (CUDA)
    encode_ahead: bool = True  # encode the next batch while this one is clustered and committed
    # worker's torch encoder in child processes (own GIL): -1 auto (one 1-thread process per
    # CPU core, or one process on CUDA), 0 in the worker itself, N: N processes
    encoder_processes: int = -1
    clusterer: str = "kmeans"  # kmeans | denstream | river:NAME (e.g. river:DBSTREAM)
    clusterer_params: str = ""  # NAME=VALUE,... passed to the clusterer's constructor
    threshold: float | None = None  # None: the encoder's default_threshold
    merge_threshold: float | None = None  # None: the encoder's default_merge_threshold
    max_clusters: int = 1000
    k: int | None = None  # fixed number of clusters (Spark's streaming k-means); None: threshold
    half_life: float | None = 5000.0  # in documents; None: no decay, nothing fades
    min_weight: float = 0.05  # decayed weight below which a cluster fades
    maintain_every: int = 1000  # documents between maintenance passes (merge, fade)
    state_key: str | None = None  # HMAC key that signs a river model's pickled state
    # topics: keywords, exemplars, emerging topics (stream.topics)
    keyword_capacity: int = 32  # terms kept per cluster
    vocabulary_capacity: int = 4096  # terms kept over all clusters (the IDF side)
    n_keywords: int = 8
    n_exemplars: int = 5
    emerging_bucket_s: float = 300.0  # stream-time bucket of the emerging-topic detector
    emerging_alpha: float = 0.2  # weight of the newest bucket in a cluster's baseline
    emerging_min_count: int = 6  # documents in one bucket before a cluster can emerge
    emerging_z: float = 3.0  # score over the cluster's own baseline to emerge
    emerging_novelty: float = 0.5  # max cosine to an announced cluster's centroid (1: no test)
    max_macro_topics: int = 12  # most macro topics the clusters are grouped into (stream.macro)
    board_topics: int = 50  # topics the live board (/ and /api/topics) shows by default
    # drift (stream.drift)
    drift_window: int = 1000  # documents per drift window
    drift_threshold: float = 0.5  # Jensen-Shannon divergence (bits) that raises a drift event
    # operations
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464  # 0: no HTTP server
    log_interval_s: float = 10.0
    log_format: str = "text"  # text | json (one JSON object per line: stream.logs)
    exit_when_idle: float | None = None

    def validate(self) -> Config:
        checks: list[tuple[bool, str]] = [
            (self.batch_size >= 1, f"batch_size={self.batch_size} should be >= 1"),
            (self.max_wait_ms >= 0, f"max_wait_ms={self.max_wait_ms} should be >= 0"),
            (self.encode_batch_size >= 1, f"encode_batch_size={self.encode_batch_size} should be >= 1"),
            (self.encode_max_tokens is None or self.encode_max_tokens >= 1,
             f"encode_max_tokens={self.encode_max_tokens} should be >= 1"),
            (self.encoder_processes >= -1,
             f"encoder_processes={self.encoder_processes} should be >= -1 (-1: auto, 0: none)"),
            (self.encoder_precision in ("auto", "fp32", "bf16", "fp16"),
             f"encoder_precision={self.encoder_precision!r} should be 'auto', 'fp32', 'bf16' or 'fp16'"),
            (self.threshold is None or -1.0 <= self.threshold <= 1.0,
             f"threshold={self.threshold} should be within [-1, 1]"),
            (self.max_clusters >= 1, f"max_clusters={self.max_clusters} should be >= 1"),
            (self.half_life is None or self.half_life > 0, f"half_life={self.half_life} should be > 0"),
            (self.max_chars >= 1, f"max_chars={self.max_chars} should be >= 1"),
            (self.max_record_bytes >= 1, f"max_record_bytes={self.max_record_bytes} should be >= 1"),
            (0 <= self.metrics_port <= 65535, f"metrics_port={self.metrics_port} should be within [0, 65535]"),
            (self.session_timeout_ms >= 1000, f"session_timeout_ms={self.session_timeout_ms} should be >= 1000"),
            (self.kafka_assignment_strategy in ASSIGNORS,
             f"kafka_assignment_strategy={self.kafka_assignment_strategy!r} should be one of "
             + ", ".join(ASSIGNORS)),
            (self.auto_offset_reset in ("earliest", "latest"),
             f"auto_offset_reset={self.auto_offset_reset!r} should be 'earliest' or 'latest'"),
            (self.clusterer in ("kmeans", "denstream") or self.clusterer.startswith("river:"),
             f"clusterer={self.clusterer!r} should be 'kmeans', 'denstream' or 'river:NAME'"),
            (self.merge_threshold is None or -1.0 <= self.merge_threshold <= 1.0,
             f"merge_threshold={self.merge_threshold} should be within [-1, 1]"),
            (self.k is None or self.k >= 1, f"k={self.k} should be >= 1"),
            (self.min_weight >= 0, f"min_weight={self.min_weight} should be >= 0"),
            (self.maintain_every >= 1, f"maintain_every={self.maintain_every} should be >= 1"),
            (self.encoder.split(":")[0] in ("hybrid", "hashing", "transformer", "distilled"),
             f"encoder={self.encoder!r} should be 'hybrid[:PATH]', 'transformer[:PATH]', "
             "'hashing[:DIM]' or 'distilled:PATH'"),
            (not self.reducer or (self.reducer.partition(":")[0] in ("ae", "vae")
                                  and bool(self.reducer.partition(":")[2])),
             f"reducer={self.reducer!r} should be KIND:PATH with KIND 'ae' or 'vae', or empty"),
            (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             f"device={self.device!r} should be 'auto', 'cpu' or 'cuda[:N]'"),
            (bool(self.model) and "{" not in self.model and "}" not in self.model,
             f"model={self.model!r} should be a non-empty name without braces"),
            (self.refresh_interval_s > 0, f"refresh_interval_s={self.refresh_interval_s} should be > 0"),
            (self.exit_when_idle is None or self.exit_when_idle > 0,
             f"exit_when_idle={self.exit_when_idle} should be > 0"),
            (self.max_macro_topics >= 1,
             f"max_macro_topics={self.max_macro_topics} should be >= 1"),
            (self.board_topics >= 1, f"board_topics={self.board_topics} should be >= 1"),
            (self.drift_window >= 2, f"drift_window={self.drift_window} should be >= 2"),
            (self.log_format in ("text", "json"),
             f"log_format={self.log_format!r} should be 'text' or 'json'"),
            (0.0 < self.drift_threshold <= 1.0,
             f"drift_threshold={self.drift_threshold} should be > 0 and <= 1 (bits)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            self.topic_params()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"redis_url={self.redis_url!r} should start with redis://, rediss:// or unix://")
        return self

    def topic_params(self) -> TopicParams:
        return TopicParams(
            keyword_capacity=self.keyword_capacity, vocabulary_capacity=self.vocabulary_capacity,
            n_keywords=self.n_keywords, n_exemplars=self.n_exemplars, half_life=self.half_life,
            bucket_s=self.emerging_bucket_s, alpha=self.emerging_alpha,
            min_count=self.emerging_min_count, z_threshold=self.emerging_z,
            novelty=self.emerging_novelty)

    def redacted(self) -> dict[str, Any]:
        """The configuration as a dict fit for a log line (secrets and URL passwords hidden)."""
        from stream.state.redis_store import redact

        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out[name]:
                out[name] = "***"
        if out["redis_url"]:
            out["redis_url"] = redact(out["redis_url"])
        return out

    def kafka_client_config(self) -> dict[str, Any]:
        """Settings shared by the consumer, the producer and the admin client."""
        cfg: dict[str, Any] = {"bootstrap_servers": self.brokers.split(","),
                               "security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            cfg.update(sasl_mechanism=self.kafka_sasl_mechanism,
                       sasl_plain_username=self.kafka_sasl_username,
                       sasl_plain_password=self.kafka_sasl_password)
        for name in ("cafile", "certfile", "keyfile"):
            value = getattr(self, "kafka_ssl_" + name)
            if value:
                cfg["ssl_" + name] = value
        return cfg

    def kafka_assignors(self) -> list[Any]:
        """The consumer's ``partition_assignment_strategy``."""
        from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
        from kafka.coordinator.assignors.range import RangePartitionAssignor
        from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

        return [{"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor,
                 "cooperative-sticky": CooperativeStickyAssignor}[self.kafka_assignment_strategy]]


_TYPES = get_type_hints(Config)


def _coerce(name: str, value: Any) -> Any:
    """Turn a file, environment or flag value into the field's type, or say what is wrong."""
    hint = _TYPES[name]
    optional = type(None) in get_args(hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none", "null")):
        if optional:
            return None
        raise ConfigError(f"{name} cannot be empty")
    args = [a for a in get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[
                str(value).lower()]
        if base is int and isinstance(value, bool):
            raise ValueError
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return base(value)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{name}={value!r} should be of type {base.__name__}") from exc


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} should hold a table of settings")
    return data


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults < file < environment < ``overrides`` (flags); then validated."""
    env = os.environ if env is None else env
    names = {f.name for f in fields(Config)}
    values: dict[str, Any] = {}
    if path:
        for key, value in _read_file(Path(path)).items():
            key = key.replace("-", "_")
            if key not in names:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[key] = _coerce(key, value)
    for name in names:
        if ENV_PREFIX + name.upper() in env:
            values[name] = _coerce(name, env[ENV_PREFIX + name.upper()])
    for name in SECRET_FIELDS:  # secrets may come from files (Kubernetes Secret volumes)
        file_var = ENV_PREFIX + name.upper() + "_FILE"
        if file_var in env:
            try:
                values[name] = Path(env[file_var]).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{file_var}={env[file_var]}: {exc.strerror}") from exc
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value)
    return Config(**values).validate()
