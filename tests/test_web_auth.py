"""Login rate limiting under concurrency: attempts in flight count against the client, so parallel
guesses cannot run more password checks than ``max_attempts`` per window."""

from __future__ import annotations

import threading
import time

from pipeline.serve.web import auth as auth_mod
from pipeline.serve.web.auth import Auth


def test_parallel_wrong_logins_run_at_most_max_attempts_checks(monkeypatch) -> None:
    checks: list[str] = []
    lock = threading.Lock()

    def slow_check(password: str, stored: str) -> bool:
        with lock:
            checks.append(password)
        time.sleep(0.2)  # scrypt takes a while; other guesses arrive meanwhile
        return password == "right"

    monkeypatch.setattr(auth_mod, "check_password", slow_check)
    a = Auth("unused", max_attempts=3, window_s=60.0)
    threads = [threading.Thread(target=a.login, args=("1.2.3.4", f"guess{i}")) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checks) == 3
    assert a.retry_after("1.2.3.4") > 0


def test_a_right_password_does_not_count_as_a_failure(monkeypatch) -> None:
    monkeypatch.setattr(auth_mod, "check_password", lambda password, stored: password == "right")
    a = Auth("unused", max_attempts=2, window_s=60.0)
    assert a.login("c", "right") is not None
    assert a.login("c", "right") is not None
    assert a.login("c", "wrong") is None
    assert a.retry_after("c") == 0.0  # one failure of two allowed
    assert a.login("c", "wrong") is None
    assert a.retry_after("c") > 0
    assert a.login("c", "right") is None  # locked out, even with the right password
