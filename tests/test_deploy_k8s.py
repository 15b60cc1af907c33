"""deploy/k8s/: the overlays rendered by kustomize (kubectl's built-in one, or a kustomize
binary), core kinds validated against the Kubernetes schemas bundled in kubernetes-validate
(offline), and what the manifests promise checked on the rendered objects. Nothing is applied
to a cluster."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from stream.config import Config
from stream.http import StatusServer
from stream.metrics import Metrics

K8S = REPO / "deploy" / "k8s"
FIELDS = {f.name for f in dataclasses.fields(Config)}
CORE_KINDS = {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceAccount"}
KUBE_VERSION = "1.30.0"
PARTITIONS_ANNOTATION = "topicstream.io/input-topic-partitions"


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


pytestmark = pytest.mark.skipif(kustomize_command() is None,
                                reason="neither kubectl (kubectl kustomize) nor kustomize on PATH")


def render(path: Path) -> list[dict[str, Any]]:
    command = kustomize_command()
    assert command is not None
    out = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def with_sasl(tmp_path: Path) -> list[dict[str, Any]]:
    """The cpu overlay plus the kafka-sasl component, as a user's overlay would add it."""
    rel = Path(os.path.relpath(K8S, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(rel / "overlays" / "cpu")],
        "components": [str(rel / "components" / "kafka-sasl")]}))
    return render(tmp_path)


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict[str, Any]]]:
    return {name: render(K8S / "overlays" / name) for name in ("cpu", "gpu")}


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def test_core_kinds_validate_against_the_kubernetes_schemas(
        overlays: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for name, docs in [*overlays.items(), ("cpu+kafka-sasl", with_sasl(tmp_path))]:
        kinds = {d["kind"] for d in docs}
        assert kinds >= CORE_KINDS, (name, kinds)
        assert "Secret" not in kinds, "no secret values are shipped"
        for doc in docs:
            if doc["kind"] in CORE_KINDS:
                try:
                    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: "
                                f"{exc.message} at {list(exc.path)}")


def test_deployment_runs_restricted(overlays: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in overlays.items():
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, "the image's numeric USER"
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False
        sc = container(docs)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        # the read-only root needs a writable /tmp (HOME and caches point there)
        assert "/tmp" in [m["mountPath"] for m in container(docs)["volumeMounts"]]
        res = container(docs)["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
        # longer than a batch: max_wait_ms poll + encode + a producer flush bounded at 30 s
        assert pod["terminationGracePeriodSeconds"] >= 60


def test_probes_hit_the_worker_http_endpoints(overlays: dict[str, list[dict[str, Any]]]) -> None:
    """The probe paths are those stream/http.py serves (asked of a real StatusServer), on the
    port the configuration gives the worker."""
    docs = overlays["cpu"]
    c = container(docs)
    cm = one(docs, "ConfigMap")["data"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == int(cm["TOPICSTREAM_METRICS_PORT"])
    assert cm["TOPICSTREAM_METRICS_HOST"] == "0.0.0.0", "kubelet and Prometheus come from outside"
    probes = {k: c[k]["httpGet"] for k in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    server = StatusServer("127.0.0.1", 0, Metrics().registry, alive=lambda: True,
                          ready=lambda: True).start()
    try:
        for probe in probes.values():
            assert probe["port"] in ("metrics", ports["metrics"])
            url = f"http://127.0.0.1:{server.port}{probe['path']}"
            assert urllib.request.urlopen(url, timeout=5).status == 200, probe
        svc = one(docs, "Service")
        (port,) = svc["spec"]["ports"]
        assert port["targetPort"] in ("metrics", ports["metrics"])
        assert svc["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
        url = f"http://127.0.0.1:{server.port}/metrics"
        assert b"topicstream_documents_in_total" in urllib.request.urlopen(url, timeout=5).read()
    finally:
        server.close()


def test_configuration_comes_from_the_configmap_and_secrets_by_reference(
        overlays: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    for name, docs in [*overlays.items(), ("cpu+kafka-sasl", with_sasl(tmp_path))]:
        cm = one(docs, "ConfigMap")
        c = container(docs)
        assert c["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
        unknown = [k for k in cm["data"] if k.removeprefix("TOPICSTREAM_").lower() not in FIELDS]
        assert not unknown, (name, unknown)
        for env in c["env"]:
            if env["name"].startswith("TOPICSTREAM_"):
                field = env["name"].removeprefix("TOPICSTREAM_").lower()
                assert field in FIELDS, env["name"]
                if "password" in field:
                    assert "value" not in env, "a password in the manifest"
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "topicstream-secrets"
    sasl = with_sasl(tmp_path)
    env = {e["name"]: e for e in container(sasl)["env"]}
    assert "secretKeyRef" in env["TOPICSTREAM_KAFKA_SASL_PASSWORD"]["valueFrom"]
    assert one(sasl, "ConfigMap")["data"]["TOPICSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    auth = one(sasl, "TriggerAuthentication")
    (trigger,) = one(sasl, "ScaledObject")["spec"]["triggers"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == {"topicstream-secrets"}


def test_the_example_secret_is_marked_and_never_applied() -> None:
    example = K8S / "secret.example.yaml"
    text = example.read_text()
    assert text.startswith("# EXAMPLE ONLY, NOT APPLIED")
    secret = yaml.safe_load(text)
    assert set(secret["stringData"].values()) <= {"CHANGE-ME", "scram_sha512", "enable"}
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "secret.example" not in "".join(
            line for line in kustomization.read_text().splitlines(keepends=True)
            if not line.lstrip().startswith("#")), kustomization


def test_keda_scales_on_the_group_lag_up_to_the_partition_count(
        overlays: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in overlays.items():
        cm = one(docs, "ConfigMap")
        partitions = int(cm["metadata"]["annotations"][PARTITIONS_ANNOTATION])
        so = one(docs, "ScaledObject")
        deployment = one(docs, "Deployment")
        assert so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions
        assert deployment["spec"]["replicas"] <= partitions
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        md = trigger["metadata"]
        assert md["consumerGroup"] == cm["data"]["TOPICSTREAM_GROUP_ID"], name
        assert md["topic"] == cm["data"]["TOPICSTREAM_INPUT_TOPIC"], name
        assert md["bootstrapServers"] == cm["data"]["TOPICSTREAM_BROKERS"], name
        assert int(md["lagThreshold"]) > 0


def test_selectors_match_the_pods(overlays: dict[str, list[dict[str, Any]]]) -> None:
    for docs in overlays.values():
        labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        for kind, selector in (
                ("Deployment", one(docs, "Deployment")["spec"]["selector"]["matchLabels"]),
                ("PodDisruptionBudget",
                 one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]),
                ("Service", one(docs, "Service")["spec"]["selector"])):
            assert selector.items() <= labels.items(), kind
        pdb = one(docs, "PodDisruptionBudget")["spec"]
        assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") is not None


def test_gpu_overlay_asks_for_a_gpu_and_runs_on_cuda(
        overlays: dict[str, list[dict[str, Any]]]) -> None:
    gpu, cpu = overlays["gpu"], overlays["cpu"]
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert one(gpu, "ConfigMap")["data"]["TOPICSTREAM_DEVICE"] == "cuda"
    tolerations = one(gpu, "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    assert container(gpu)["image"].endswith("-cuda")
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]
    assert one(cpu, "ConfigMap")["data"]["TOPICSTREAM_DEVICE"] == "cpu"
    assert not container(cpu)["image"].endswith("-cuda")
