"""The worker loop: source -> batcher -> encoder -> clusterer -> sink -> state, and metrics.

Commit order, for every micro-batch
-----------------------------------
1. **Poll** a micro-batch (at most ``batch_size`` records, at most ``max_wait_ms``).
2. **Decode** each record; bad ones become DLQ records (their offsets still advance).
3. **Encode** the valid texts and **cluster** them on the local replica of the model,
   which yields the assignments and the batch *delta*; then the **topics** of the replica
   learn the batch (keywords, exemplars, emerging-topic counters: the *topic delta*) and
   the drift monitor takes it in.
4. **Publish** assignments (with their cluster's keywords), topic events
   (``cluster_created``; ``emerging_topic`` for a cluster that crossed the detector's
   threshold in this batch; ``clusters_merged`` / ``cluster_faded`` when the batch ran
   maintenance; ``drift`` when a drift window closed above the threshold) and DLQ
   records, then **flush** the producer: nothing goes further until the broker
   acknowledged all of them.
5. **Commit** to the state store, atomically: the delta, the topic delta and, for each
   partition in the batch, the move from the offset stored when the batch began to last
   offset + 1, guarded by a compare-and-set on the former.
6. Mirror the new offsets into Kafka's group offsets (best effort, for lag tools only).

Encoding ahead (``encode_ahead``, on by default): while the worker runs steps 3 (cluster
onwards) to 6 of batch n, batch n+1 has already been polled and decoded and is being encoded
on a background thread, so the encoder, usually the slowest stage, never waits for the
broker or the store. An encoder that serves several calls side by side (``concurrent_calls``:
the encoder processes of :mod:`encoders.process`, one per CPU core, each taking a whole
batch) gets that many batches in flight: n+1 ... n+k are encoding while n is processed. Only
the pure encoding runs early: clustering, publishing and committing stay strictly in batch
order, on the worker's thread. When batch n is dropped (a refused commit, an unavailable
store or broker), the batches polled after it are dropped with it, since the partitions were
sought back to the stored offsets; they are read again. The price is latency at low rates: a
batch waits for the next polls (at most ``max_wait_ms`` each) before it is committed.

What follows from it:

- A worker killed before 5 committed nothing: its partitions are re-read from the stored
  offsets by whoever owns them next, so no input is lost and the state counts each document
  once. Whatever it published in 4 is published again: output is at-least-once, keyed by
  document id, so consumers can de-duplicate.
- An ``emerging_topic`` event is decided on the replica and marked in the topic delta, so
  the cluster is announced once; it is published before the commit, so a worker killed in
  between announces it again after the re-read (at-least-once, like every output).
- A commit refused in 5 (another worker moved one of the partitions: this worker is a
  zombie back from a pause) drops the batch: the local replica is reloaded from the store
  and the partitions are sought back to their stored offsets. The refusal is counted in
  ``topicstream_commits_rejected_total``.
- On start and on every assignment, partitions are sought to the stored offsets (the store
  owns offsets, not Kafka).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from encoders import Encoder
from stream.batcher import InputRules, MicroBatcher, RecordSource, decode_batch, next_offsets
from stream.clustering.base import BatchResult, Clusterer, ClusterState, Delta, sum_rows_by
from stream.contracts import (
    BadRecord,
    Document,
    Record,
    TopicPartition,
    assignment_message,
    dlq_message,
    event_message,
)
from stream.drift import Centroids, DriftMonitor, DriftWindow
from stream.metrics import Metrics
from stream.sink import SinkUnavailable
from stream.state import NO_OFFSET, CommitRejected, OffsetMove, StateStore, StoreUnavailable
from stream.state.lease import Lease
from stream.topics import Emergence, TopicDelta, TopicTracker

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    batches: int = 0
    docs: int = 0
    bad: int = 0
    rejected: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class Prepared:
    """A polled batch, decoded, its valid texts encoding (or encoded)."""

    records: list[Record]
    docs: list[Document]
    bad: list[BadRecord]
    decode_s: float
    encoded: Future[tuple[np.ndarray, int, float]] | None  # (X, tokens, seconds)


class Worker:
    """Runs the pipeline until stopped (or idle for ``exit_when_idle`` seconds).

    The source is any :class:`~stream.batcher.RecordSource`; when it is a Kafka source,
    build it with :meth:`on_assign`, :meth:`on_revoke` and ``store.load_offsets`` as hooks
    (see :func:`stream.app.build_worker`).
    """

    def __init__(
        self,
        *,
        source: RecordSource,
        encoder: Encoder,
        clusterer: Clusterer,
        store: StateStore,
        sink: Any,
        rules: InputRules,
        model_name: str,
        batch_size: int = 256,
        max_wait_ms: int = 500,
        metrics: Metrics | None = None,
        refresh_interval_s: float = 5.0,
        log_interval_s: float = 10.0,
        exit_when_idle: float | None = None,
        on_committed: Callable[[dict[TopicPartition, int]], None] | None = None,
        on_assigned: Callable[[list[Document], BatchResult], None] | None = None,
        topics: TopicTracker | None = None,
        drift: DriftMonitor | None = None,
        lease: Lease | None = None,
        encode_ahead: bool = True,
    ) -> None:
        self.source = source
        self.encoder = encoder
        self.clusterer = clusterer
        self.store = store
        self.sink = sink
        self.rules = rules
        self.model_name = model_name
        self.batcher = MicroBatcher(source, batch_size, max_wait_ms)
        self.metrics = metrics or Metrics()
        self.metrics.encoder_info.labels(encoder.name, encoder.device).set(1)
        self.refresh_interval_s = refresh_interval_s
        self.log_interval_s = log_interval_s
        self.exit_when_idle = exit_when_idle
        self.on_committed = on_committed
        self.on_assigned = on_assigned  # called with each committed batch's documents and result
        self.topics = topics or TopicTracker()
        self.drift = drift or DriftMonitor()
        self.stop_event = threading.Event()
        self.stats = WorkerStats()
        self.expected: dict[TopicPartition, int] = {}  # offsets as stored, per owned partition
        self.synced_version = 0
        self.stale = False
        self.last_refresh = time.monotonic()
        self.heartbeat = time.monotonic()
        self.ready = False
        self.clusterer.set_id_allocator(store.allocate_ids)
        self.lease = lease or Lease(store)
        self.lease.on_change = lambda held: self.metrics.lease_held.set(int(held))
        self.clusterer.set_maintenance_gate(self.lease)
        self.encode_ahead = encode_ahead
        # batches polled before the oldest is processed: one per encode call the encoder
        # serves side by side (several for encoder processes that each take a whole batch)
        self.ahead = max(1, int(getattr(encoder, "concurrent_calls", 1))) if encode_ahead else 0
        self._encoding = ThreadPoolExecutor(max(1, self.ahead), thread_name_prefix="encode")

    # -- hooks for the Kafka source ------------------------------------------------------
    def on_assign(self, stored: dict[TopicPartition, int | None]) -> None:
        for tp, off in stored.items():
            self.expected[tp] = NO_OFFSET if off is None else off
        self.metrics.assigned_partitions.set(len(self.expected))

    def on_revoke(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.expected.pop(tp, None)
        self.metrics.lag.clear()  # set again for the partitions still owned at the next log line
        self.metrics.assigned_partitions.set(len(self.expected))

    # -- state -----------------------------------------------------------------------------
    def load_model(self) -> None:
        """Replace the local replica with the stored model."""
        state = self.store.load_state()
        self.clusterer.restore(state or ClusterState.empty(self.encoder.dim))
        self.topics.restore(self.store.load_topics(), state.n_docs if state else 0)
        self.synced_version = state.version if state else 0
        self.stale = False
        self.last_refresh = time.monotonic()
        self.metrics.clusters.set(self.clusterer.n_clusters)
        self.metrics.model_version.set(self.synced_version)

    def _resync(self) -> None:
        """After a refused commit: reload the model and go back to the stored offsets."""
        self.load_model()
        assignment = getattr(self.source, "assignment", None)
        owned = list(dict.fromkeys([*self.expected, *(assignment() if assignment else ())]))
        stored = self.store.load_offsets(owned)
        positions: dict[TopicPartition, int | None] = {tp: stored.get(tp) for tp in owned}
        for tp, off in positions.items():
            self.expected[tp] = NO_OFFSET if off is None else off
        seek = getattr(self.source, "seek", None)
        if seek is not None:
            seek(positions)

    # -- one batch -------------------------------------------------------------------------
    def prepare(self, records: list[Record]) -> Prepared:
        """Step 2 and the start of step 3: decode the batch and start encoding its valid
        texts on the encoding thread (in submission order)."""
        t0 = time.perf_counter()
        docs, bad = decode_batch(records, self.rules)
        decode_s = time.perf_counter() - t0
        encoded = self._encoding.submit(self._encode, [d.text for d in docs]) if docs else None
        return Prepared(records, docs, bad, decode_s, encoded)

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, int, float]:
        t0 = time.perf_counter()
        counted = getattr(self.encoder, "encode_counted", None)
        if counted is not None:  # calls side by side: each counts its own tokens
            X, tokens = counted(texts)
            return X, tokens, time.perf_counter() - t0
        before = self.encoder.tokens_seen
        X = self.encoder.encode(texts)
        return X, self.encoder.tokens_seen - before, time.perf_counter() - t0

    def process(self, batch: list[Record] | Prepared) -> bool:
        """Run one batch through steps 2-6 of the commit order; False when it was dropped.

        A batch is never half-applied: when the store (ids, commit) or the broker (publish,
        flush) fails on the way, nothing of it was committed, so it is dropped: the replica
        is reloaded and the partitions are sought back to the stored offsets, and the batch
        is read again once the server is back (its output is then sent again).
        """
        prep = batch if isinstance(batch, Prepared) else self.prepare(batch)
        records = prep.records
        try:
            return self._process(prep)
        except StoreUnavailable as exc:
            self.metrics.store_errors.inc()
            log.warning("state store unavailable (%s): dropping the batch of %d records (%s); "
                        "it will be re-read from the stored offsets", exc, len(records),
                        _span(records))
            self._recover()
            return False
        except SinkUnavailable as exc:
            self.metrics.sink_errors.inc()
            log.warning("publishing failed (%s): dropping the batch of %d records (%s); it "
                        "will be re-read from the stored offsets", exc, len(records),
                        _span(records))
            self._recover()
            return False

    def _process(self, prep: Prepared) -> bool:
        m = self.metrics
        records, docs, bad = prep.records, prep.docs, prep.bad
        moves = [OffsetMove(tp, self.expected.get(tp, NO_OFFSET), new)
                 for tp, new in next_offsets(records).items()]
        result: BatchResult | None = None
        topic_delta: TopicDelta | None = None
        emerged: list[Emergence] = []
        windows: list[DriftWindow] = []
        encode_s = 0.0
        if prep.encoded is not None:
            X, tokens, encode_s = prep.encoded.result()
            m.encoder_tokens.inc(tokens)
            t2 = time.perf_counter()
            result = self.clusterer.learn_predict(X)
            t3 = time.perf_counter()
            topic_delta, emerged = self.topics.learn(
                [d.tokens for d in docs], [d.id for d in docs], [d.text for d in docs],
                np.fromiter((d.ts for d in docs), np.float64, len(docs)), result.cluster_ids,
                result.similarity, merged=result.merged, faded=result.faded,
                centroids=lambda: self._centroids()[:2])
            windows = self.drift.observe(X, result.cluster_ids, result.similarity,
                                         result.is_outlier, result.is_new_cluster,
                                         [d.label for d in docs], self._centroids)
        else:
            t2 = t3 = time.perf_counter()
        t35 = time.perf_counter()
        self._publish(docs, bad, result, emerged, windows)
        t4 = time.perf_counter()
        delta = result.delta if result is not None else Delta.empty(self.encoder.dim)
        try:
            committed = self.store.commit(delta, moves, topic_delta)
        except CommitRejected as exc:
            m.commits_rejected.inc()
            self.stats.rejected += 1
            log.warning("commit refused (%s): dropping the batch of %d records, reloading the "
                        "model and seeking back to the stored offsets", exc, len(records))
            self._resync()
            return False
        t5 = time.perf_counter()
        for mv in moves:
            self.expected[mv.tp] = mv.new
        if committed.version != self.synced_version + 1:
            self.stale = True  # another worker committed in between
        self.synced_version = committed.version
        if self.on_committed is not None:
            self.on_committed({mv.tp: mv.new for mv in moves})
        if self.on_assigned is not None and result is not None:
            self.on_assigned(docs, result)
        # metrics
        for stage, seconds in (("decode", prep.decode_s), ("encode", encode_s), ("cluster", t3 - t2),
                               ("topics", t35 - t3), ("publish", t4 - t35), ("commit", t5 - t4)):
            m.stage_seconds.labels(stage).observe(seconds)
        m.docs_in.inc(len(records))
        m.docs_out.inc(len(docs))
        m.batches.inc()
        m.batch_size.observe(len(records))
        for b in bad:
            m.dlq.labels(b.error).inc()
        if result is not None:
            m.clusters_created.inc(len(result.delta.new_ids))
            m.clusters_merged.inc(len(result.merged))
            m.clusters_faded.inc(len(result.faded))
            for v in result.similarity.tolist():
                m.similarity.observe(v)
        m.emerging.inc(len(emerged))
        for w in windows:
            self._export_drift(w)
        m.clusters.set(self.clusterer.n_clusters)
        m.model_version.set(committed.version)
        self.stats.batches += 1
        self.stats.docs += len(docs)
        self.stats.bad += len(bad)
        return True

    def _centroids(self) -> Centroids:
        """Public cluster ids, their unit centroids and decayed weights (the rows carrying a
        label summed: one row for k-means, several micro-clusters for DenStream)."""
        state = self.clusterer.snapshot()
        labels, sums, _ = sum_rows_by(state.row_labels, state.sums)
        inv = np.searchsorted(labels, state.row_labels)
        weights = np.bincount(inv, state.weights_at(state.n_docs, self.clusterer.half_life),
                              labels.size)
        return labels, sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12), weights

    def _export_drift(self, w: DriftWindow) -> None:
        m = self.metrics
        m.drift_windows.inc()
        m.drift_similarity.set(w.similarity_mean)
        m.drift_outliers.set(w.outlier_ratio)
        m.drift_new.set(w.new_cluster_ratio)
        for gauge, value in ((m.drift_movement, w.centroid_movement),
                             (m.drift_divergence, w.divergence),
                             (m.drift_shift, w.embedding_shift), (m.drift_nmi, w.nmi)):
            if value is not None:
                gauge.set(value)
        if w.drifted:
            m.drift_events.inc()

    def _publish(self, docs: list[Document], bad: list[BadRecord], result: BatchResult | None,
                 emerged: list[Emergence], windows: list[DriftWindow]) -> None:
        now = time.time()
        if result is not None:
            version = self.synced_version + 1
            kw = self.topics.keywords(np.unique(result.cluster_ids).tolist())
            self.sink.send("assignments", [
                assignment_message(
                    d, cluster_id=int(c), similarity=float(s), is_new_cluster=bool(nw),
                    is_outlier=bool(o), keywords=kw.get(int(c), []), model=self.model_name,
                    model_version=version, processed_at=now)
                for d, c, s, nw, o in zip(docs, result.cluster_ids.tolist(), result.similarity.tolist(),
                                          result.is_new_cluster.tolist(), result.is_outlier.tolist(),
                                          strict=True)])
            founders = np.flatnonzero(result.is_new_cluster)
            events = [
                event_message("cluster_created", cluster_id=int(result.cluster_ids[i]), size=1.0,
                              keywords=kw.get(int(result.cluster_ids[i]), []),
                              exemplars=[docs[i].text], score=float(result.similarity[i]),
                              ts=docs[i].ts, founder_id=docs[i].id)
                for i in founders.tolist()]
            events += [self._emerging_event(e, docs, kw) for e in emerged]
            if len(result.merged) or len(result.faded):
                events += self._maintenance_events(result, max(d.ts for d in docs))
            events += [self._drift_event(w, max(d.ts for d in docs)) for w in windows if w.drifted]
            self.sink.send("events", events)
        if bad:
            for b in bad:
                log.info("bad record %s: %s (%s)", b.record.where(), b.error, b.detail[:120])
            self.sink.send("dlq", [dlq_message(b) for b in bad])
        self.sink.flush()

    def _emerging_event(self, e: Emergence, docs: list[Document],
                        kw: dict[int, list[str]]) -> tuple[bytes, bytes]:
        """``emerging_topic``: the cluster, its keywords and exemplars, the score and the
        count of the bucket that crossed, its baseline, and how long it has existed."""
        doc = docs[e.doc_index]
        return event_message("emerging_topic", cluster_id=e.cluster_id, size=float(e.size),
                             keywords=kw.get(e.cluster_id, []),
                             exemplars=self.topics.exemplars(e.cluster_id, 3), score=e.score,
                             ts=e.ts, bucket_count=e.bucket_count, baseline=e.baseline,
                             age_s=max(e.ts - e.born_ts, 0.0), trigger_id=doc.id,
                             source=doc.record.source())

    def _drift_event(self, w: DriftWindow, ts: float) -> tuple[bytes, bytes]:
        """``drift`` (key -1: it is about the whole stream, not one cluster)."""
        return event_message("drift", cluster_id=-1, size=float(w.docs), keywords=[],
                             exemplars=[], score=float(w.divergence or 0.0), ts=ts,
                             window=w.index, divergence=w.divergence,
                             similarity_mean=w.similarity_mean, outlier_ratio=w.outlier_ratio,
                             new_cluster_ratio=w.new_cluster_ratio,
                             centroid_movement=w.centroid_movement,
                             embedding_shift=w.embedding_shift, nmi=w.nmi)

    def _maintenance_events(self, result: BatchResult, ts: float) -> list[tuple[bytes, bytes]]:
        """``clusters_merged`` (key: the surviving id; ``merged_from``: the retired one, which
        now means the survivor) and ``cluster_faded`` events of one batch."""
        state = self.clusterer.snapshot()
        labels = state.row_labels
        weights = state.weights_at(state.n_docs, self.clusterer.half_life)
        kw = self.topics.keywords(result.merged[:, 1].tolist()) if len(result.merged) else {}
        out = []
        for src, dst in result.merged.tolist():
            size = float(weights[labels == dst].sum())
            out.append(event_message("clusters_merged", cluster_id=dst, size=size,
                                     keywords=kw.get(dst, []),
                                     exemplars=self.topics.exemplars(dst, 3), score=size, ts=ts,
                                     merged_from=[src]))
        for cid in result.faded.tolist():
            out.append(event_message("cluster_faded", cluster_id=cid, size=0.0, keywords=[],
                                     exemplars=[], score=0.0, ts=ts))
        return out

    def _recover(self) -> None:
        """After a dropped batch: wait for the store, then reload the model and seek back
        to the stored offsets. Readiness is off meanwhile."""
        self.ready = False
        self._until_store_answers(self._resync, "state store unavailable")

    def _until_store_answers(self, action: Callable[[], None], what: str) -> None:
        """Run ``action`` until the store lets it through, backing off from 0.2 s to 5 s
        between tries; then the worker is ready. Gives up only when asked to stop."""
        delay = 0.2
        while not self.stop_event.is_set():
            try:
                action()
                self.ready = True
                return
            except StoreUnavailable as exc:
                self.metrics.store_errors.inc()
                log.warning("%s (%s): retrying in %.1f s", what, exc, delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, 5.0)

    # -- the loop --------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> WorkerStats:
        """Process batches until :meth:`stop` (e.g. on SIGTERM) or idle; returns counters.

        On stop the batch in hand (with ``encode_ahead``, the one polled last) is finished and
        committed before returning.
        """
        self._until_store_answers(self.load_model, "cannot load the model")
        last_data = time.monotonic()
        last_log, logged_docs = time.monotonic(), 0
        exhausted = getattr(self.source, "exhausted", None)
        in_flight: deque[Prepared] = deque()  # polled, encoding, not yet processed
        while not self.stop_event.is_set():
            self.heartbeat = time.monotonic()
            tp0 = time.perf_counter()
            records = self.batcher.next_batch()
            self.metrics.stage_seconds.labels("poll").observe(time.perf_counter() - tp0)
            now = time.monotonic()
            if records:
                in_flight.append(self.prepare(records))
            # the oldest batch goes on once `ahead` newer ones are encoding; all when idle
            while len(in_flight) > (self.ahead if records else 0):
                self._process_oldest(in_flight)
            if records:
                last_data = now
            elif exhausted is not None and self.source.exhausted:  # type: ignore[attr-defined]
                break
            elif self.exit_when_idle is not None and now - last_data >= self.exit_when_idle:
                log.info("idle for %.1f s: exiting", now - last_data)
                break
            if self.stale and now - self.last_refresh >= self.refresh_interval_s:
                try:
                    self.load_model()
                except StoreUnavailable as exc:
                    self.metrics.store_errors.inc()
                    log.warning("refresh failed (%s): keeping the replica", exc)
                    self.last_refresh = now
            if now - last_log >= self.log_interval_s:
                self._log_progress(now - last_log, self.stats.docs - logged_docs)
                last_log, logged_docs = now, self.stats.docs
        while in_flight:  # stopped: finish the batches in hand
            self._process_oldest(in_flight)
        self._encoding.shutdown(wait=True)
        self.lease.release()
        return self.stats

    def _process_oldest(self, in_flight: deque[Prepared]) -> None:
        """Process the oldest batch in flight; when it is dropped, so are the batches polled
        after it (the partitions were sought back to the stored offsets: they are read again)."""
        if self.process(in_flight.popleft()) or not in_flight:
            return
        dropped = [r for p in in_flight for r in p.records]
        log.info("dropping the %d records polled after it (%s): they are read again",
                 len(dropped), _span(dropped))
        for p in in_flight:
            if p.encoded is not None:
                p.encoded.cancel()
        in_flight.clear()

    def _log_progress(self, seconds: float, docs: int) -> None:
        lag_total = 0
        lag_fn = getattr(self.source, "lag", None)
        if lag_fn is not None:
            for tp, lag in lag_fn().items():
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
                lag_total += lag
        log.info("%.0f docs/s over %.0f s; %d docs, %d to DLQ, %d refused batches in all; "
                 "%d clusters; lag %d", docs / max(seconds, 1e-9), seconds, self.stats.docs,
                 self.stats.bad, self.stats.rejected, self.clusterer.n_clusters, lag_total)


def _span(records: list[Record]) -> str:
    """``topic[partition]@first-last`` for each partition of a batch, for log lines."""
    spans: dict[TopicPartition, list[int]] = {}
    for r in records:
        lo_hi = spans.setdefault(TopicPartition(r.topic, r.partition), [r.offset, r.offset])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], r.offset), max(lo_hi[1], r.offset)
    return ", ".join(f"{tp.topic}[{tp.partition}]@{lo}-{hi}" for tp, (lo, hi) in spans.items())
