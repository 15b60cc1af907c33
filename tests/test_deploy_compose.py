"""deploy/compose/docker-compose.yml, as Debian's docker-compose reads it (`config`), and
every file it mounts or builds from. No container is started: this machine has no Docker
engine, so nothing here says the stack runs, only that it is well formed and complete."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from conftest import REPO
from stream.config import Config

COMPOSE = REPO / "deploy" / "compose" / "docker-compose.yml"
FIELDS = {f.name for f in dataclasses.fields(Config)}
pytestmark = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="no docker-compose binary (Debian package docker-compose: `make system-deps`)")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (paths absolute, defaults filled)."""
    out = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True,
                         text=True, timeout=60, cwd=COMPOSE.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    return yaml.safe_load(out.stdout)


def binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v["source"], v["target"]
        if source.startswith(("/", ".")):
            out[target] = Path(source)
    return out


def test_every_mount_and_build_input_exists_in_the_repository(config: dict[str, Any]) -> None:
    mounted = 0
    for name, svc in config["services"].items():
        for target, source in binds(svc).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert source.resolve().is_relative_to(REPO), f"{name}: {source} is outside the repo"
            mounted += 1
        if "build" in svc:
            context = Path(svc["build"]["context"])
            assert context.resolve() == REPO, name
            assert (context / svc["build"]["dockerfile"]).is_file(), name
    assert mounted >= 5


def test_services(config: dict[str, Any]) -> None:
    s = config["services"]
    assert {"kafka", "redis", "worker", "prometheus", "grafana", "producer"} <= set(s)
    # Kafka in KRaft mode: the broker is its own controller, no ZooKeeper anywhere
    assert s["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in s["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert not any("zookeeper" in (svc.get("image") or "") for svc in s.values())
    # Redis with its append-only file
    cmd = s["redis"]["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") or "/data:" in v for v in map(str, s["redis"]["volumes"]))
    # N workers, never more than the input topic's partitions
    worker = s["worker"]
    replicas = worker["deploy"]["replicas"]
    init = s["kafka-init"]["command"]
    partitions = int(init[init.index("--partitions") + 1])
    assert 2 <= replicas <= partitions
    assert init[init.index("--topic") + 1] == worker["environment"]["TOPICSTREAM_INPUT_TOPIC"]
    assert "ports" not in worker, "a fixed host port would stop `--scale worker=N`"
    assert int(worker["stop_grace_period"].rstrip("s")) >= 30
    # the producer is optional and streams a file of the repository with `topicstream produce`
    producer = s["producer"]
    assert producer["profiles"] == ["producer"]
    assert producer["command"][0] == "produce"
    assert PurePosixPath(producer["command"][1]) in map(PurePosixPath, binds(producer))


def test_worker_settings_are_topicstream_settings(config: dict[str, Any]) -> None:
    for name in ("worker", "producer"):
        env = config["services"][name]["environment"]
        unknown = [k for k in env if k.startswith("TOPICSTREAM_")
                   and k.removeprefix("TOPICSTREAM_").lower() not in FIELDS]
        assert not unknown, (name, unknown)
    env = config["services"]["worker"]["environment"]
    assert env["TOPICSTREAM_METRICS_HOST"] == "0.0.0.0", "Prometheus scrapes across containers"
    assert env["TOPICSTREAM_BROKERS"].split(":")[0] in config["services"]
    assert env["TOPICSTREAM_REDIS_URL"].split("//")[1].split(":")[0] in config["services"]


def test_prometheus_scrapes_the_workers_with_the_mounted_rules(config: dict[str, Any]) -> None:
    svc = config["services"]["prometheus"]
    mounts = binds(svc)
    cfg_flag = next(a for a in svc["command"] if a.startswith("--config.file="))
    cfg_path = PurePosixPath(cfg_flag.split("=", 1)[1])
    cfg = yaml.safe_load(mounts[str(cfg_path)].read_text())
    for rule_file in cfg["rule_files"]:
        assert str(cfg_path.parent / rule_file) in mounts, rule_file
        assert mounts[str(cfg_path.parent / rule_file)].name == "rules.yml"
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "topicstream"]
    (sd,) = job["dns_sd_configs"]
    env = config["services"]["worker"]["environment"]
    assert sd["names"] == ["worker"] and sd["port"] == int(env["TOPICSTREAM_METRICS_PORT"])


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(config: dict[str, Any]) -> None:
    svc = config["services"]["grafana"]
    mounts = binds(svc)
    provisioning = mounts["/etc/grafana/provisioning"]
    ds = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    url = ds["datasources"][0]["url"]
    assert url == "http://prometheus:9090" and "prometheus" in config["services"]
    provider = yaml.safe_load((provisioning / "dashboards" / "topicstream.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    dashboards = [t for t in mounts if PurePosixPath(t).parent == PurePosixPath(folder)]
    assert [mounts[t].name for t in dashboards] == ["topicstream.json"]
