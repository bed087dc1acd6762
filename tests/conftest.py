"""Shared pytest fixtures live in tests/support/*; they are registered here as plugins."""

import os

# The door audit chain needs its own key (pipeline/analyze/doors/audit.py); tests (and the processes they start)
# use this one unless the environment already sets one.
os.environ.setdefault("VIDPIPE_AUDIT_KEY", "test-audit-key-not-a-door-secret")

pytest_plugins = [
    "tests.support.redis_fixtures",
    "tests.support.media_fixtures",
    "tests.support.rtsp_fixtures",
    "tests.support.web_fixtures",
    "tests.support.mqtt_fixtures",
]
