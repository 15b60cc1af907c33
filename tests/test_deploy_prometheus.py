"""The dashboard and the rules against a real Prometheus scraping a real worker.

A private Prometheus (Debian's ``prometheus`` binary, a free port, storage in a temporary
directory, scrape and rule evaluation every second) loads ``deploy/prometheus/rules.yml`` and
the ``topicstream`` job of ``deploy/prometheus/prometheus.yml``, its service discovery
replaced by the one worker started here (``topicstream run``, hashing encoder, small drift
windows) on the conftest broker and a private redis-server. Labelled documents and one of each
kind of malformed record flow through it, so DLQ, drift and windowed-NMI series exist. Then
every template variable and panel query of ``deploy/grafana/topicstream.json`` and every
recording and alerting rule expression is sent to ``/api/v1/query`` and must work in the
sense of ``tests/deploy_checks.py`` (parse, return series, every selector alone returns
series; alerts through the quantity they compare). A dashboard with a misspelt metric, and a
rules file with one, must fail the same checks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_checks import Prometheus, check_dashboard, check_rules, misspell

from conftest import MALFORMED, REPO, create_topic, documents
from stream.services import Service, free_port, start_redis, wait_for_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="no prometheus binary (Debian: apt-get install prometheus; "
                              "`make system-deps`)"),
]
DASHBOARD = REPO / "deploy" / "grafana" / "topicstream.json"
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
JOB = "topicstream"
N_DOCS = 600
SETTLE_S = 45.0  # the most the checks are retried while the first scrapes and rules come in


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except OSError:
        return 0


def _wait(what: str, ok: Any, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ok():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{what} not ready after {timeout_s} s (exit {proc.poll()}):\n"
                         + log.read_text()[-3000:])


def prometheus_config(worker_port: int, workdir: Path) -> Path:
    """The shipped scrape job, pointed at the test's worker, scraped every second."""
    shipped = yaml.safe_load(SCRAPE_CONFIG.read_text())
    job = next(j for j in shipped["scrape_configs"] if j["job_name"] == JOB)
    job = {k: v for k, v in job.items() if not k.endswith("_sd_configs")}
    job["static_configs"] = [{"targets": [f"127.0.0.1:{worker_port}"]}]
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "rule_files": [str(RULES)], "scrape_configs": [job]}
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def produce(kafka: Service, topic: str, docs: list[dict[str, Any]],
            malformed: list[bytes | None]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka.url, linger_ms=5)
    for d in docs:
        producer.send(topic, key=d["id"].encode(), value=json.dumps(d).encode())
    for i, raw in enumerate(malformed):
        producer.send(topic, key=f"bad-{i}".encode(), value=raw)
    producer.flush()
    producer.close()


DOCS_OUT = f'sum(topicstream_documents_out_total{{job="{JOB}"}})'
DLQ_IN = f'sum(topicstream_dlq_records_total{{job="{JOB}"}})'


def _scalar(prom: Prometheus, expr: str) -> float:
    result, _ = prom.query(expr)
    return float(result[0]["value"][1]) if result else float("nan")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def prom(kafka: Service) -> Iterator[Prometheus]:
    """Prometheus scraping one running worker that has processed labelled documents and bad
    records; yielded once the rules have series (or after SETTLE_S: the tests then say
    what is missing)."""
    workdir = Path(tempfile.mkdtemp(prefix="topicstream-prom-"))
    tag = uuid.uuid4().hex[:8]
    topic = f"in-{tag}"
    procs: list[subprocess.Popen[bytes]] = []
    with start_redis() as redis:
        try:
            create_topic(kafka, topic, partitions=2)
            worker_port, prom_port = free_port(), free_port()
            # Prometheus first: it sees the worker come up
            prom_log = workdir / "prometheus.log"
            procs.append(subprocess.Popen(
                ["prometheus", f"--config.file={prometheus_config(worker_port, workdir)}",
                 f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                cwd=workdir, stdout=prom_log.open("wb"), stderr=subprocess.STDOUT,
                start_new_session=True))
            url = f"http://127.0.0.1:{prom_port}"
            _wait("prometheus", lambda: _get(url + "/-/ready") == 200, 30, procs[0], prom_log)
            worker_log = workdir / "worker.log"
            flags = dict(brokers=kafka.url, redis_url=redis.url, input_topic=topic,
                         assignments_topic=f"asg-{tag}", events_topic=f"ev-{tag}",
                         dlq_topic=f"dlq-{tag}", group_id=f"g-{tag}", model=f"m-{tag}",
                         encoder="hashing", batch_size=50, max_wait_ms=200, drift_window=50,
                         session_timeout_ms=6000, log_interval_s=1.0,
                         metrics_host="127.0.0.1", metrics_port=worker_port)
            argv = [sys.executable, "-m", "stream", "run"]
            for k, v in flags.items():
                argv += ["--" + k.replace("_", "-"), str(v)]
            procs.append(subprocess.Popen(
                argv, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                stdout=worker_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True))
            wait_for_port(worker_port, 60, procs[1])  # type: ignore[arg-type]
            _wait("worker", lambda: _get(f"http://127.0.0.1:{worker_port}/readyz") == 200, 60,
                  procs[1], worker_log)
            produce(kafka, topic, documents(N_DOCS), [raw for raw, _ in MALFORMED])
            client = Prometheus(url)
            rules = yaml.safe_load(RULES.read_text())
            deadline = time.monotonic() + SETTLE_S
            while time.monotonic() < deadline and (
                    not _scalar(client, DOCS_OUT) >= N_DOCS
                    or not _scalar(client, DLQ_IN) >= len(MALFORMED)
                    or check_rules(rules, client)):
                time.sleep(1.0)
            yield client
        finally:
            for p in reversed(procs):
                _stop(p)
            shutil.rmtree(workdir, ignore_errors=True)


def test_the_worker_fed_every_kind_of_series(prom: Prometheus) -> None:
    """The series the checks below find were set by the documents of this test, not only
    registered: every document assigned, every DLQ reason counted, drift windows closed with
    an NMI against the labels, the encoder and its device reported."""
    assert _scalar(prom, DOCS_OUT) == N_DOCS
    reasons = {reason for _, reason in MALFORMED}
    assert _scalar(prom, "count(topicstream_dlq_records_total > 0)") == len(reasons)
    assert _scalar(prom, DLQ_IN) == len(MALFORMED)
    assert _scalar(prom, "sum(topicstream_drift_windows_total)") >= N_DOCS // 50
    assert 0 < _scalar(prom, "max(topicstream_drift_window_nmi)") <= 1
    assert _scalar(prom, 'count(topicstream_encoder_info{encoder=~"hashing.*", device="cpu"})') == 1
    assert _scalar(prom, "count(topicstream:consumer_lag:sum)") >= 1


def test_every_dashboard_query_returns_series(prom: Prometheus) -> None:
    problems = check_dashboard(json.loads(DASHBOARD.read_text()), prom)
    assert not problems, "\n".join(problems)


def test_every_rule_expression_returns_series(prom: Prometheus) -> None:
    """Recording rules as written; alerts through the quantity they compare (see
    ``tests/deploy_checks.py``), since a healthy worker fires none of them."""
    problems = check_rules(yaml.safe_load(RULES.read_text()), prom)
    assert not problems, "\n".join(problems)


def test_no_page_fires_on_a_healthy_worker(prom: Prometheus) -> None:
    """No critical or warning alert; info ones may (a young model announces several emerging
    topics at once, which TopicstreamEmergingTopicsBurst reports)."""
    result, error = prom.query('ALERTS{alertstate="firing", severity=~"critical|warning"}')
    assert result == [], error or result


def test_a_misspelt_metric_fails_the_checks(prom: Prometheus) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for old, new in (("topicstream:documents_in:rate1m", "topicstream:documents_inn:rate1m"),
                     ("topicstream_drift_window_nmi", "topicstream_drift_windw_nmi")):
        problems = check_dashboard(misspell(dashboard, old, new), prom)
        assert problems and all(new in p for p in problems), problems
    # an alert whose metric was renamed returns nothing either way: the checks still see it
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "TopicstreamDriftHigh":
                rule["expr"] = rule["expr"].replace("js_divergence", "jsd")
    problems = check_rules(rules, prom)
    assert any("TopicstreamDriftHigh" in p for p in problems), problems
    assert all("TopicstreamDriftHigh" in p for p in problems), problems
