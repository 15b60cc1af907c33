"""The command line: one-line errors, non-zero exits, config precedence, the embedded cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, documents
from stream.config import ConfigError, load_config
from stream.services import free_port


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "stream", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("topicstream: error:")
    for w in words:
        assert w in last


def test_config_precedence(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('batch_size = 32\nthreshold = 0.5\nmodel = "file"\n')
    cfg = load_config(path, env={"TOPICSTREAM_THRESHOLD": "0.6", "TOPICSTREAM_MODEL": "env"},
                      overrides={"model": "flag"})
    assert (cfg.batch_size, cfg.threshold, cfg.model) == (32, 0.6, "flag")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"batch_size": "0"}, "batch_size=0 should be >= 1"),
    ({"batch_size": "many"}, "batch_size='many' should be of type int"),
    ({"threshold": "1.5"}, "threshold=1.5 should be within [-1, 1]"),
    ({"redis_url": "http://x"}, "redis_url='http://x' should start with"),
    ({"device": "tpu"}, "device='tpu'"),
])
def test_config_errors_quote_the_bad_value(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides=overrides)
    assert message in str(info.value)


def test_secret_from_file_is_never_in_the_redacted_config(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    cfg = load_config(env={"TOPICSTREAM_REDIS_PASSWORD_FILE": str(secret)},
                      overrides={"redis_url": "redis://u:pw2@h:1/0"})
    assert cfg.redis_password == "hunter2"
    text = json.dumps(cfg.redacted())
    assert "hunter2" not in text and "pw2" not in text


def test_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    proc = cli("run", "--redis-url", f"redis://127.0.0.1:{port}/0", "--encoder", "hashing",
               "--brokers", f"127.0.0.1:{free_port()}")
    assert_one_line_error(proc, "Redis", f"127.0.0.1:{port}")


def test_unreachable_broker_is_one_line() -> None:
    port = free_port()
    proc = cli("run", "--encoder", "hashing", "--brokers", f"127.0.0.1:{port}", "--metrics-port", "0")
    assert_one_line_error(proc, "Kafka", f"127.0.0.1:{port}")


def test_bad_flag_value_is_one_line() -> None:
    assert_one_line_error(cli("cluster", "x.jsonl", "--batch-size", "0"), "batch_size=0")
    assert_one_line_error(cli("cluster", "/no/such/file.jsonl"), "no such file")
    assert_one_line_error(cli("cluster", str(REPO / "pyproject.toml"), "--encoder", "bogus"), "encoder='bogus'")


def test_cluster_file_embedded(tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    rows = documents(300)
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    out, dlq = tmp_path / "out.jsonl", tmp_path / "dlq.jsonl"
    proc = cli("cluster", str(data), "--encoder", "hashing", "--out", str(out), "--dlq", str(dlq),
               "--threshold", "0.15")
    assert proc.returncode == 0, proc.stderr
    assigned = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in assigned] == [r["id"] for r in rows]
    assert [json.loads(line)["error"] for line in dlq.read_text().splitlines()] == ["not_json"]
    assert "NMI" in proc.stdout and "docs/s" in proc.stdout


def test_cluster_resumes_from_its_state_file(tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in documents(100)) + "\n")
    state = tmp_path / "state.npz"
    first = cli("cluster", str(data), "--encoder", "hashing", "--state-file", str(state), "--out", "/dev/null")
    assert first.returncode == 0, first.stderr
    with data.open("a") as fh:
        fh.write("\n".join(json.dumps(r) for r in documents(150)[100:]) + "\n")
    out = tmp_path / "out.jsonl"
    second = cli("cluster", str(data), "--encoder", "hashing", "--state-file", str(state), "--out", str(out))
    assert second.returncode == 0, second.stderr
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [f"doc-{i}" for i in range(100, 150)]
    shown = cli("inspect", "--state-file", str(state), "--json", "--top", "1000")
    model = json.loads(shown.stdout)
    assert model["documents"] == 150
    assert sum(r["size"] for r in model["top"]) == 150  # every cluster, with its topic
    assert all(r["keywords"] and r["exemplars"] for r in model["top"])
    text = {d["text"] for d in documents(150)}
    assert all(set(r["exemplars"]) <= text for r in model["top"])


def test_bench_emerging_alerts_on_the_late_story(tmp_path: Path) -> None:
    """The demo corpus' bird-flu story starts at document 304 of 400."""
    corpus = REPO / "stream" / "demo_corpus.jsonl"
    out = tmp_path / "emerging.json"
    proc = cli("bench", "emerging", "--dataset", str(corpus), "--encoder", "hashing",
               "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "recall" in proc.stdout and "precision" in proc.stdout
    report = json.loads(out.read_text())
    for key in ("recall", "precision", "median_delay_docs", "p90_delay_docs", "alerts",
                "topics_evaluated"):
        assert key in report
    assert report["topics_evaluated"] == 6
    flu = [a for a in report["alert_list"] if a["topic"] == "bird-flu"]
    assert flu and flu[0]["first_of_topic"] and flu[0]["trigger"] >= 303
    assert report["alerts"] == len(report["alert_list"]) >= 1


def test_bench_quality_prints_the_table_and_writes_json_rows(tmp_path: Path) -> None:
    corpus = REPO / "stream" / "demo_corpus.jsonl"
    out = tmp_path / "rows.json"
    proc = cli("bench", "quality", "--dataset", str(corpus), "--encoder", "hashing",
               "--clusterers", "kmeans", "--no-peers", "--batch-size", "64", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "kmeans (arrival)" in proc.stdout and "NMI" in proc.stdout
    rows = json.loads(out.read_text())
    keys = {"method", "nmi", "ari", "homogeneity", "completeness", "purity", "clusters",
            "clusters_5plus", "docs_per_s"}
    assert [r["method"] for r in rows] == ["kmeans", "kmeans (arrival)"]
    for r in rows:
        assert keys <= set(r)
        assert 0.0 < r["nmi"] <= 1.0 and r["docs_per_s"] > 0 and r["clusters"] >= 6
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(r["method"] + "  "))
        assert f"{r['nmi']:.3f}" in line and f"{r['ari']:.3f}" in line  # table == JSON


def test_bench_quality_refuses_an_unlabelled_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "nolabels.jsonl"
    bad.write_text('{"id": "a", "text": "hello"}\n')
    proc = cli("bench", "quality", "--dataset", str(bad), "--encoder", "hashing", "--no-peers")
    assert_one_line_error(proc, "nolabels.jsonl:1", "label")
    assert proc.returncode == 2


def test_unknown_clusterer_param_is_a_one_line_error(tmp_path: Path) -> None:
    corpus = REPO / "stream" / "demo_corpus.jsonl"
    proc = cli("cluster", str(corpus), "--encoder", "hashing", "--clusterer-param", "nonsense=1",
               "--out", str(tmp_path / "a.jsonl"))
    assert_one_line_error(proc, "nonsense")


def json_lines(stderr: str) -> list[dict]:
    """Every line of ``stderr``, each of which must be one JSON object."""
    out = []
    for line in stderr.splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


def test_log_format_json_writes_json_lines_to_stderr(tmp_path: Path) -> None:
    from datetime import datetime, timedelta

    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in documents(30)) + "\n")
    state = tmp_path / "state.npz"
    args = ["cluster", str(data), "--encoder", "hashing", "--state-file", str(state),
            "--out", "/dev/null"]
    assert cli(*args).returncode == 0
    settings = tmp_path / "settings.toml"
    settings.write_text('log_format = "json"\n')
    for proc in (cli("--log-format", "json", *args), cli(*args, "--config", str(settings))):
        assert proc.returncode == 0, proc.stderr
        lines = json_lines(proc.stderr)
        loaded = [x for x in lines if x["logger"] == "stream.state.memory"]
        assert loaded and loaded[0]["level"] == "INFO"
        message = loaded[0]["message"]  # %-formatted
        assert message.startswith(f"loaded snapshot {state}: ") and "30 documents" in message
        for x in lines:
            assert {"ts", "level", "logger", "message"} <= set(x)
            assert x["ts"].endswith("Z") and datetime.fromisoformat(x["ts"]).utcoffset() == \
                timedelta(0)
        assert "clustered 0 documents" in proc.stdout  # results stay on stdout, as text


def test_json_formatter_carries_exceptions_and_extra_fields() -> None:
    import logging

    from stream.logs import JsonFormatter

    logger = logging.getLogger("topicstream.test")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logger.makeRecord("topicstream.test", logging.ERROR, __file__, 1,
                                   "batch %d of %s failed", (7, "in:0"), sys.exc_info(),
                                   extra={"partition": 3, "where": Path("/x")})
    obj = json.loads(JsonFormatter().format(record))
    assert obj["message"] == "batch 7 of in:0 failed" and obj["level"] == "ERROR"
    assert obj["logger"] == "topicstream.test"
    assert "RuntimeError: boom" in obj["exception"] and "Traceback" in obj["exception"]
    assert obj["partition"] == 3 and obj["where"] == "/x"  # extra fields; str() when needed
    assert "\n" not in JsonFormatter().format(record)


def test_bad_log_format_is_one_line() -> None:
    assert_one_line_error(cli("cluster", "x.jsonl", "--log-format", "xml"),
                          "log_format='xml' should be 'text' or 'json'")


def test_bench_encoder_prints_and_writes_its_figures() -> None:
    """On a few demo titles: our encoder and sentence-transformers' fastest settings, in turns;
    the JSON carries the fields the issue names, and the figures are consistent."""
    out = cli("bench", "encoder", "--device", "cpu", "--limit", "96", "--sample", "48",
              "--repeat", "1", "--json", "-", timeout=300)
    assert out.returncode == 0, out.stderr
    assert "sentence-transformers" in out.stdout and "ratio" in out.stdout
    row = json.loads(out.stdout[out.stdout.index("{"):])
    assert {"device", "docs_per_s", "tokens_per_s", "padding_ratio", "tflops",
            "baseline_docs_per_s", "ratio"} <= set(row)
    assert row["device"] == "cpu" and row["tflops"] is None and row["documents"] == 96
    assert row["ratio"] == pytest.approx(row["docs_per_s"] / row["baseline_docs_per_s"])
    assert row["tokens_per_s"] == pytest.approx(row["docs_per_s"] * row["mean_tokens"], rel=1e-6)
    assert 0.0 <= row["padding_ratio"] < 0.5 and row["cosine_min"] > 0.99


def test_bench_encoder_refuses_cuda_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = cli("bench", "encoder", "--device", "cuda", "--limit", "8")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "CUDA is not available" in out.stderr.strip().splitlines()[-1]
