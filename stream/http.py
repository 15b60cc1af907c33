"""The worker's HTTP side: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz``."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class StatusServer:
    """Serves metrics and health on ``host:port`` from a daemon thread.

    ``alive`` says whether the worker loop is turning (liveness: restart me if not);
    ``ready`` whether it has loaded the model and may take traffic (readiness).
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 alive: Callable[[], bool], ready: Callable[[], bool]) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/livez"):
                    ok = server.alive()
                    self._json(200 if ok else 503, {"status": "ok" if ok else "stalled"})
                elif path == "/readyz":
                    ok = server.ready()
                    self._json(200 if ok else 503, {"status": "ready" if ok else "not ready"})
                else:
                    self._json(404, {"error": f"no such path {path}"})

            def _json(self, code: int, body: dict[str, str]) -> None:
                self._send(code, json.dumps(body).encode(), "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("http: " + format, *args)

        self.registry, self.alive, self.ready = registry, alive, ready
        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="status-http",
                                       daemon=True)

    def start(self) -> StatusServer:
        self.thread.start()
        log.info("metrics and health on http://%s:%s/metrics", self.httpd.server_address[0], self.port)
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def liveness(heartbeat: Callable[[], float], max_age_s: float) -> Callable[[], bool]:
    return lambda: time.monotonic() - heartbeat() < max_age_s
