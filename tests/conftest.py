"""Shared pytest fixtures live in tests/support/*; they are registered here as plugins."""

pytest_plugins = [
    "tests.support.redis_fixtures",
    "tests.support.media_fixtures",
    "tests.support.rtsp_fixtures",
    "tests.support.mqtt_fixtures",
    "tests.support.web_fixtures",
]
