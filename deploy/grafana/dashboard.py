"""The topicstream Grafana dashboard, as code.

``python deploy/grafana/dashboard.py`` writes ``topicstream.json`` beside this file (the JSON
model Grafana provisions, see ``provisioning/``); ``--check`` exits 1 when the committed file
differs from what this code builds. Plain Python, standard library only: the JSON model is
written out field by field so that what Grafana loads is exactly what is reviewed here.

Queries use the recording rules of ``deploy/prometheus/rules.yml`` (``topicstream:...``)
where there is one, the worker's own metrics (``stream/metrics.py``) otherwise. Template
variables: the Prometheus data source, ``job``, ``instance`` (one worker) and ``stage``. The
metrics carry no model label (one deployment serves one model), so there is no model
variable: run one job per model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

UID = "topicstream"
TITLE = "topicstream"
OUT = Path(__file__).resolve().with_name("topicstream.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
# the selector every per-worker query carries
SEL = 'job=~"$job", instance=~"$instance"'
JOB = 'job=~"$job"'


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend,
            "range": True, "refId": ref, **extra}


def targets(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    """``(expr, legend)`` pairs as targets A, B, C, ..."""
    return [target(e, lg, chr(ord("A") + i)) for i, (e, lg) in enumerate(pairs)]


class Layout:
    """Places panels left to right on Grafana's 24-column grid, rows below each other."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "id": self._id(), "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x, self.row_h = 0, 0

    def add(self, panel: dict[str, Any], w: int = 8, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel = {"id": self._id(), **panel, "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def timeseries(title: str, description: str, tgts: list[dict[str, Any]], unit: str = "short",
               *, minimum: float | None = 0, maximum: float | None = None,
               threshold: float | None = None, bars: bool = False) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "custom": {"drawStyle": "bars" if bars else "line", "lineWidth": 1,
                   "fillOpacity": 60 if bars else 10, "showPoints": "never",
                   "spanNulls": False,
                   "thresholdsStyle": {"mode": "line" if threshold is not None else "off"}},
        "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
    }
    if threshold is not None:
        defaults["thresholds"]["steps"].append({"color": "red", "value": threshold})
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return {"type": "timeseries", "title": title, "description": description, "datasource": DS,
            "targets": tgts, "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom",
                                   "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title: str, description: str, tgts: list[dict[str, Any]], unit: str = "short",
         threshold: float | None = None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if threshold is not None:
        steps.append({"color": "red", "value": threshold})
    return {"type": "stat", "title": title, "description": description, "datasource": DS,
            "targets": tgts,
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute",
                                                                      "steps": steps}},
                            "overrides": []},
            "options": {"colorMode": "value", "graphMode": "area", "justifyMode": "auto",
                        "orientation": "auto", "textMode": "auto",
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}}


def heatmap(title: str, description: str, expr: str, repeat: str | None = None) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "type": "heatmap", "title": title, "description": description, "datasource": DS,
        "targets": [target(expr, "{{le}}", format="heatmap")],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"calculate": False, "cellGap": 1, "color": {"mode": "scheme",
                                                                "scheme": "Spectral",
                                                                "steps": 64},
                    "yAxis": {"axisPlacement": "left", "unit": "s"},
                    "rowsFrame": {"layout": "auto"}, "tooltip": {"show": True,
                                                                "yHistogram": True},
                    "legend": {"show": True}},
    }
    if repeat:
        panel.update(repeat=repeat, repeatDirection="h", maxPerRow=4)
    return panel


def table(title: str, description: str, expr: str) -> dict[str, Any]:
    return {"type": "table", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, "", format="table", instant=True, range=False)],
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {"showHeader": True, "cellHeight": "sm"},
            "transformations": [{"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value": True, "__name__": True},
                "indexByName": {"instance": 0, "encoder": 1, "device": 2, "job": 3}}}]}


def query_variable(name: str, label: str, query: str, *, multi: bool = True) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "sort": 1, "multi": multi, "includeAll": multi,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {},
            "hide": 0, "options": [], "regex": ""}


def variables() -> list[dict[str, Any]]:
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0, "includeAll": False, "multi": False,
         "options": [], "refresh": 1, "regex": ""},
        query_variable("job", "Job", "label_values(topicstream_documents_in_total, job)"),
        query_variable("instance", "Worker",
                       'label_values(topicstream_documents_in_total{job=~"$job"}, instance)'),
        query_variable(
            "stage", "Stage",
            'label_values(topicstream_stage_duration_seconds_count{job=~"$job"}, stage)'),
    ]


def panels() -> list[dict[str, Any]]:
    g = Layout()

    g.row("Overview")
    g.add(timeseries(
        "Documents per second", "Records consumed (valid or not) and documents assigned and "
        "published, over the selected workers.",
        targets((f"sum(topicstream:documents_in:rate1m{{{SEL}}})", "in"),
                (f"sum(topicstream:documents_out:rate1m{{{SEL}}})", "out (assigned)")),
        "ops"))
    g.add(timeseries(
        "Consumer lag (records)", "Records between the group's positions and the high-water "
        "marks, per input topic (whole group: not filtered by worker).",
        targets((f"sum by (topic) (topicstream:consumer_lag:sum{{{JOB}}})", "{{topic}}"))))
    g.add(timeseries(
        "DLQ records per second by reason", "Input records sent to the dead-letter topic, by "
        "machine-readable reason.",
        targets((f"sum by (reason) (topicstream:dlq_records:rate1m{{{SEL}}})", "{{reason}}")),
        "ops"))
    g.add(stat("Workers up", "Worker targets Prometheus scrapes successfully.",
               targets((f"sum(up{{{JOB}}})", "up"))), w=4, h=6)
    g.add(stat("Workers down", "Worker targets Prometheus cannot scrape.",
               targets((f"count(up{{{JOB}}} == 0) or vector(0)", "down")), threshold=1),
          w=4, h=6)
    g.add(timeseries(
        "Assigned partitions per worker", "Input partitions each worker owns; workers beyond "
        "the partition count own none (standbys).",
        targets((f"sum by (instance) (topicstream_assigned_partitions{{{SEL}}})",
                 "{{instance}}"))), h=6)
    g.add(timeseries(
        "Lag by partition", "Consumer lag per input partition, as each worker reports it.",
        targets((f"sum by (topic, partition) (topicstream_consumer_lag_records{{{SEL}}})",
                 "{{topic}}[{{partition}}]"))), h=6)

    g.row("Pipeline latency")
    g.add(timeseries(
        "Stage latency p50", "Median time per batch in each stage (whole job).",
        targets((f'topicstream:stage_duration_seconds:p50_1m{{{JOB}, stage=~"$stage"}}',
                 "{{stage}}")), "s"), w=12)
    g.add(timeseries(
        "Stage latency p99", "99th percentile of the time per batch in each stage (whole job).",
        targets((f'topicstream:stage_duration_seconds:p99_1m{{{JOB}, stage=~"$stage"}}',
                 "{{stage}}")), "s"), w=12)
    g.add(heatmap(
        "Latency heatmap: $stage", "Distribution of the time per batch of this stage "
        "(topicstream_stage_duration_seconds), selected workers.",
        f'sum by (le) (topicstream:stage_duration_seconds_bucket:rate1m{{{SEL}, stage=~"$stage"}})',
        repeat="stage"), w=6)
    g.add(timeseries(
        "Batches per second and size", "Micro-batches committed per second and their mean "
        "size in records.",
        targets((f"sum(topicstream:batches:rate1m{{{SEL}}})", "batches/s"),
                (f"avg(topicstream:batch_size_records:avg1m{{{SEL}}})", "records per batch"))),
        w=24, h=7)

    g.row("Clustering")
    g.add(timeseries(
        "Active clusters", "Clusters in each worker's replica of the shared model.",
        targets((f"max by (instance) (topicstream_active_clusters{{{SEL}}})", "{{instance}}"))))
    g.add(timeseries(
        "Clusters created, merged, faded per second", "New clusters, clusters folded into "
        "an older one by maintenance, clusters whose decayed weight faded.",
        targets((f"sum(topicstream:clusters_created:rate1m{{{SEL}}})", "created"),
                (f"sum(topicstream:clusters_merged:rate1m{{{SEL}}})", "merged"),
                (f"sum(topicstream:clusters_faded:rate1m{{{SEL}}})", "faded")), "ops"))
    g.add(timeseries(
        "Outlier and new-cluster ratio", "Shares of the last drift window's documents flagged "
        "as outliers and that opened a cluster.",
        targets((f"topicstream_drift_outlier_ratio{{{SEL}}}", "outliers {{instance}}"),
                (f"topicstream_drift_new_cluster_ratio{{{SEL}}}", "new cluster {{instance}}")),
        "percentunit", maximum=1))
    g.add(timeseries(
        "Similarity to the assigned centroid", "Cosine of each document to its centroid: "
        "median and 10th percentile over the job, and each worker's last-window mean.",
        targets((f"topicstream:assignment_similarity:p50_1m{{{JOB}}}", "p50"),
                (f"topicstream:assignment_similarity:p10_1m{{{JOB}}}", "p10"),
                (f"topicstream_drift_similarity_mean{{{SEL}}}", "window mean {{instance}}")),
        maximum=1), w=16)
    g.add(stat("Model version", "Commits applied to the shared model (highest replica).",
               targets((f"max(topicstream_model_version{{{SEL}}})", "version"))))

    g.row("Drift")
    g.add(timeseries(
        "Cluster-share divergence", "Jensen-Shannon divergence (bits, 0 to 1) between the "
        "cluster shares of the last two drift windows; the red line is the default "
        "drift_threshold (0.5).",
        targets((f"topicstream_drift_cluster_share_js_divergence{{{SEL}}}", "{{instance}}")),
        maximum=1, threshold=0.5), w=12)
    g.add(timeseries(
        "Centroid movement", "Weighted mean cosine distance the centroids moved over the last "
        "drift window.",
        targets((f"topicstream_drift_centroid_movement{{{SEL}}}", "{{instance}}"))), w=12)
    g.add(timeseries(
        "Embedding-mean shift", "Cosine distance between the mean embeddings of the last two "
        "drift windows.",
        targets((f"topicstream_drift_embedding_mean_shift{{{SEL}}}", "{{instance}}"))))
    g.add(timeseries(
        "Windowed NMI", "NMI of the last window's assignments against the documents' labels "
        "(only for streams whose every document carries a label).",
        targets((f"topicstream_drift_window_nmi{{{SEL}}}", "{{instance}}")), maximum=1))
    g.add(timeseries(
        "Drift windows and drift events", "Windows closed and windows whose divergence crossed "
        "drift_threshold (each publishes a drift event), per interval.",
        targets((f"sum(increase(topicstream_drift_windows_total{{{SEL}}}[$__rate_interval]))",
                 "windows"),
                (f"sum(increase(topicstream_drift_events_total{{{SEL}}}[$__rate_interval]))",
                 "drift events")), bars=True))

    g.row("Emerging topics")
    g.add(timeseries(
        "Emerging topics announced", "Clusters announced as emerging topics, per interval "
        "(details in the emerging_topic events).",
        targets((f"sum(increase(topicstream_emerging_topics_total{{{SEL}}}[$__rate_interval]))",
                 "emerging topics")), bars=True), w=16)
    g.add(stat("Emerging topics, last hour", "Emerging topics announced in the last hour.",
               targets((f"sum(increase(topicstream_emerging_topics_total{{{SEL}}}[1h]))",
                        "last hour"))))

    g.row("State store")
    g.add(timeseries(
        "Commit latency", "Per-batch atomic commit to Redis (delta, topic delta, offsets): "
        "p50 and p99 over the job.",
        targets((f'topicstream:stage_duration_seconds:p50_1m{{{JOB}, stage="commit"}}', "p50"),
                (f'topicstream:stage_duration_seconds:p99_1m{{{JOB}, stage="commit"}}', "p99")),
        "s", threshold=0.5))
    g.add(timeseries(
        "Fenced (refused) commits", "Batch commits refused by the offset compare-and-set: "
        "a worker that lost its partitions (zombie) tried to commit.",
        targets((f"sum by (instance) (increase(topicstream_commits_rejected_total{{{SEL}}}"
                 "[$__rate_interval]))", "{{instance}}")), bars=True))
    g.add(timeseries(
        "Store and sink errors", "Failed attempts to reach Redis; batches dropped because the "
        "broker did not acknowledge their output.",
        targets((f"sum(increase(topicstream_store_errors_total{{{SEL}}}[$__rate_interval]))",
                 "store errors"),
                (f"sum(increase(topicstream_sink_errors_total{{{SEL}}}[$__rate_interval]))",
                 "sink errors")), bars=True))
    g.add(timeseries(
        "Maintenance lease", "1 on the worker holding the model's maintenance lease (merges, "
        "fades, prunes).",
        targets((f"max by (instance) (topicstream_maintenance_lease_held{{{SEL}}})",
                 "{{instance}}")), maximum=1), w=24, h=6)

    g.row("Encoder")
    g.add(timeseries(
        "Records per batch", "Mean micro-batch size per worker (batch_size is the bound).",
        targets((f"topicstream:batch_size_records:avg1m{{{SEL}}}", "{{instance}}"))))
    g.add(timeseries(
        "Tokens encoded per second", "Model tokens (transformer) or terms (hashing encoder) "
        "per second, per worker.",
        targets((f"sum by (instance) (topicstream:encoder_tokens:rate1m{{{SEL}}})",
                 "{{instance}}")), "ops"))
    g.add(table("Encoder and device", "The encoder each worker runs and where (cpu, cuda).",
                f"max by (job, instance, encoder, device) (topicstream_encoder_info{{{SEL}}})"))
    return g.panels


def build() -> dict[str, Any]:
    """The dashboard's JSON model."""
    return {
        "uid": UID,
        "title": TITLE,
        "description": "topicstream: throughput, lag, DLQ, per-stage latency, clustering, drift, "
                       "emerging topics, state store and encoder (generated by "
                       "deploy/grafana/dashboard.py; edit that, not this file)",
        "tags": ["topicstream", "kafka", "clustering"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": variables()},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 if {OUT.name} differs from what this code builds")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
