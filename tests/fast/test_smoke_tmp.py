import pytest

from tests.fast._http import exchange, get


@pytest.mark.e2e
def test_smoke(start_fast):
    """Smoke."""
    running = start_fast()
    rs = exchange(running.port, get("/a?b=1") + get("/b"), count=2)
    print(rs[0].raw_head, rs[0].body[:300])
    print(rs[1].raw_head)
    print(running.handler.wait_finished(2))
