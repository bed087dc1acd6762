"""Redis fixtures: a real redis-server (Debian's /usr/bin/redis-server) on a free 127.0.0.1 port per test.

redis_server: a started ``LocalRedis``, no persistence, stopped after the test.
redis_client: a redis-py client for it with ``decode_responses=True``.
make_redis:   a factory for variants, e.g. ``make_redis(persistence=True)`` or ``make_redis(password="pw")``;
              every server it made is stopped after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from pipeline.deliver.redis_server import LocalRedis


@pytest.fixture
def make_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalRedis]]:
    servers: list[LocalRedis] = []

    def factory(**kwargs: Any) -> LocalRedis:
        kwargs.setdefault("data_dir", tmp_path_factory.mktemp("redis"))
        server = LocalRedis(**kwargs).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(make_redis: Callable[..., LocalRedis]) -> LocalRedis:
    return make_redis()


@pytest.fixture
def redis_client(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=5)
    yield client
    client.close()
