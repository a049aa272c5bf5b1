"""Session-scoped engines for the multi-node tests: one redis-server and one
PostgreSQL cluster for the whole run (each test uses its own Redis database number
and its own PostgreSQL database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.cluster import postgres_cluster, redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url
