"""Value detectors: re2 patterns for secrets that are recognisable wherever they appear.

Each pattern tolerates the percent-encoded forms a URL gives its separators (``%20``, ``+``,
``%2D``, ``%2E``, ``%40``), so a card number or key in a query string is found without decoding it first.
A detector's ``secret`` group (or its whole match) is what gets redacted; `refine` narrows
it or rejects a look-alike (a digit run that fails the Luhn check is not a card number).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind of secret: a re2 pattern, an optional `refine` giving the span of the matched
    text that is really a secret (None: not one), and how a secret is normalised before a
    hash or partial action (so that its formatting does not change the token)."""

    name: str
    pattern: str
    refine: Callable[[str], tuple[int, int] | None] | None = None
    normalize: Callable[[str], str] | None = None


# Percent-encoded separators a card number may carry: blanked before digits are read.
_ENCODED_SEPARATORS = ("%20", "%2D", "%2d")


def _blank_separators(text: str) -> str:
    """`text` with each encoded separator replaced by three spaces (so spans still index it)."""
    if "%" in text:
        for separator in _ENCODED_SEPARATORS:
            text = text.replace(separator, "   ")
    return text


def digits(text: str) -> str:
    """The decimal digits of `text`, in order (``%20`` and ``%2D`` separators are not digits)."""
    return "".join(c for c in _blank_separators(text) if "0" <= c <= "9")


def luhn_ok(number: str) -> bool:
    """True when a digit string passes the Luhn checksum."""
    total = 0
    for index, char in enumerate(reversed(number)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def card_span(text: str) -> tuple[int, int] | None:
    """The longest run of whole digit groups in `text` that is a card number (13 to 19 digits
    passing Luhn), or None. Groups are split at separators, so ``4111 1111 1111 1111 12``
    yields the card and leaves the ``12``."""
    text = _blank_separators(text)
    groups: list[tuple[int, int]] = []
    start = None
    for index, char in enumerate(text):
        if "0" <= char <= "9":
            if start is None:
                start = index
        elif start is not None:
            groups.append((start, index))
            start = None
    if start is not None:
        groups.append((start, len(text)))
    best: tuple[int, int] | None = None
    for first in range(len(groups)):
        for last in range(len(groups) - 1, first - 1, -1):
            span = (groups[first][0], groups[last][1])
            number = digits(text[span[0] : span[1]])
            if 13 <= len(number) <= 19 and luhn_ok(number):
                if best is None or span[1] - span[0] > best[1] - best[0]:
                    best = span
                break
    return best


_SPACE = r"(?:\s|%20|\+)"
_B64 = r"(?:[A-Za-z0-9_\-+/=.]|%2[BbEeFf]|%3[Dd])"

DETECTORS: dict[str, Detector] = {
    # JWS/JWE compact tokens and other base64 JSON tokens (Rails signed messages start the
    # same way); dots and a ``--digest`` suffix are part of the match, and so is a cut token.
    "jwt": Detector("jwt", rf"\beyJ{_B64}{{8,}}"),
    "bearer": Detector(
        "bearer",
        rf"(?i:\bbearer){_SPACE}+(?P<secret>(?:[A-Za-z0-9._~+/=\-]|%[0-9A-Fa-f]{{2}}){{8,}})",
    ),
    # Visa, Mastercard (51-55, 2221-2720), Amex, Diners, JCB, Discover, UnionPay prefixes.
    "credit_card": Detector(
        "credit_card",
        r"(?:\b|%[0-9A-Fa-f]{2})"
        r"(?P<secret>(?:4|5[1-5]|2[2-7]|3[0-9]|6[0-9])(?:(?:[ \-]|%20|%2[Dd]|\+)?[0-9]){11,18})\b",
        refine=card_span,
        normalize=digits,
    ),
    "aws_access_key": Detector(
        "aws_access_key",
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA|A3T[A-Z0-9])[A-Z0-9]{16}\b",
    ),
    # A cut block (no END line) is redacted to the end of the text.
    "private_key": Detector(
        "private_key",
        r"-----BEGIN[ A-Z0-9%+]*PRIVATE(?:%20|[ +])KEY(?s:.*?)"
        r"(?:-----END[ A-Z0-9%+]*PRIVATE(?:%20|[ +])KEY[ A-Z0-9%+]*-----|$)",
    ),
    # GitHub, Slack, Stripe live keys and Google API keys: prefixes no ordinary text carries.
    "known_tokens": Detector(
        "known_tokens",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|xox[abposr]-[A-Za-z0-9\-]{10,}"
        r"|[sr]k_live_[A-Za-z0-9]{16,}|AIza[0-9A-Za-z_\-]{35})",
    ),
    "email": Detector(
        "email",
        r"[A-Za-z0-9._%+\-]+(?:@|%40)[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b",
    ),
}
