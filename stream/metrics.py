"""Every Prometheus metric of topicstream, by name, in one place.

Labels carry bounded values only (stage names, DLQ reasons, topic and partition of the
input); never a cluster or document id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
SIMILARITY_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
STAGES = ("poll", "decode", "encode", "topics", "cluster", "publish", "commit")


class Metrics:
    """The worker's metrics, registered in their own registry (one per worker object)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.docs_in = Counter("topicstream_documents_in_total",
                               "Input records consumed (valid or not).", registry=r)
        self.docs_out = Counter("topicstream_documents_out_total",
                                "Documents assigned to a cluster and published.", registry=r)
        self.dlq = Counter("topicstream_dlq_records_total",
                           "Input records sent to the dead-letter topic, by reason.",
                           ["reason"], registry=r)
        self.batches = Counter("topicstream_batches_total", "Batches committed.", registry=r)
        self.batch_size = Histogram("topicstream_batch_size_records",
                                    "Records per micro-batch.", buckets=BATCH_BUCKETS, registry=r)
        self.stage_seconds = Histogram("topicstream_stage_duration_seconds",
                                       "Time spent per batch in each stage of the pipeline.",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.clusters = Gauge("topicstream_active_clusters", "Clusters in the model.", registry=r)
        self.clusters_created = Counter("topicstream_clusters_created_total",
                                        "Clusters created.", registry=r)
        self.clusters_merged = Counter("topicstream_clusters_merged_total",
                                       "Clusters folded into an older one by maintenance.",
                                       registry=r)
        self.clusters_faded = Counter("topicstream_clusters_faded_total",
                                      "Clusters removed because their decayed weight faded.",
                                      registry=r)
        self.lag = Gauge("topicstream_consumer_lag_records",
                         "Records between the consumer position and the high-water mark.",
                         ["topic", "partition"], registry=r)
        self.commits_rejected = Counter(
            "topicstream_commits_rejected_total",
            "Batch commits refused by the offset compare-and-set (fenced stale workers).",
            registry=r)
        self.store_errors = Counter("topicstream_store_errors_total",
                                    "Failed attempts to reach the state store.", registry=r)
        self.sink_errors = Counter("topicstream_sink_errors_total",
                                   "Batches dropped because the broker did not acknowledge "
                                   "their output.", registry=r)
        self.lease_held = Gauge("topicstream_maintenance_lease_held",
                                "1 while this worker holds the model's maintenance lease.",
                                registry=r)
        self.model_version = Gauge("topicstream_model_version",
                                   "Commits applied to the shared model.", registry=r)
        self.assigned_partitions = Gauge("topicstream_assigned_partitions",
                                         "Input partitions this worker owns.", registry=r)
        # topics and drift (stream.topics, stream.drift); windows are counted in documents
        self.emerging = Counter("topicstream_emerging_topics_total",
                                "Clusters announced as emerging topics.", registry=r)
        self.similarity = Histogram("topicstream_assignment_similarity",
                                    "Cosine of each document to the centroid it was assigned to.",
                                    buckets=SIMILARITY_BUCKETS, registry=r)
        self.drift_similarity = Gauge("topicstream_drift_similarity_mean",
                                      "Mean similarity to the assigned centroid, last window.",
                                      registry=r)
        self.drift_outliers = Gauge("topicstream_drift_outlier_ratio",
                                    "Share of documents flagged as outliers, last window.",
                                    registry=r)
        self.drift_new = Gauge("topicstream_drift_new_cluster_ratio",
                               "Share of documents that opened a cluster, last window.",
                               registry=r)
        self.drift_movement = Gauge("topicstream_drift_centroid_movement",
                                    "Weighted mean cosine distance centroids moved, last window.",
                                    registry=r)
        self.drift_divergence = Gauge(
            "topicstream_drift_cluster_share_js_divergence",
            "Jensen-Shannon divergence (base 2, 0 to 1) between the cluster shares of the last "
            "two windows.",
            registry=r)
        self.drift_shift = Gauge("topicstream_drift_embedding_mean_shift",
                                 "Cosine distance between the mean embeddings of the last two "
                                 "windows.", registry=r)
        self.drift_nmi = Gauge("topicstream_drift_window_nmi",
                               "NMI of the last window's assignments against document labels "
                               "(only when every document carried one).", registry=r)
        self.drift_windows = Counter("topicstream_drift_windows_total",
                                     "Drift windows closed.", registry=r)
        self.drift_events = Counter("topicstream_drift_events_total",
                                    "Windows whose divergence crossed drift_threshold.", registry=r)
        # encoder (encoders/)
        self.encoder_tokens = Counter("topicstream_encoder_tokens_total",
                                      "Tokens encoded: model tokens for a transformer, terms for "
                                      "the hashing encoder.", registry=r)
        self.encoder_info = Gauge("topicstream_encoder_info",
                                  "1 for the encoder in use, labelled by its name and device.",
                                  ["encoder", "device"], registry=r)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
