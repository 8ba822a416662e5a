"""Config parsing: valid files load; every invalid value is an error naming its key path."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxylog.config import Config, ConfigError, FileSpec, load_config, parse_config
from tests.conftest import ROOT


def test_the_shipped_default_config_is_valid() -> None:
    """configs/proxylog.yaml parses: monitor mode, stdout sink."""
    config = load_config(ROOT / "configs" / "proxylog.yaml")
    assert config.mode == "monitor"
    assert [s.type for s in config.sinks] == ["stdout"]


def test_a_full_core_config_parses() -> None:
    """Every core key is read into its typed spec."""
    config = parse_config(
        {
            "upstream": "http://127.0.0.1:3000",
            "listen": "[::1]:8081",
            "trusted_proxies": ["10.0.0.0/8", "192.0.2.1"],
            "timeouts": {"upstream": "1.5s", "drain": "1m", "idle": 30},
            "limits": {"body_size": "10MB", "stream_threshold": "64k"},
            "record": {"headers": ["Referer", "X-Forwarded-For"], "max_field_bytes": "8k", "schema": "flat"},
            "sinks": [{"type": "stdout"}, {"type": "file", "path": "/tmp/a.jsonl", "queue": 50}],
        }
    )
    assert config.listen == ("::1", 8081)
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.1/32"),
    )
    assert (config.timeouts.upstream, config.timeouts.drain, config.timeouts.idle) == (1.5, 60.0, 30.0)
    assert (config.limits.body_size, config.limits.stream_threshold) == (10 * 1024**2, 64 * 1024)
    assert config.record.headers == ("referer", "x-forwarded-for")
    assert config.record.max_field_bytes == 8192
    file_spec = FileSpec(type="file", name="file:/tmp/a.jsonl", path="/tmp/a.jsonl", queue=50, schema="flat")
    assert config.sinks[1] == file_spec


def test_an_empty_file_means_defaults() -> None:
    """An empty document is the default Config."""
    assert parse_config(None) == Config(source=None, state_dir=Config().state_dir)


@pytest.mark.parametrize(
    ("data", "path", "fragment"),
    [
        ({"upstrem": "http://x"}, "upstrem", "unknown key"),
        ({"upstream": "ftp://x"}, "upstream", "http/https URL"),
        ({"upstream": "http://"}, "upstream", "URL"),
        ({"listen": "8080"}, "listen", "HOST:PORT"),
        ({"listen": "127.0.0.1:99999"}, "listen", "HOST:PORT"),
        ({"mode": "block"}, "mode", "monitor, enforce"),
        ({"trusted_proxies": ["10.0.0.0/8", "10.0.0/33"]}, "trusted_proxies[1]", "CIDR"),
        ({"trusted_proxies": ["10.0.0.0/8", "0.0.0.0/0"]}, "trusted_proxies[1]", "too broad to trust"),
        ({"trusted_proxies": ["::/0"]}, "trusted_proxies[0]", "X-Forwarded-For"),
        ({"trusted_proxies": "0.0.0.0/0"}, "trusted_proxies", "too broad"),
        ({"trusted_proxies": ["10.0.0.0/7"]}, "trusted_proxies[0]", "shorter than /8"),
        ({"trusted_proxies": ["2001::/15"]}, "trusted_proxies[0]", "shorter than /16"),
        ({"trusted_proxies": ["::ffff:0:0/96"]}, "trusted_proxies[0]", "too broad"),  # all of IPv4
        ({"timeouts": {"upstream": "soon"}}, "timeouts.upstream", "duration"),
        ({"timeouts": {"upstream": -1}}, "timeouts.upstream", "at least"),
        ({"timeouts": {"idle": "0s"}}, "timeouts.idle", "at least"),
        ({"limits": {"body_size": "lots"}}, "limits.body_size", "size"),
        ({"timeouts": {"body_rate": "fast"}}, "timeouts.body_rate", "size"),
        ({"timeouts": {"body_window": "a while"}}, "timeouts.body_window", "duration"),
        ({"timeouts": {"write": -2}}, "timeouts.write", "at least"),
        ({"limits": {"connections_per_client": 0}}, "limits.connections_per_client", "at least 1"),
        ({"record": {"headers": ["bad header"]}}, "record.headers[0]", "header name"),
        ({"record": {"max_field_bytes": 10}}, "record.max_field_bytes", "at least"),
        ({"record": "nested"}, "record", "mapping"),
        ({"sinks": [{"type": "kafka"}]}, "sinks[0].type", "stdout, file"),
        ({"sinks": [{"type": "file"}]}, "sinks[0].path", "required"),
        ({"sinks": [{"type": "stdout", "path": "x"}]}, "sinks[0].path", "unknown key"),
        ({"sinks": [{"type": "stdout", "queue": 0}]}, "sinks[0].queue", "at least 1"),
        ({"sinks": [{"type": "stdout"}, {"type": "stdout"}]}, "sinks[1]", "duplicate sink name"),
        ({"sinks": ["stdout"]}, "sinks[0]", "mapping"),
        ([1, 2], "", "mapping"),
    ],
)
def test_invalid_values_name_their_key_path(data: object, path: str, fragment: str) -> None:
    """Each invalid value raises ConfigError whose path is the offending key."""
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert err.value.path == path
    assert fragment in err.value.message


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    """A YAML syntax error is reported as a ConfigError mentioning the file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("sinks: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxylog.cli", "check", str(path)], capture_output=True, text=True, timeout=60
    )


def test_check_command_exit_codes(tmp_path: Path) -> None:
    """`proxylog check` exits 0 for a valid file and 2 for an invalid one, naming the key path."""
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"upstream": "http://127.0.0.1:3000"}))
    assert _check(good).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sinks": [{"type": "file"}]}))
    result = _check(bad)
    assert result.returncode == 2
    assert "sinks[0].path: is required" in result.stderr
    assert _check(tmp_path / "missing.yaml").returncode == 2
    modes = tmp_path / "modes.yaml"
    modes.write_text(yaml.safe_dump({"modes": ["nonsense:thing"]}))
    assert "modes[0]" in _check(modes).stderr


@pytest.mark.parametrize(
    "config",
    [
        {"sinks": [{"type": "file", "path": "x.jsonl", "integrity": {"key_file": "/nonexistent/key"}}]},
        {"alerts": [{"type": "webhook", "url": "http://127.0.0.1:9/h", "token_file": "/nonexistent/token"}]},
        {"control": {"tcp": "127.0.0.1:9901", "token_env": "PROXYLOG_TEST_UNSET_TOKEN"}},
    ],
    ids=["sink-key", "alert-token", "control-token"],
)
def test_check_reads_the_secrets_serve_would_need(tmp_path: Path, config: dict) -> None:
    """`proxylog check` fails (exit 2) when a key or token file serve needs is missing."""
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _check(path)
    assert result.returncode == 2, result.stdout
    assert "nonexistent" in result.stderr or "PROXYLOG_TEST_UNSET_TOKEN" in result.stderr


def test_check_builds_the_rule_engine(tmp_path: Path) -> None:
    """Patterns that each compile but are too large for re2 to compile together fail `check`
    (exit 2, naming the field and the rules), as they would fail `serve` and a reload."""
    rules = [
        {
            "id": f"r{i}",
            "when": {"path": "(" + "|".join(f"w{i}x{j}[a-z]{{3}}q" for j in range(300)) + ")"},
            "threshold": 1,
        }
        for i in range(80)
    ]
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump({"rules": rules}))
    result = _check(path)
    assert result.returncode == 2, result.stdout
    assert "too large for re2 to compile together" in result.stderr and "r0" in result.stderr


@pytest.mark.parametrize(
    ("text", "path", "lines"),
    [
        ("redact:\n  keys: [iban]\nmode: monitor\nredact:\n  actions: {}\n", "redact", (1, 4)),
        ("timeouts:\n  upstream: 1s\n  upstream: 2s\n", "timeouts.upstream", (2, 3)),
        ("sinks:\n  - type: stdout\n  - type: file\n    path: a\n    path: b\n", "sinks[1].path", (4, 5)),
        ("record: {schema: flat, schema: nested}\n", "record.schema", (1, 1)),
    ],
)
def test_duplicate_keys_are_errors(tmp_path: Path, text: str, path: str, lines: tuple[int, int]) -> None:
    """A key given twice at any depth is a ConfigError naming its path and both lines, never
    a silent last-one-wins (a second `redact:` would drop the first's keys)."""
    config = tmp_path / "dup.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.path == path
    assert f"line {lines[0]} and again at line {lines[1]}" in err.value.message
    assert str(config) in err.value.message


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    """Overriding a key merged in with `<<:` is YAML's intent, not a duplicate."""
    config = tmp_path / "merge.yaml"
    data = "timeouts:\n  <<: {upstream: 5s, drain: 1s}\n  drain: 2s\n"
    config.write_text(data)
    assert load_config(config).timeouts.drain == 2.0


def test_rule_packs_refuse_duplicate_keys(tmp_path: Path) -> None:
    """An included rule pack is read with the same loader: a duplicate key in it is an error
    whose path runs through the include."""
    (tmp_path / "pack.yaml").write_text("rules:\n  - id: a\n    threshold: 1\n    threshold: 5\n")
    config = tmp_path / "proxylog.yaml"
    config.write_text("rules:\n  - include: pack.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.path == "rules[0].include(pack.yaml).rules[0].threshold"
    assert "line 3 and again at line 4" in err.value.message


def test_check_refuses_duplicate_keys(tmp_path: Path) -> None:
    """`proxylog check` exits 2 on a duplicate key, naming it and both lines."""
    config = tmp_path / "dup.yaml"
    config.write_text("redact:\n  keys: [iban]\nredact:\n  keys: []\n")
    result = _check(config)
    assert result.returncode == 2
    assert "redact: duplicate key: given at line 1 and again at line 3" in result.stderr


def test_an_upstream_with_credentials_is_refused() -> None:
    """`upstream` refuses a user or password, and the error does not repeat it."""
    with pytest.raises(ConfigError) as err:
        parse_config({"upstream": "http://puma:PASSW0RD99@127.0.0.1:3000"})
    assert err.value.path == "upstream"
    assert "user or password" in err.value.message and "PASSW0RD99" not in err.value.message


def test_the_broadest_trusted_proxies_allowed() -> None:
    """A /8 of IPv4 and a /16 of IPv6 are still accepted as trusted proxies, and so are the
    private and link-local ranges whatever their width (fc00::/7 is in Rails' own list)."""
    config = parse_config({"trusted_proxies": ["10.0.0.0/8", "fd00::/16", "fc00::/7", "fe80::/10"]})
    assert [net.prefixlen for net in config.trusted_proxies] == [8, 16, 7, 10]


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"state_dir": "/proc/nope"}, "state_dir"),
        ({"state_dir": "{tmp}/a-file/state"}, "state_dir"),
        ({"sinks": [{"type": "file", "path": "/proc/nope/logs/access.jsonl"}]}, "sinks[0].path"),
        ({"sinks": [{"type": "stdout", "spool": "/proc/nope/spool"}]}, "sinks[0].spool"),
    ],
)
def test_check_fails_on_directories_serve_cannot_create(tmp_path: Path, config: dict, path: str) -> None:
    """`proxylog check` exits 2, naming the key, when the state directory or a file sink's
    directory could not be created, as `serve` would then fail."""
    (tmp_path / "a-file").write_text("")
    config = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in config.items()}
    if "state_dir" not in config:
        config["state_dir"] = str(tmp_path / "state")
    file = tmp_path / "dirs.yaml"
    file.write_text(yaml.safe_dump(config))
    result = _check(file)
    assert result.returncode == 2, result.stdout
    assert f"{path}: cannot" in result.stderr


def test_check_creates_nothing(tmp_path: Path) -> None:
    """Missing but creatable directories pass `check`, which leaves them uncreated."""
    config = {
        "state_dir": str(tmp_path / "state" / "proxylog"),
        "sinks": [{"type": "file", "path": str(tmp_path / "logs" / "access.jsonl")}],
    }
    file = tmp_path / "dirs.yaml"
    file.write_text(yaml.safe_dump(config))
    result = _check(file)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dirs.yaml"]


def test_slow_client_limits_reach_the_fast_plane() -> None:
    """`timeouts.body_rate/body_window/write` and `limits.connections_per_client` are what
    the fast plane enforces (its defaults otherwise)."""
    from proxylog.fast.plane import fast_options

    config = parse_config(
        {
            "timeouts": {"body_rate": "2k", "body_window": "5s", "write": "30s"},
            "limits": {"connections_per_client": 16},
        }
    )
    options = fast_options(config)
    assert (options.body_rate, options.body_window, options.write_timeout) == (2048, 5.0, 30.0)
    assert options.connections_per_client == 16
    defaults = fast_options(Config())
    assert (defaults.body_rate, defaults.body_window, defaults.write_timeout) == (1024, 10.0, 60.0)
    assert defaults.connections_per_client == 64
