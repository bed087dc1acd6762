"""Serve the metrics registry as Prometheus text (GET /metrics) and a JSON health summary (GET /healthz)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipeline.core.metrics import MetricsRegistry

log = logging.getLogger(__name__)


class MetricsServer:
    def __init__(
        self,
        registry: MetricsRegistry,
        host: str = "127.0.0.1",
        port: int = 0,
        health: Callable[[], dict] | None = None,
    ) -> None:
        registry_ref = registry
        health_ref = health or (lambda: {"ok": True})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                if self.path.split("?")[0] == "/metrics":
                    body = registry_ref.prometheus_text().encode()
                    ctype = "text/plain; version=0.0.4; charset=utf-8"
                    code = 200
                elif self.path.split("?")[0] == "/healthz":
                    h = health_ref()
                    body = json.dumps(h).encode()
                    ctype = "application/json"
                    code = 200 if h.get("ok") else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:
                log.debug("metrics http: " + fmt, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
