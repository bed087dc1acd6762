"""Who is asking, and under which name: the real client address, X-Forwarded-* only from trusted proxies,
a Host allow-list, and a cap on the connections one client may hold.

Why here and not uvicorn's ``proxy_headers``: uvicorn believes ``X-Forwarded-For`` from 127.0.0.1 by
default, and every client of an app bound to 127.0.0.1 is local, so anyone could pick the address the login
rate limit counts and the lock-down audit records. The app turns that off and believes the headers only
from the proxies ``web.trusted_proxies`` names.

The Host check defends against DNS rebinding (a page on an attacker's name resolved to 127.0.0.1): a
request must name localhost, the bind address, an IP address (a rebinding attack always carries the
attacker's name, never an address), this machine's host name, or a name in ``web.allowed_hosts``.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


def in_networks(addr: str, nets: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in n for n in nets)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_name(header: str) -> str:
    """The name part of a Host header: ``[::1]:8080`` -> ``::1``, ``Example.com.:80`` -> ``example.com``."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


class HostPolicy:
    def __init__(self, bind_host: str, allowed: Iterable[str]) -> None:
        names = {n.lower().rstrip(".") for n in allowed}
        self.exact = {n for n in names if not n.startswith("*.")} | set(LOCAL_NAMES)
        # this machine's own name (and its mDNS form): an attacker's page cannot carry it
        me = socket.gethostname().lower().rstrip(".")
        if me:
            self.exact |= {me, f"{me.split('.', 1)[0]}.local"}
        if bind_host and not _is_ip(bind_host):
            self.exact.add(bind_host.lower())
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # ".example.com"

    def allows(self, header: str) -> bool:
        name = host_name(header)
        return _is_ip(name) or name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))


def forwarded_client(xff: str, trusted: list[Network]) -> str | None:
    """The client a chain of trusted proxies reports: the right-most X-Forwarded-For entry that is not
    itself a trusted proxy (entries left of it could have been written by anyone)."""
    hops = [h.strip() for h in xff.split(",") if h.strip()]
    for hop in reversed(hops):
        if not in_networks(hop, trusted):
            return hop if _is_ip(hop) else None
    return hops[0] if hops and _is_ip(hops[0]) else None


class ProxyAndHost:
    """ASGI middleware: rewrites ``scope["client"]`` (and scheme) from X-Forwarded-* when, and only when,
    the TCP peer is a trusted proxy; answers 400 to a Host that is not allowed."""

    def __init__(self, app: ASGIApp, trusted_proxies: list[str], bind_host: str, allowed_hosts: list[str]):
        self.app = app
        self.trusted = parse_networks(trusted_proxies)
        self.hosts = HostPolicy(bind_host, allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        peer = scope["client"][0] if scope.get("client") else ""
        host = headers.get("host", "")
        if self.trusted and in_networks(peer, self.trusted):
            client = forwarded_client(headers.get("x-forwarded-for", ""), self.trusted)
            if client is not None:
                scope["client"] = (client, 0)
            proto = headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
            if proto in ("http", "https"):
                scope["scheme"] = proto
            host = headers.get("x-forwarded-host", "").split(",")[-1].strip() or host
        if host and not self.hosts.allows(host):
            await _plain(
                send, 400, f"Host {host_name(host)!r} is not served here (add it to web.allowed_hosts)"
            )
            return
        await self.app(scope, receive, send)


async def _plain(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ClientLimits:
    """Open connections per client address (the TCP peer; trusted proxies are not counted, the proxy
    bounds its own clients). Shared by the connections of one server; touched on its event loop, locked
    anyway because it is cheap."""

    def __init__(self, per_client: int, trusted_proxies: list[str]) -> None:
        self.per_client = per_client
        self.trusted = parse_networks(trusted_proxies)
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, peer: Any) -> str | None:
        """The key to release later, or None when the client already holds its share (refuse it)."""
        addr = str(peer[0]) if isinstance(peer, tuple | list) and peer else ""
        if not addr or in_networks(addr, self.trusted):
            return ""
        with self._lock:
            n = self._open.get(addr, 0)
            if n >= self.per_client:
                return None
            self._open[addr] = n + 1
        return addr

    def release(self, key: str) -> None:
        if not key:
            return
        with self._lock:
            n = self._open.get(key, 0) - 1
            if n <= 0:
                self._open.pop(key, None)
            else:
                self._open[key] = n

    def open_count(self, addr: str) -> int:
        with self._lock:
            return self._open.get(addr, 0)
