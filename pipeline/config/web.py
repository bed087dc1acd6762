"""Web app settings (the ``web:`` section)."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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
    login_window_s: float = Field(
        60.0,
        gt=0,
        description="first lock-out of a client; each further one doubles, up to login_lockout_max_s",
    )
    login_lockout_max_s: float = Field(3600.0, gt=0, description="longest lock-out of one client")
    login_slowdown_max_s: float = Field(
        5.0,
        ge=0,
        description="under failed logins from many clients, each login from a browser that never logged in "
        "here waits up to this long before its password is checked (it slows, it never locks)",
    )
    max_body_bytes: int = Field(20_000_000, ge=1024, description="larger request bodies get 413")
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body must arrive within this long of its headers, else 408"
    )
    idle_timeout_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(64, ge=2, description="more concurrent connections/requests get 503")
    max_connections_per_client: int = Field(
        24, ge=1, description="open connections one client address may hold (trusted proxies excepted)"
    )
    worker_threads: int = Field(8, ge=1, description="threads for blocking work (JPEG, Redis, enrollment)")
    jpeg_quality: int = Field(75, ge=10, le=100)
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or networks (10.0.0.0/8) whose X-Forwarded-For/-Proto/-Host are believed; "
        "none by default: the client is the peer of the TCP connection",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names the app answers to besides localhost, the bind address and IP addresses "
        "(a leading '*.' matches subdomains); any other Host header gets 400 (DNS rebinding)",
    )
    tls_cert: str | None = Field(None, description="PEM certificate (chain): serve HTTPS")
    tls_key: str | None = Field(None, description="PEM private key of tls_cert")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(
                    f"{net!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/8)"
                ) from None
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> WebConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both (HTTPS) or neither")
        return self
