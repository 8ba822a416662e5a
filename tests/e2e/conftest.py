"""Fixtures the whole-proxy tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fast import _upstreams as scripted


@pytest.fixture
def upstreams() -> Iterator[list[scripted.Upstream]]:
    """Scripted upstreams a test starts (appended here), closed when it ends."""
    started: list[scripted.Upstream] = []
    yield started
    for upstream in started:
        upstream.close()
