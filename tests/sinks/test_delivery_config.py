"""Parsing ``sinks:``: every sink type and key, defaults, and ConfigErrors naming the key path."""

from __future__ import annotations

from typing import Any

import pytest

from proxylog.config import ConfigError, parse_config
from proxylog.config.sinks import (
    FileSpec,
    HttpSpec,
    IntegritySpec,
    RetrySpec,
    RotateSpec,
    StdoutSpec,
    SyslogSpec,
    TlsSpec,
)


def sinks(*entries: Any) -> tuple[Any, ...]:
    return parse_config({"sinks": list(entries)}).sinks


def test_defaults_spool_on_overflow() -> None:
    """A bare sink spools its overflow to disk by default, with bounded queue and spool."""
    [spec] = sinks({"type": "stdout"})
    assert spec == StdoutSpec(type="stdout", name="stdout")
    assert (spec.overflow, spec.queue, spec.batch, spec.spool_max) == ("spool", 10_000, 512, 256 * 1024**2)
    assert spec.retry == RetrySpec(initial=0.1, max=30.0)


def test_every_key_of_every_type_parses() -> None:
    """All documented keys land in their specs, sizes and durations converted."""
    file, syslog, http = sinks(
        {
            "type": "file",
            "path": "/var/log/proxylog/access.jsonl",
            "rotate": {"size": "100MB", "every": "1d", "keep": 10},
            "fsync": "1s",
            "integrity": {"key_file": "/etc/proxylog/chain.key"},
            "overflow": "drop",
            "retry": {"initial": "50ms", "max": "5s"},
        },
        {
            "type": "syslog",
            "address": "tls://logs.example:6514",
            "facility": "local3",
            "severity": "notice",
            "app_name": "edge",
            "hostname": "edge-1",
            "resend": "2MB",
            "timeout": "3s",
            "tls": {"ca": "/etc/ca.pem", "server_name": "logs.example"},
            "spool": "/var/lib/proxylog/spool/syslog",
            "spool_max": "1GB",
        },
        {
            "type": "http",
            "url": "https://es.example:9200/_bulk",
            "format": "elasticsearch",
            "index": "proxylog",
            "gzip": False,
            "token_env": "ES_API_KEY",
            "auth_scheme": "ApiKey",
            "headers": {"X-Tenant": "edge"},
            "quarantine": "/var/lib/proxylog/poison.ndjson",
            "queue": 5000,
            "batch": 1000,
        },
    )
    assert file == FileSpec(
        type="file",
        name="file:/var/log/proxylog/access.jsonl",
        path="/var/log/proxylog/access.jsonl",
        rotate=RotateSpec(size=100 * 1024**2, every=86400.0, keep=10),
        fsync=1.0,
        integrity=IntegritySpec(key_file="/etc/proxylog/chain.key"),
        overflow="drop",
        retry=RetrySpec(initial=0.05, max=5.0),
    )
    assert syslog == SyslogSpec(
        type="syslog",
        name="syslog:tls://logs.example:6514",
        transport="tls",
        host="logs.example",
        port=6514,
        facility=19,
        severity=5,
        app_name="edge",
        hostname="edge-1",
        resend=2 * 1024**2,
        timeout=3.0,
        tls=TlsSpec(ca="/etc/ca.pem", server_name="logs.example"),
        spool="/var/lib/proxylog/spool/syslog",
        spool_max=1024**3,
    )
    assert http == HttpSpec(
        type="http",
        name="http:https://es.example:9200/_bulk",
        url="https://es.example:9200/_bulk",
        format="elasticsearch",
        index="proxylog",
        gzip=False,
        token_env="ES_API_KEY",
        auth_scheme="ApiKey",
        headers=(("X-Tenant", "edge"),),
        quarantine="/var/lib/proxylog/poison.ndjson",
        queue=5000,
        batch=1000,
    )
    assert len({file, syslog, http}) == 3, "specs are hashable (reload compares them)"


@pytest.mark.parametrize(
    ("entries", "path", "fragment"),
    [
        ([{"type": "kafka"}], "sinks[0].type", "expected one of stdout, file, syslog, http"),
        ([{"type": "stdout"}, {"type": "stdout", "colour": 1}], "sinks[1].colour", "unknown key"),
        ([{"type": "file"}], "sinks[0].path", "is required"),
        ([{"type": "file", "path": "a", "rotate": {"keep": 3}}], "sinks[0].rotate", "needs `size`"),
        ([{"type": "stdout"}, {"type": "file", "path": "a", "rotate": {"size": "1m", "keep": 0}}],
         "sinks[1].rotate.keep", "at least 1"),
        ([{"type": "file", "path": "a", "rotate": {"size": "huge"}}], "sinks[0].rotate.size", "size like"),
        ([{"type": "file", "path": "a", "rotate": {"size": "1m", "often": 1}}], "sinks[0].rotate.often",
         "unknown key"),
        ([{"type": "file", "path": "a", "integrity": {}}], "sinks[0].integrity.key_file", "is required"),
        ([{"type": "file", "path": "a", "integrity": {"key": "hunter2"}}], "sinks[0].integrity.key",
         "unknown key"),
        ([{"type": "file", "path": "a", "fsync": "often"}], "sinks[0].fsync", "duration"),
        ([{"type": "stdout", "overflow": "block"}], "sinks[0].overflow", "expected one of spool, drop"),
        ([{"type": "stdout", "spool_max": "1k"}], "sinks[0].spool_max", "at least 4096"),
        ([{"type": "stdout", "retry": {"initial": "2s", "max": "1s"}}], "sinks[0].retry", "not be below"),
        ([{"type": "syslog"}], "sinks[0].address", "is required"),
        ([{"type": "syslog", "address": "udp://h"}], "sinks[0].address", "HOST:PORT"),
        ([{"type": "syslog", "address": "relp://h:1"}], "sinks[0].address", "udp://, tcp:// or tls://"),
        ([{"type": "syslog", "address": "tcp://h:1", "facility": "local9"}], "sinks[0].facility", "one of"),
        ([{"type": "syslog", "address": "tcp://h:1", "tls": {"ca": "x"}}], "sinks[0].tls", "tls://"),
        ([{"type": "syslog", "address": "tls://h:1", "tls": {"key": "k"}}], "sinks[0].tls.cert", "required"),
        ([{"type": "syslog", "address": "tcp://h:1", "app_name": "a b"}], "sinks[0].app_name", "printable"),
        ([{"type": "syslog", "address": "tcp://h:1", "host": "x"}], "sinks[0].host", "unknown key"),
        ([{"type": "http"}], "sinks[0].url", "is required"),
        ([{"type": "http", "url": "ftp://x"}], "sinks[0].url", "http/https URL"),
        ([{"type": "http", "url": "http://x/", "format": "splunk"}], "sinks[0].format", "one of"),
        ([{"type": "http", "url": "http://x/ingest", "format": "elasticsearch"}], "sinks[0].url", "/_bulk"),
        ([{"type": "http", "url": "http://x/_bulk", "format": "elasticsearch"}], "sinks[0]", "index"),
        ([{"type": "http", "url": "http://x/", "token": "hunter2"}], "sinks[0].token", "unknown key"),
        ([{"type": "http", "url": "http://x/", "token_file": "a", "token_env": "B"}], "sinks[0].token_env",
         "not both"),
        ([{"type": "http", "url": "http://x/", "headers": {"Authorization": "Bearer x"}}], "sinks[0].headers",
         "token_file"),
        ([{"type": "http", "url": "http://x/", "tls": {"ca": "x"}}], "sinks[0].tls", "https://"),
        ([{"type": "stdout"}, {"type": "stdout"}], "sinks[1]", "duplicate sink name"),
    ],
)  # fmt: skip
def test_errors_name_the_key_path(entries: list[Any], path: str, fragment: str) -> None:
    """Every invalid sink setting is a ConfigError whose path names the exact key."""
    with pytest.raises(ConfigError) as err:
        sinks(*entries)
    assert err.value.path == path
    assert fragment in err.value.message


@pytest.mark.parametrize(
    ("entry", "name"),
    [
        ({"type": "http", "url": "http://127.0.0.1:1/_bulk?api_key=KEY98", "index": "x"}, "http:http://127.0.0.1:1/_bulk?05132a08"),
        ({"type": "http", "url": "https://es.example/in#frag"}, "http:https://es.example/in"),
        ({"type": "syslog", "address": "tcp://127.0.0.1:514?key=KEY98"}, "syslog:tcp://127.0.0.1:514"),
    ],
)  # fmt: skip
def test_default_names_drop_the_query(entry: dict[str, Any], name: str) -> None:
    """A sink's default name (shown in status, metrics labels and errors) never carries the
    URL's query, where a collector key may sit (an http sink's carries a digest of it); the
    URL itself is kept whole for sending."""
    [spec] = sinks(entry)
    assert spec.name == name
    assert getattr(spec, "url", None) == entry.get("url")


def test_http_sinks_differing_only_in_their_query_keep_distinct_names() -> None:
    """Two collectors at one URL with different queries (?index=a, ?index=b) are two sinks."""
    a, b = sinks(
        {"type": "http", "url": "http://127.0.0.1:1/in?index=a"},
        {"type": "http", "url": "http://127.0.0.1:1/in?index=b"},
    )
    assert a.name != b.name and "index" not in a.name + b.name


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "http", "url": "http://elastic:PASSW0RD99@127.0.0.1:1/_bulk?api_key=KEY98", "index": "x"},
        {"type": "http", "url": "https://PASSW0RD99@es.example/_bulk", "index": "x"},
        {"type": "http", "url": "ftp://elastic:PASSW0RD99@es.example/?api_key=KEY98"},
        {"type": "http", "url": "http://elastic:PASSW0RD99@es.example:port/?api_key=KEY98"},
        {"type": "syslog", "address": "tls://elastic:PASSW0RD99@127.0.0.1:6514"},
        {"type": "syslog", "address": "udp://elastic:PASSW0RD99@h?api_key=KEY98"},
    ],
)
def test_urls_with_credentials_are_refused_without_repeating_them(entry: dict[str, Any]) -> None:
    """A user or password in a sink URL is a ConfigError (credentials belong in token_file or
    token_env), and no error message repeats the password or the query."""
    with pytest.raises(ConfigError) as err:
        sinks(entry)
    assert err.value.path == ("sinks[0].url" if entry["type"] == "http" else "sinks[0].address")
    assert "PASSW0RD99" not in str(err.value) and "KEY98" not in str(err.value)
