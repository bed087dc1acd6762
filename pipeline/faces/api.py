"""Small authenticated HTTP API for the face gallery (stdlib http.server, JSON).

Every request needs ``Authorization: Bearer <token>`` (token from faces.api.token or the variable named
by faces.api.token_env); a wrong or missing token gets 401 and nothing else.

    GET    /persons                      -> {"persons": [{"name", "templates", "model_ids"}]}
    POST   /persons  {"name": N, "photos": [{"filename": F, "data": base64}]}
                                         -> {"name", "enrolled": [F...], "rejected": [{"photo", "reason"}], "templates"}
    DELETE /persons/<name>               -> {"removed": name}
    PATCH  /persons/<name> {"name": NEW} -> {"renamed": name, "to": NEW}
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from pipeline.faces.config import FacesConfig
from pipeline.faces.enroll import FaceEngine, enroll_images
from pipeline.faces.gallery import Gallery, GalleryError

log = logging.getLogger(__name__)


def api_token(cfg: FacesConfig) -> str:
    if cfg.api.token is not None:
        token = cfg.api.token.get_secret_value()
    else:
        token = os.environ.get(cfg.api.token_env or "", "")
        if not token:
            raise ValueError(
                f"faces.api: set faces.api.token or the environment variable {cfg.api.token_env}"
            )
    if len(token) < 16:
        raise ValueError("faces.api: the token must be at least 16 characters")
    return token


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class GalleryApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        cfg: FacesConfig,
        gallery: Gallery,
        engine: FaceEngine,
        token: str,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self.cfg, self.gallery, self.engine, self.token = cfg, gallery, engine, token
        super().__init__((host or cfg.api.host, cfg.api.port if port is None else port), _Handler)

    def start_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="faces-api", daemon=True)
        t.start()
        return t

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: GalleryApiServer

    def log_message(self, fmt: str, *args: object) -> None:  # no tokens or bodies in logs
        log.info("faces api %s %s", self.command, self.path.split("?")[0])

    def _send(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _dispatch(self) -> None:
        try:
            auth = self.headers.get("Authorization", "")
            if not (
                auth.startswith("Bearer ")
                and hmac.compare_digest(auth[7:].encode(), self.server.token.encode())
            ):
                raise _ApiError(401, "missing or wrong bearer token")
            self._send(200, self._route())
        except _ApiError as exc:
            self._send(exc.status, {"error": str(exc)})
        except GalleryError as exc:
            self._send(404 if "no enrolled" in str(exc) else 400, {"error": str(exc)})
        except Exception:  # noqa: BLE001
            log.exception("faces api: %s %s failed", self.command, self.path)
            self._send(500, {"error": "internal error (see the server log)"})

    do_GET = do_POST = do_DELETE = do_PATCH = _dispatch  # noqa: N815

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server.cfg.api.max_body_bytes:
            raise _ApiError(
                413, f"body larger than faces.api.max_body_bytes ({self.server.cfg.api.max_body_bytes})"
            )
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            raise _ApiError(400, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _ApiError(400, "body must be a JSON object")
        return body

    def _route(self) -> dict:
        parts = [unquote(p) for p in self.path.split("?")[0].strip("/").split("/")]
        g = self.server.gallery
        if parts == ["persons"] and self.command == "GET":
            return {
                "persons": [
                    {"name": p.name, "templates": p.templates, "model_ids": list(p.model_ids)}
                    for p in g.persons()
                ]
            }
        if parts == ["persons"] and self.command == "POST":
            return self._enroll(self._body())
        if len(parts) == 2 and parts[0] == "persons" and self.command == "DELETE":
            g.remove(parts[1])
            return {"removed": parts[1]}
        if len(parts) == 2 and parts[0] == "persons" and self.command == "PATCH":
            new = self._body().get("name")
            if not isinstance(new, str):
                raise _ApiError(400, 'body must be {"name": "<new name>"}')
            g.rename(parts[1], new)
            return {"renamed": parts[1], "to": new}
        raise _ApiError(404, f"no route {self.command} /{'/'.join(parts)}")

    def _enroll(self, body: dict) -> dict:
        name, photos = body.get("name"), body.get("photos")
        if not isinstance(name, str) or not isinstance(photos, list) or not photos:
            raise _ApiError(
                400, 'body must be {"name": str, "photos": [{"filename": str, "data": base64}, ...]}'
            )
        images, bad = [], []
        for i, ph in enumerate(photos):
            label = str(ph.get("filename") or f"photo[{i}]") if isinstance(ph, dict) else f"photo[{i}]"
            try:
                images.append((label, base64.b64decode(ph["data"], validate=True)))
            except (KeyError, TypeError, binascii.Error):
                bad.append({"photo": label, "reason": "data is missing or not valid base64"})
        append = body.get("append", False)
        if not isinstance(append, bool):
            raise _ApiError(400, '"append" must be true or false')
        report = enroll_images(
            self.server.gallery, self.server.engine, self.server.cfg, name, images, append=append
        )
        rejected = bad + [{"photo": p, "reason": r} for p, r in report.rejected]
        return {
            "name": name,
            "enrolled": report.accepted,
            "rejected": rejected,
            "templates": report.templates,
        }
