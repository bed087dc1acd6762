"""Web app fixtures: the real app on uvicorn (127.0.0.1, a free port) in front of a real pipeline.

``start_web(...)`` builds a WebServer for a pipeline (or none: faces only) with a known password (given
through the environment variable, as a user would) and a config file the camera edits are written to.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config.faces import FacesConfig
from pipeline.config.schema import PipelineConfig
from pipeline.config.web import WebConfig
from pipeline.serve.web.server import WebServer, make_context

PASSWORD = "correct horse battery staple"
TOKEN = "api-token-0123456789abcdef"
PW_ENV = "VIDPIPE_TEST_WEB_PASSWORD"
TOKEN_ENV = "VIDPIPE_TEST_FACES_TOKEN"


@dataclass
class WebHandle:
    server: WebServer
    config_path: Path | None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url.rstrip("/")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            cookies = resp.headers.get_all("Set-Cookie") or []
            if cookies:  # several Set-Cookie headers: the session one first, all of them kept
                cookies.sort(key=lambda c: not c.startswith("vidpipe_session="))
                headers["set-cookie"] = "\n".join(cookies)
            return resp.status, headers, resp.read()
        finally:
            conn.close()

    def api(self, method: str, path: str, payload: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        elif method in ("POST", "PUT", "PATCH"):
            body = b""
        status, _, raw = self.request(method, path, body, headers)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def login(self, password: str = PASSWORD) -> tuple[int, str | None]:
        """(status, session cookie value or None)."""
        body = urllib.parse.urlencode({"password": password}).encode()
        status, headers, _ = self.request(
            "POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        cookie = headers.get("set-cookie", "")
        sid = cookie.split(";", 1)[0].split("=", 1)[1] if cookie.startswith("vidpipe_session=") else None
        return status, sid


@pytest.fixture
def start_web(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., WebHandle]]:
    monkeypatch.setenv(PW_ENV, PASSWORD)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    servers: list[WebServer] = []

    def start(
        cfg: PipelineConfig | None = None, pipeline: Any = None, faces: FacesConfig | None = None, **web: Any
    ) -> WebHandle:
        webcfg = WebConfig(port=0, password_env=PW_ENV, **web)
        faces_cfg = (faces or (cfg.faces if cfg else FacesConfig())).model_copy(deep=True)
        faces_cfg.api.token_env = TOKEN_ENV
        config_path = None
        if cfg is not None:
            config_path = tmp_path / "config.yaml"
            config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True)))
        ctx, _ = make_context(
            webcfg, faces_cfg, tmp_path / "var", pipeline=pipeline, cfg=cfg, config_path=config_path
        )
        server = WebServer(ctx).start()
        servers.append(server)
        return WebHandle(server, config_path)

    yield start
    for s in servers:
        s.stop()
