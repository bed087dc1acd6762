"""Web app settings (the ``web:`` section)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class WebConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="serve the web app from the pipeline process")
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 exposes it to the network")
    port: int = Field(8080, ge=0, le=65535, description="0 = any free port (printed at start)")
    password_env: str = Field(
        "VIDPIPE_WEB_PASSWORD",
        description="environment variable holding the login password; when unset a password is generated "
        "on first start, printed once, and stored hashed under <var-dir>/web/password.scrypt",
    )
    session_ttl_s: float = Field(12 * 3600, gt=0, description="a login lasts this long")
    login_attempts: int = Field(5, ge=1, description="failed logins allowed per client per login_window_s")
    login_window_s: float = Field(60.0, gt=0)
    max_body_bytes: int = Field(20_000_000, ge=1024, description="larger request bodies get 413")
    idle_timeout_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(64, ge=2, description="more concurrent connections/requests get 503")
    worker_threads: int = Field(8, ge=1, description="threads for blocking work (JPEG, Redis, enrollment)")
    jpeg_quality: int = Field(75, ge=10, le=100)
