"""The rule engine's specs: frozen values the config parser (proxylog.config.rules) produces
and the engine (proxylog.rules) compiles. Plain data, no parsing here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from proxylog.net import IPNetwork
from proxylog.record import Mode

DEFAULT_MAX_KEYS = 100_000

KeyKind = Literal["client", "client_net", "global"]
KEY_KINDS: tuple[KeyKind, ...] = get_args(KeyKind)
Action = Literal["tag", "block"]
ACTIONS: tuple[Action, ...] = get_args(Action)
Precision = Literal["exact", "approx"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
Distinct = Literal["path", "query", "url", "user_agent", "method", "host"]
DISTINCTS: tuple[Distinct, ...] = get_args(Distinct)
PatternField = Literal["path", "query", "url", "user_agent", "host"]
PATTERN_FIELDS: tuple[PatternField, ...] = get_args(PatternField)
IntelFormat = Literal["auto", "netset", "plain", "spamhaus", "json"]
INTEL_FORMATS: tuple[IntelFormat, ...] = get_args(IntelFormat)


DEFAULT_BODY_LIMIT = 16_384
InspectFamily = Literal[
    "sqli", "nosql", "xss", "rce", "php", "java", "lfi", "rfi", "session-fixation", "protocol", "generic"
]
INSPECT_FAMILIES: tuple[InspectFamily, ...] = get_args(InspectFamily)


@dataclass(frozen=True, slots=True)
class InspectSpec:
    """Attack-payload inspection (CRS-style): the request's anomaly score from the catalog's
    rules up to `paranoia`, minus `exclude_ids` (and outside `families`, when given), must
    reach `threshold`. Buffered bodies up to `body_limit` bytes are inspected when `body`."""

    paranoia: int = 1
    threshold: int = 5
    exclude_ids: frozenset[int] = frozenset()
    families: frozenset[InspectFamily] = frozenset()
    body: bool = True
    body_limit: int = DEFAULT_BODY_LIMIT


@dataclass(frozen=True, slots=True)
class MatchSpec:
    """Conditions on a request (and its response status); all must hold, values are any-of.

    `patterns` holds re2 patterns or ``@list`` names per field; an empty user-agent pattern
    matches a missing or empty User-Agent.
    """

    methods: frozenset[str] = frozenset()
    statuses: frozenset[int] = frozenset()
    patterns: tuple[tuple[PatternField, tuple[str, ...]], ...] = ()
    headers: tuple[str, ...] = ()
    missing_headers: tuple[str, ...] = ()
    inspect: InspectSpec | None = None

    def __bool__(self) -> bool:
        return bool(
            self.methods
            or self.statuses
            or self.patterns
            or self.headers
            or self.missing_headers
            or self.inspect is not None
        )


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What a rule counts per: the client IP, its network (with an optional wider tier), or
    everything at once."""

    kind: KeyKind = "client"
    v4_prefix: int = 32
    v6_prefix: int = 64
    tier_v4: int | None = None
    tier_v6: int | None = None
    tier_factor: int = 1


@dataclass(frozen=True, slots=True)
class EscalateSpec:
    """Repeat offenders: the n-th ban lasts ``ban * factor**(n-1)``, at most `max`; offences
    are forgotten after `memory` seconds without one."""

    factor: float = 2.0
    max: float = 86_400.0
    memory: float = 86_400.0


@dataclass(frozen=True, slots=True)
class ResponseSpec:
    """What a blocked client receives."""

    status: int = 403
    body: str | None = None


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One threshold rule: a match, a key, a threshold within a window, and an action."""

    id: str
    when: MatchSpec = field(default_factory=MatchSpec)
    unless: MatchSpec = field(default_factory=MatchSpec)
    key: KeySpec = field(default_factory=KeySpec)
    threshold: int = 1
    window: float = 60.0
    precision: Precision = "exact"
    distinct: Distinct | None = None
    action: Action = "tag"
    tags: tuple[str, ...] = ()
    tag_matches: bool = False
    ban: float | None = None
    escalate: EscalateSpec | None = None
    mode: Mode | None = None
    response: ResponseSpec = field(default_factory=ResponseSpec)
    max_keys: int = DEFAULT_MAX_KEYS
    description: str | None = None

    @property
    def phase(self) -> Literal["request", "response"]:
        """Rules that look at the status run once the response is known; the others at request time."""
        return "response" if self.when.statuses or self.unless.statuses else "request"


@dataclass(frozen=True, slots=True)
class IntelSpec:
    """A threat-intel list of IPs and CIDRs, re-read from `file` every `refresh` seconds."""

    name: str
    file: str
    format: IntelFormat = "auto"
    action: Action = "block"
    tags: tuple[str, ...] = ()
    refresh: float = 3600.0
    include_private: bool = False
    mode: Mode | None = None
    response: ResponseSpec = field(default_factory=ResponseSpec)


@dataclass(frozen=True, slots=True)
class RulesSpec:
    """Everything the rule engine is compiled from."""

    rules: tuple[RuleSpec, ...] = ()
    intel: tuple[IntelSpec, ...] = ()
    allow: tuple[IPNetwork, ...] = ()
    packs: tuple[str, ...] = ()  # the rule pack files read (a config watcher may watch them)
