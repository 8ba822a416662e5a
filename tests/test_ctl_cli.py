"""`proxylog ctl` usage errors exit 2 before anything is contacted; durations compound."""

from __future__ import annotations

import pytest

from proxylog.cli import main
from proxylog.config import parse_duration


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mode", "bogus"], "expected one of monitor, enforce"),
        (["ban", "10.0.0.0/33"], "expected an IP address or CIDR"),
        (["unban", "not-an-ip"], "expected an IP address or CIDR"),
        (["allow", "add", "10.0.0.300"], "expected an IP address or CIDR"),
        (["ban", "192.0.2.1", "--ttl", "soon"], "--ttl 'soon'"),
        (["reload", "extra"], "wrong arguments"),
    ],
)
def test_usage_errors_exit_2_without_contacting_proxylog(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    """A bad mode, address, TTL or argument count is a usage error (2), not a refusal (1)."""
    assert main(["ctl", "--socket", str(tmp_path / "none.sock"), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m30s", 90.0), ("1h30m", 5400.0), ("1d12h", 129600.0), ("2m500ms", 120.5), ("45s", 45.0)],
)
def test_compound_durations(text: str, seconds: float) -> None:
    """Durations add up from the largest unit to the smallest."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30s1m", "1m1m", "1m 30s", "m30s"])
def test_compound_durations_refuse_what_is_likely_a_typo(text: str) -> None:
    """Units out of order or repeated are refused, not guessed."""
    with pytest.raises(ValueError):
        parse_duration(text)
