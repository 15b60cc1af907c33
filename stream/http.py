"""The worker's HTTP side: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz``,
and, when given a :class:`~stream.board.TopicBoard`, the live topic board: ``/`` (a page
shipped in the package, ``stream/web``: no external CDN) and ``/api/topics`` (JSON; query
parameters ``n``, ``sort`` = weight | size | growth, ``q`` = a keyword substring)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stream.board import BoardQueryError, TopicBoard, parse_query

log = logging.getLogger(__name__)

# the board's files, shipped as package data: path -> (file in stream/web, content type)
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/board.js": ("board.js", "text/javascript; charset=utf-8"),
          "/board.css": ("board.css", "text/css; charset=utf-8")}


def static_files() -> dict[str, tuple[bytes, str]]:
    """The board's page, script and style sheet, read once from the package."""
    web = resources.files("stream").joinpath("web")
    return {path: (web.joinpath(name).read_bytes(), ctype) for path, (name, ctype) in STATIC.items()}


class StatusServer:
    """Serves metrics and health on ``host:port`` from a daemon thread.

    ``alive`` says whether the worker loop is turning (liveness: restart me if not);
    ``ready`` whether it has loaded the model and may take traffic (readiness); ``board``,
    when given, adds the live topic board (``/``, ``/api/topics``).
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 alive: Callable[[], bool], ready: Callable[[], bool],
                 board: TopicBoard | None = None) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path, _, query = self.path.partition("?")
                if server.board is not None and path == "/api/topics":
                    self._topics(server.board, query)
                elif server.board is not None and path in server.static:
                    body, ctype = server.static[path]
                    self._send(200, body, ctype)
                elif path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/livez"):
                    ok = server.alive()
                    self._json(200 if ok else 503, {"status": "ok" if ok else "stalled"})
                elif path == "/readyz":
                    ok = server.ready()
                    self._json(200 if ok else 503, {"status": "ready" if ok else "not ready"})
                else:
                    self._json(404, {"error": f"no such path {path}"})

            def _topics(self, board: TopicBoard, query: str) -> None:
                try:
                    n, sort, q = parse_query(query)
                    body = board.answer(n, sort, q)
                except BoardQueryError as exc:
                    self._json(400, {"error": str(exc)})
                    return
                except Exception as exc:  # noqa: BLE001 - the store may be down: say so
                    log.warning("/api/topics: %s", exc)
                    self._json(503, {"error": f"cannot read the model: {exc}"})
                    return
                self._send(200, body, "application/json")

            def _json(self, code: int, body: dict[str, str]) -> None:
                self._send(code, json.dumps(body).encode(), "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("http: " + format, *args)

        self.registry, self.alive, self.ready = registry, alive, ready
        self.board = board
        self.static = static_files() if board is not None else {}
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
        if self.board is not None:
            log.info("topic board on http://%s:%s/", self.httpd.server_address[0], self.port)
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def liveness(heartbeat: Callable[[], float], max_age_s: float) -> Callable[[], bool]:
    return lambda: time.monotonic() - heartbeat() < max_age_s
