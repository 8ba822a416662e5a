"""What each worker keeps to itself: state directory, control socket, files, spools."""

from __future__ import annotations

import pytest

from proxylog.config import ConfigError, check_workers, parse_config
from proxylog.workers.layout import worker_config, worker_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/var/log/proxylog/access.log", "/var/log/proxylog/access-w1.log"),
        ("access.jsonl", "access-w1.jsonl"),
        ("/var/log/records", "/var/log/records-w1"),
        ("/var/log/.records", "/var/log/.records-w1"),
    ],
)
def test_a_file_sink_path_gets_the_worker_index(path: str, expected: str) -> None:
    assert worker_path(path, 1) == expected


def test_a_worker_shares_no_file_or_socket_with_another() -> None:
    config = parse_config(
        {
            "workers": 2,
            "upstream": "http://127.0.0.1:3000",
            "listen": "127.0.0.1:8080",
            "state_dir": "/srv/proxylog",
            "control": {"socket": "/run/proxylog/control.sock", "tcp": "127.0.0.1:9100", "token_env": "T"},
            "metrics": {"listen": "127.0.0.1:9101"},
            "sinks": [
                {
                    "type": "file",
                    "path": "/var/log/access.log",
                    "spool": "/srv/spool",
                    "quarantine": "/srv/q.ndjson",
                },
                {"type": "stdout"},
            ],
        }
    )
    zero, one = worker_config(config, 0), worker_config(config, 1)
    assert zero.state_dir == "/srv/proxylog/workers/0" and one.state_dir == "/srv/proxylog/workers/1"
    assert zero.control_socket == "/srv/proxylog/workers/0/control.sock"
    assert zero.control.tcp is None and zero.metrics.listen is None  # the supervisor has those
    files = [(w.sinks[0].path, w.sinks[0].spool, w.sinks[0].quarantine) for w in (zero, one)]  # type: ignore[attr-defined]
    assert files == [
        ("/var/log/access-w0.log", "/srv/spool/w0", "/srv/q-w0.ndjson"),
        ("/var/log/access-w1.log", "/srv/spool/w1", "/srv/q-w1.ndjson"),
    ]
    assert zero.sinks[1] == config.sinks[1]  # stdout: the supervisor relays whole lines
    assert zero.listen == config.listen and zero.workers == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"workers": 0}, "workers: must be at least 1"),
        ({"workers": "two"}, "workers: expected an integer"),
        ({"workers": 2, "engine": "mitmproxy"}, "need the fast engine"),
        ({"workers": 2, "listen": "127.0.0.1:0"}, "fixed listen port"),
    ],
)
def test_workers_that_cannot_run_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_workers(parse_config({"upstream": "http://127.0.0.1:3000", **data}))
