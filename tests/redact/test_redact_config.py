"""`redact:` in the config: safe defaults, validation with key paths, the hash key."""

from __future__ import annotations

import pytest

from proxylog.cli import main
from proxylog.config import Config, ConfigError, parse_config
from proxylog.config.redact import (
    DEFAULT_DETECTORS,
    DETECTOR_NAMES,
    OTEL_SIGNED_URL_KEYS,
    RAILS_FILTER_PARAMETERS,
    RedactSpec,
)
from proxylog.redact.detectors import DETECTORS


def test_defaults_apply_when_redact_is_absent() -> None:
    """Without `redact:` every deployment gets the credential headers, Rails and OpenTelemetry
    keys, the path patterns and the detectors, with mask and no body capture."""
    spec = Config().redact
    assert spec == parse_config({"redact": {}}).redact
    assert {"authorization", "proxy-authorization", "x-api-key", "x-auth-token"} <= set(spec.headers)
    assert set(RAILS_FILTER_PARAMETERS) <= set(spec.keys)
    assert set(OTEL_SIGNED_URL_KEYS) <= set(spec.exact_keys)
    assert spec.detectors == DEFAULT_DETECTORS and "email" not in spec.detectors
    assert spec.action == "mask" and not spec.body.capture and not spec.anonymize_ip


def test_every_detector_name_has_a_detector() -> None:
    """The names the config accepts and the detector registry are the same set."""
    assert set(DETECTOR_NAMES) == set(DETECTORS)


def test_config_lists_extend_the_defaults() -> None:
    """headers, keys and paths add to the built-in lists rather than replace them."""
    spec = parse_config(
        {"redact": {"headers": ["X-Partner"], "keys": ["iban"], "paths": [r"/share/(\w+)"]}}
    ).redact
    assert "x-partner" in spec.headers and "authorization" in spec.headers
    assert "iban" in spec.keys and "passw" in spec.keys
    assert r"/share/(\w+)" in spec.paths and RedactSpec().paths[0] in spec.paths


@pytest.mark.parametrize(
    ("redact", "path", "message"),
    [
        ({"paths": ["/ok/(x)", "/bad/(unclosed"]}, "redact.paths[1]", "re2 rejected the pattern"),
        ({"paths": [r"(?<=lookbehind)x"]}, "redact.paths[0]", "re2 rejected the pattern"),
        ({"keys": ["fine", "/(bad/"]}, "redact.keys[1]", "re2 rejected the pattern"),
        ({"detectors": ["jwt", "ssn_us"]}, "redact.detectors[1]", "expected one of"),
        ({"action": "scramble"}, "redact.action", "expected one of mask, hash, partial, drop"),
        ({"actions": {"query": "blur"}}, "redact.actions.query", "expected one of"),
        ({"actions": {"cookiez": "mask"}}, "redact.actions.cookiez", "unknown key"),
        ({"headers": ["bad header"]}, "redact.headers[0]", "not a valid header name"),
        ({"body": {"max_bytes": "2g"}}, "redact.body.max_bytes", "at most 1m"),
        ({"body": {"capture": "yes"}}, "redact.body.capture", "expected true or false"),
        ({"anonymise_ip": True}, "redact.anonymise_ip", "unknown key"),
        ({"action": "hash"}, "redact.action", "needs a key"),
        ({"actions": {"jwt": "hash"}}, "redact.actions.jwt", "needs a key"),
    ],
)
def test_bad_redact_config_names_the_key_path(redact: dict[str, object], path: str, message: str) -> None:
    """Each invalid value is a ConfigError at its own key path."""
    with pytest.raises(ConfigError) as err:
        parse_config({"redact": redact})
    assert err.value.path == path
    assert message in err.value.message


def test_hash_key_from_a_file(tmp_path) -> None:
    """The key is read from hash_key_file (surrounding whitespace ignored) and never shown."""
    key_file = tmp_path / "hash.key"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    spec = parse_config({"redact": {"action": "hash", "hash_key_file": str(key_file)}}).redact
    assert spec.hash_key == b"0123456789abcdef0123456789abcdef"
    assert "0123456789abcdef" not in repr(spec)


@pytest.mark.parametrize(
    ("setup", "path", "message"),
    [
        ({"hash_key_file": "/nonexistent/proxylog.key"}, "redact.hash_key_file", "cannot read"),
        ({"hash_key_env": "PROXYLOG_TEST_UNSET_KEY"}, "redact.hash_key_env", "is not set"),
        ({"hash_key_env": "PROXYLOG_TEST_SHORT_KEY"}, "redact.hash_key_env", "at least 16 bytes"),
        ({"hash_key_env": "A", "hash_key_file": "/x"}, "redact.hash_key_env", "only one of"),
    ],
)
def test_hash_key_problems_are_config_errors(
    setup: dict[str, str], path: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing, unreadable or short key is caught at load time (`proxylog check`)."""
    monkeypatch.delenv("PROXYLOG_TEST_UNSET_KEY", raising=False)
    monkeypatch.setenv("PROXYLOG_TEST_SHORT_KEY", "short")
    with pytest.raises(ConfigError) as err:
        parse_config({"redact": {"action": "hash", **setup}})
    assert err.value.path == path
    assert message in err.value.message


def test_proxylog_check_reports_a_bad_pattern(tmp_path, capsys) -> None:
    """`proxylog check` exits 2 and names the pattern's key path."""
    config = tmp_path / "proxylog.yaml"
    config.write_text("redact:\n  paths:\n    - '/ok'\n    - '/bad/(('\n")
    assert main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "redact.paths[1]: re2 rejected the pattern '/bad/(('" in err
