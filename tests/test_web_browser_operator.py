"""Issue 21 in a real browser (Debian's chromium via Playwright) against the real app and a real pipeline:
the live view's frame age is honest when a camera stalls, the operator is not locked out by a stranger's
guesses, filters keep their values, door decisions show their outcome, an oversized upload gets a page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config.schema import parse_config
from pipeline.detect.detectors.base import NullDetector
from pipeline.run.runner import Pipeline
from tests.support.web_fixtures import PASSWORD, WebHandle
from tests.test_web_browser import ARGS, CHROMIUM, SHOTS, _login, _wait_js

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/setup.sh)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def door_app(start_web, redis_server, demo_mp4, tmp_path) -> Iterator[tuple[WebHandle, Pipeline]]:
    cfg = parse_config(
        {
            "cameras": [{"id": "door1", "source": str(demo_mp4.path), "loop": True, "realtime": True}],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
            "faces": {"enabled": True, "gallery_path": str(tmp_path / "gallery.sqlite")},
            "doors": [
                {
                    "id": "front",
                    "cameras": ["door1"],
                    "secret": "k" * 24,
                    "audit_log": str(tmp_path / "a.jsonl"),
                }
            ],
        }
    )
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path, analyzers_factory=lambda cam: []).start()
    web = start_web(cfg, pipe, login_attempts=3, login_slowdown_max_s=0.2, max_body_bytes=4096)
    yield web, pipe
    pipe.stop()
    pipe.join(30)


def test_the_live_view_shows_a_stalled_camera_growing_old(browser, door_app):
    web, pipe = door_app
    page = _login(browser, web)
    _wait_js(page, "window.vidpipeLive.door1 && window.vidpipeLive.door1.frames >= 5", 30)
    stats = page.locator('[data-stats="door1"]')
    assert "behind capture" in stats.inner_text()
    pipe.pause_camera("door1")  # no new frame from now on: the page must not keep a frozen figure
    _wait_js(page, "window.vidpipeLive.door1.age > 3", 20)
    text = stats.inner_text()
    assert "no new frame" in text and "s old" in text, text
    assert "stale" in (stats.get_attribute("class") or "")
    page.screenshot(path=str(SHOTS / "live_stale.png"), full_page=True)
    pipe.resume_camera("door1")
    page.close()


def test_a_strangers_guesses_do_not_lock_the_operator_out(browser, door_app):
    web, _ = door_app
    operator = browser.new_context()
    page = operator.new_page()
    page.goto(web.url + "/login")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(web.url + "/")
    page.click("header form button")  # log out
    page.wait_for_url(web.url + "/login")

    stranger = browser.new_context()  # same address (127.0.0.1), no history here
    spage = stranger.new_page()
    for _ in range(4):
        spage.goto(web.url + "/login")
        spage.fill("#password", "a wrong guess")
        spage.click("#login")
    assert "Too many failed logins" in spage.locator("#login-error").inner_text()
    spage.screenshot(path=str(SHOTS / "login_locked_out.png"))

    page.fill("#password", PASSWORD)  # the operator's browser logged in here before: not locked out
    page.click("#login")
    page.wait_for_url(web.url + "/")
    assert page.locator("h1").inner_text() == "Live"
    operator.close()
    stranger.close()


def test_event_filters_keep_their_values_and_decisions_show_their_outcome(browser, door_app, redis_server):
    import redis as redis_lib

    from pipeline.core.events import Event
    from pipeline.deliver.redis_transport import stream_for

    web, _ = door_app
    client = redis_lib.Redis.from_url(redis_server.url)
    for decision in ("granted", "denied"):
        ev = Event(type="doors.decision", camera_id="door1", data={"door_id": "front", "decision": decision})
        client.xadd(stream_for("vidpipe", "doors"), {"event": ev.to_json()})
    client.close()
    page = _login(browser, web, "/events")
    page.fill("#filters input[name=since]", "2026-01-02T03:04:05")
    page.fill("#filters input[name=until]", "2036-01-02T03:04:05")
    page.fill("#filters input[name=type]", "doors.decision")
    page.click("#filters button")
    page.wait_for_url("**/events?**")
    assert page.input_value("#filters input[name=since]") == "2026-01-02T03:04:05"
    assert page.input_value("#filters input[name=until]") == "2036-01-02T03:04:05"
    assert page.locator("#events tbody tr").count() == 2
    colours = {
        d: page.locator(f'#events tr[data-decision="{d}"] td').first.evaluate(
            "el => getComputedStyle(el).backgroundColor"
        )
        for d in ("granted", "denied")
    }
    assert colours["granted"] != colours["denied"], colours
    page.screenshot(path=str(SHOTS / "events_filtered.png"), full_page=True)
    page.goto(web.url + "/doors")
    cells = {
        d: page.locator(f'#door-front td[data-decision="{d}"]').evaluate(
            "el => getComputedStyle(el).backgroundColor"
        )
        for d in ("granted", "denied")
    }
    assert cells["granted"] != cells["denied"] and "0, 0, 0, 0" not in cells["granted"], cells
    page.screenshot(path=str(SHOTS / "doors_outcomes.png"), full_page=True)
    page.close()


def test_an_oversized_upload_gets_a_page_with_the_limit(browser, door_app, tmp_path):
    web, _ = door_app
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"x" * 20_000)
    page = _login(browser, web, "/faces")
    page.fill("#enroll-name", "eileen")
    page.set_input_files("#enroll-photos", [str(big)])
    page.click("#enroll-submit")
    page.wait_for_selector("#error-detail")
    text = page.locator("#error-detail").inner_text()
    assert "at most 4.1 kB per request (web.max_body_bytes)" in text and "smaller photos" in text, text
    assert page.locator("header nav").count() == 1  # the app's page, not raw JSON
    page.screenshot(path=str(SHOTS / "upload_too_large.png"))
    page.click("#error-back")
    page.wait_for_url(web.url + "/faces")
    page.close()
