"""deploy/prometheus/: the rules and scrape configs through promtool, and the promtool unit
tests of the alerts (each alert has a case where it fires and one where it does not)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PROM = REPO / "deploy" / "prometheus"
RULES = PROM / "rules.yml"
UNIT_TESTS = sorted((PROM / "tests").glob("*.yml"))
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="no promtool (Debian package prometheus: `make system-deps` installs it)")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def alerts() -> dict[str, dict]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    out = promtool("check", "rules", RULES)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    assert UNIT_TESTS
    out = promtool("test", "rules", *UNIT_TESTS)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_compose_scrape_config_passes_promtool_check() -> None:
    out = promtool("check", "config", PROM / "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_kubernetes_scrape_config_passes_promtool_check() -> None:
    out = promtool("check", "config", PROM / "prometheus-kubernetes.yml")
    if "field kubernetes_sd_configs not found" in out.stdout + out.stderr:
        pytest.skip("this promtool is built without Kubernetes service discovery (Debian's "
                    "prometheus package leaves it out)")
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert [str(p) for p in doc["rule_files"]] == ["../rules.yml"], path
        for case in doc["tests"]:
            for t in case.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = set(alerts())
    assert names - fires == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"
    assert (fires | quiet) - names == set(), "unit tests of alerts that do not exist"


def test_every_alert_says_what_to_do() -> None:
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        for key in ("summary", "description", "runbook"):
            assert len(rule["annotations"].get(key, "")) > 20, (name, key)


def test_both_scrape_configs_name_the_job_the_rules_and_dashboard_expect() -> None:
    for name in ("prometheus.yml", "prometheus-kubernetes.yml"):
        cfg = yaml.safe_load((PROM / name).read_text())
        assert "topicstream" in [j["job_name"] for j in cfg["scrape_configs"]], name
        assert cfg["rule_files"] == ["rules.yml"], name
