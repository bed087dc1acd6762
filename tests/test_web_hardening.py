"""The web app an operator can leave running, over real HTTP (uvicorn on 127.0.0.1): X-Forwarded-* only
from trusted proxies, a Host allow-list, brute force slowed without locking the operator out, bodies with
a deadline, connections capped per client, many event streams without slowing pages, HTTPS, sessions that
survive a restart.

Other client addresses are real: Linux routes all of 127.0.0.0/8 to the loopback, so a socket bound to
127.0.0.2 is a second client."""

from __future__ import annotations

import json
import socket
import ssl
import statistics
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from pipeline.serve.web.auth import Auth
from tests.support.web_fixtures import PASSWORD, TOKEN
from tests.test_web_http import running  # noqa: F401 - the fixture: a pipeline with camera a, door front

STRANGER = "127.0.0.2"


def _conn(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def _exchange(port: int, data: bytes, source: str = "127.0.0.1", timeout: float = 10.0) -> bytes:
    """Send one request; the whole response (the server closes, or Content-Length is met)."""
    with _conn(port, source, timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
            head, sep, body = out.partition(b"\r\n\r\n")
            if sep:
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:") and len(body) >= int(line.split(b":")[1]):
                        return out
        return out


def _status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/") else 0


def _login_request(password: str, headers: str = "", host: str = "127.0.0.1") -> bytes:
    body = urllib.parse.urlencode({"password": password}).encode()
    return (
        f"POST /login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n"
    ).encode() + body


def _cookie(resp: bytes, name: str) -> str | None:
    for line in resp.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"set-cookie:") and f" {name}=".encode() in line:
            return line.split(b"=", 1)[1].split(b";", 1)[0].decode()
    return None


# -- proxies and hosts ------------------------------------------------------------------------------------
def test_rotating_x_forwarded_for_does_not_escape_the_login_rate_limit(start_web, running):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe, login_attempts=3, login_slowdown_max_s=0)
    codes = [
        _status(_exchange(web.port, _login_request("wrong guess", f"X-Forwarded-For: 10.9.{i}.{i}\r\n")))
        for i in range(8)
    ]
    assert codes[:3] == [401, 401, 401] and set(codes[3:]) == {429}, codes


def test_the_audit_records_the_real_peer_not_a_forged_header(start_web, running):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe)

    def lockdown(locked: bool) -> bytes:
        body = json.dumps({"locked": locked, "reason": "y"}).encode()
        return (
            f"POST /api/doors/front/lockdown HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"X-Forwarded-For: 6.6.6.6\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body

    assert _status(_exchange(web.port, lockdown(True))) == 200  # from 127.0.0.1, which uvicorn believed
    assert _status(_exchange(web.port, lockdown(False), source=STRANGER)) == 200
    audit = Path(cfg.doors[0].audit_log).read_text()
    assert "6.6.6.6" not in audit and f"api ({STRANGER})" in audit and "api (127.0.0.1)" in audit


def test_a_trusted_proxy_reports_the_client(start_web, running):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe, trusted_proxies=["127.0.0.1/32"], login_attempts=2, login_slowdown_max_s=0)
    # behind the proxy, each client has its own limit: one client locked out, another not
    xff = "X-Forwarded-For: 203.0.113.7\r\n"
    assert [_status(_exchange(web.port, _login_request("bad", xff))) for _ in range(3)] == [401, 401, 429]
    other = "X-Forwarded-For: 203.0.113.8\r\n"
    assert _status(_exchange(web.port, _login_request(PASSWORD, other))) == 303
    # a spoofed left-most entry is not believed: the proxy appended the real client on the right
    chain = "X-Forwarded-For: 198.51.100.1, 203.0.113.7\r\n"
    assert _status(_exchange(web.port, _login_request(PASSWORD, chain))) == 429
    # the audit names the proxy's client
    body = json.dumps({"locked": True, "reason": "drill"}).encode()
    req = (
        f"POST /api/doors/front/lockdown HTTP/1.1\r\nHost: cams.example.org\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Host: localhost\r\nX-Forwarded-Proto: https\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    assert _status(_exchange(web.port, req)) == 200
    assert "api (203.0.113.9)" in Path(cfg.doors[0].audit_log).read_text()
    # from a peer that is not a trusted proxy the same header is ignored
    assert _status(_exchange(web.port, _login_request("bad", xff), source=STRANGER)) == 401


def test_a_foreign_host_header_is_refused(start_web, running):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe, allowed_hosts=["cams.example.org", "*.lan.example"])
    auth = f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n"

    def get(host: str) -> int:
        return _status(
            _exchange(web.port, f"GET /api/cameras HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode())
        )

    for bad in ("evil.example", "127.0.0.1.evil.example", "localhost.evil.example", "lan.example"):
        assert get(bad) == 400, bad
    resp = _exchange(
        web.port, f"GET /login HTTP/1.1\r\nHost: rebind.attacker.test:{web.port}\r\n{auth}\r\n".encode()
    )
    assert _status(resp) == 400 and b"web.allowed_hosts" in resp
    for good in (f"127.0.0.1:{web.port}", f"localhost:{web.port}", "LOCALHOST", f"[::1]:{web.port}",
                 "10.1.2.3", "cams.example.org", "cam1.lan.example:8080", socket.gethostname()):  # fmt: skip
        assert get(good) == 200, good


# -- brute force ------------------------------------------------------------------------------------------
def test_a_stranger_on_the_same_address_cannot_lock_the_operator_out(start_web, running):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe, login_attempts=3, login_slowdown_max_s=0.5)
    first = _exchange(web.port, _login_request(PASSWORD))  # the operator logged in here before
    assert _status(first) == 303
    device = _cookie(first, "vidpipe_device")
    assert device
    # a stranger on the same address (127.0.0.1: every local client) guesses until locked out
    codes = [_status(_exchange(web.port, _login_request("guess"))) for _ in range(6)]
    assert codes[:3] == [401, 401, 401] and codes[-1] == 429
    assert _status(_exchange(web.port, _login_request(PASSWORD))) == 429  # the address is locked out...
    t0 = time.monotonic()
    again = _exchange(web.port, _login_request(PASSWORD, f"Cookie: vidpipe_device={device}\r\n"))
    assert _status(again) == 303, again[:300]  # ...the operator's browser is not, and is not slowed
    assert time.monotonic() - t0 < 5
    forged = _exchange(web.port, _login_request(PASSWORD, "Cookie: vidpipe_device=abc.0123\r\n"))
    assert _status(forged) == 429  # a made-up device cookie counts as the address


def test_lockouts_double_and_the_global_slowdown_never_locks(monkeypatch) -> None:
    from pipeline.serve.web import auth as auth_mod

    monkeypatch.setattr(auth_mod, "check_password", lambda password, stored: password == "right")
    a = Auth("unused", max_attempts=2, window_s=10.0, lockout_max_s=35.0, slowdown_max_s=2.0)
    waits = []
    for _ in range(4):
        assert a.login("x", "wrong") is None and a.login("x", "wrong") is None
        waits.append(round(a.retry_after("x")))
        a._sources["x"].locked_until = 0.0  # noqa: SLF001 - this lock-out has run out
    assert waits == [10, 20, 35, 35], waits
    assert a.slowdown() == 2.0  # 8 failures everywhere: logins without a device cookie wait (capped)...
    assert a.retry_after("y") == 0.0 and a.login("y", "right") is not None  # ...but nobody else is locked


# -- slots ------------------------------------------------------------------------------------------------
def test_64_slow_bodies_leave_the_operators_login_answering(start_web, running):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe, body_timeout_s=3)
    held = []
    try:
        for _ in range(64):  # declare a body, never send it
            s = _conn(web.port, STRANGER)
            s.sendall(
                b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 100\r\n\r\n"
            )
            held.append(s)
        time.sleep(0.5)
        t0 = time.monotonic()
        resp = _exchange(web.port, _login_request(PASSWORD), timeout=20)
        took = time.monotonic() - t0
        print(f"operator's login with 64 slow bodies held: {took:.3f} s")
        assert _status(resp) == 303, resp[:200]
        assert took < 2.5, f"the operator's login took {took:.1f} s"  # answered, not after the deadline
        # the held ones: beyond the per-client cap refused at once; the rest get 408 at the body deadline
        codes = []
        for s in held:
            s.settimeout(10)
            try:
                codes.append(_status(s.recv(4096)))
            except OSError:
                codes.append(-1)
        assert set(codes) <= {408, 503} and 408 in codes and 503 in codes, codes
    finally:
        for s in held:
            s.close()


def _sse(port: int, source: str) -> socket.socket:
    s = _conn(port, source, timeout=15)
    s.sendall(
        f"GET /api/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    return s


def _latency(web, path: str, n: int = 15) -> float:  # noqa: ANN001
    _, sid = web.login()
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        status, _, _ = web.request("GET", path, headers={"Cookie": f"vidpipe_session={sid}"})
        times.append(time.monotonic() - t0)
        assert status == 200
    return statistics.median(times)


def test_100_open_event_streams_leave_pages_fast(start_web, running):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe, max_connections=160, max_connections_per_client=20)
    idle = {p: _latency(web, p) for p in ("/events", "/cameras", "/doors")}
    streams = []
    try:
        for i in range(100):
            s = _sse(web.port, f"127.0.0.{10 + i // 20}")
            streams.append(s)
        for s in streams:
            assert b" 200 " in s.recv(65536).split(b"\r\n")[0]
        time.sleep(1.5)  # every stream is waiting for events
        busy = {p: _latency(web, p) for p in idle}
        print(f"median page latency idle / with 100 streams (15 each): {idle} / {busy}")
        for p in idle:
            assert busy[p] - idle[p] < 0.2, f"{p}: idle {idle[p]:.3f} s, with 100 streams {busy[p]:.3f} s"
        # the live view keeps flowing: 5 new frames in a row, each a new one
        seq, t0 = -1, time.monotonic()
        for _ in range(5):
            status, headers, body = web.request(
                "GET", f"/api/live/a/frame?after={seq}", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert status == 200 and body[:2] == b"\xff\xd8" and int(headers["x-frame-seq"]) != seq
            seq = int(headers["x-frame-seq"])
        assert time.monotonic() - t0 < 5.0, "live frames slowed down by open event streams"
        # the streams still deliver: an event published now reaches all of them
        assert web.api("POST", "/api/cameras/a/pause")[0] == 200
        got = 0
        for s in streams:
            s.settimeout(15)
            buf = b""
            deadline = time.time() + 15
            while b"paused" not in buf and time.time() < deadline:
                buf += s.recv(65536)
            got += b"paused" in buf
        assert got == 100
    finally:
        for s in streams:
            s.close()
    assert web.api("POST", "/api/cameras/a/resume")[0] == 200


# -- TLS --------------------------------------------------------------------------------------------------
def test_https_from_a_configured_certificate(start_web, running, tmp_path):  # noqa: F811
    cfg, pipe = running
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    web = start_web(cfg, pipe, tls_cert=str(cert), tls_key=str(key))
    assert web.url.startswith("https://")
    ctx = ssl.create_default_context(cafile=str(cert))
    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", web.port, context=ctx, timeout=15)
    body = urllib.parse.urlencode({"password": PASSWORD})
    conn.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 303
    cookies = [v for k, v in resp.getheaders() if k.lower() == "set-cookie"]
    assert cookies and all("secure" in c.lower() for c in cookies), cookies
    conn.close()
    # plain HTTP to the HTTPS port gets nothing useful
    plain = _exchange(web.port, b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout=5)
    assert b"vidpipe" not in plain
    with pytest.raises(OSError, match="tls_cert"):
        start_web(cfg, pipe, tls_cert=str(tmp_path / "missing.pem"), tls_key=str(key))


# -- sessions ---------------------------------------------------------------------------------------------
def test_a_session_survives_a_restart_and_the_store_holds_no_usable_id(start_web, running, tmp_path):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe)
    _, sid = web.login()
    assert sid
    web.server.stop()
    store = tmp_path / "var" / "web" / "sessions.json"
    assert oct(store.stat().st_mode & 0o777) == "0o600" and sid not in store.read_text()
    again = start_web(cfg, pipe)  # a new server process state, the same var dir
    status, _, page = again.request("GET", "/cameras", headers={"Cookie": f"vidpipe_session={sid}"})
    assert status == 200 and b'data-camera="a"' in page
    assert again.request("GET", "/cameras", headers={"Cookie": "vidpipe_session=forged"})[0] == 303


def test_an_oversized_upload_gets_a_page_not_raw_json(start_web, running):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe, max_body_bytes=1_000_000)
    _, sid = web.login()
    resp = _exchange(
        web.port,
        f"POST /faces/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: vidpipe_session={sid}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 25000000\r\n\r\n".encode(),
    )
    assert _status(resp) == 413 and b"text/html" in resp.split(b"\r\n\r\n")[0].lower()
    assert b"The upload is 25.0 MB" in resp and b"web.max_body_bytes" in resp and b'href="/faces"' in resp
    api = _exchange(
        web.port,
        f"POST /api/persons HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 25000000\r\n\r\n".encode(),
    )
    assert _status(api) == 413 and b'"error"' in api  # the API keeps answering JSON
