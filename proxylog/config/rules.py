"""Parsing ``rules:``, ``intel:`` and ``allow:`` into the specs of proxylog.config.rule_specs,
validated whole (the specs are re-exported here).

Every error names the key path (``rules[2].window: …``). Rules may come from packs
(``- include: rules/default.yaml``): files holding their own ``rules:`` and ``intel:``, whose
relative paths resolve against the pack's directory.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import re2
import yaml

from proxylog.config.reader import Node, load_yaml, optional
from proxylog.config.rule_specs import (
    ACTIONS,
    DEFAULT_BODY_LIMIT,
    DEFAULT_MAX_KEYS,
    DISTINCTS,
    INSPECT_FAMILIES,
    INTEL_FORMATS,
    KEY_KINDS,
    PATTERN_FIELDS,
    PRECISIONS,
    Action,
    EscalateSpec,
    InspectFamily,
    InspectSpec,
    IntelSpec,
    KeyKind,
    KeySpec,
    MatchSpec,
    PatternField,
    Precision,
    ResponseSpec,
    RuleSpec,
    RulesSpec,
)
from proxylog.errors import ConfigError
from proxylog.record import MODES, Mode

# An exact window stores up to `threshold` timestamps per key; above this, default to approx.
EXACT_MAX_THRESHOLD = 100
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_STATUS_CLASS = re.compile(r"^([1-5])xx$")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def named_lists() -> frozenset[str]:
    """The ``@name`` lists shipped in proxylog/rules/lists/ (``name.txt`` files)."""
    folder = resources.files("proxylog").joinpath("rules", "lists")
    return frozenset(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


def parse_rules(
    rules: Node | None,
    intel: Node | None,
    allow: Node | None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
) -> RulesSpec:
    """Validate ``rules:``, ``intel:`` and ``allow:`` into a RulesSpec; raises ConfigError.

    Relative paths (packs, intel files) resolve against `base_dir` (the config file's
    directory), else the working directory. Reads pack files; intel files must be readable.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    parser = _Parser()
    if rules is not None:
        parser.rule_list(rules, base, nested=False)
    if intel is not None:
        parser.intel_list(intel, base)
    return RulesSpec(
        rules=tuple(parser.rules),
        intel=tuple(parser.intel),
        allow=allow.networks() if allow is not None else (),
        packs=tuple(parser.packs),
    )


class _Parser:
    """Accumulates rules and intel lists across the config and the packs it includes."""

    def __init__(self) -> None:
        self.rules: list[RuleSpec] = []
        self.intel: list[IntelSpec] = []
        self._rule_paths: dict[str, str] = {}
        self._intel_paths: dict[str, str] = {}
        self._lists = named_lists()
        self.packs: list[str] = []

    def rule_list(
        self, node: Node, base: Path, *, nested: bool, exclude: frozenset[str] = frozenset()
    ) -> set[str]:
        """Parse a list of rules and includes; returns the ids of the rules `exclude` dropped."""
        if not isinstance(node.value, list):
            node.fail("expected a list of rules")
        dropped: set[str] = set()
        for item in node.items():
            if isinstance(item.value, dict) and "include" in item.value:
                if nested:
                    item.fail("a rule pack cannot include another pack")
                self._include(item, base)
                continue
            rule = self._rule(item)
            if rule.id in exclude:
                dropped.add(rule.id)
                continue
            if rule.id in self._rule_paths:
                item.fail(f"duplicate rule id {rule.id!r} (also at {self._rule_paths[rule.id]})")
            self._rule_paths[rule.id] = item.path
            self.rules.append(rule)
        return dropped

    def intel_list(self, node: Node, base: Path, exclude: frozenset[str] = frozenset()) -> set[str]:
        """Parse a list of intel lists; returns the names `exclude` dropped."""
        if not isinstance(node.value, list):
            node.fail("expected a list of threat-intel lists")
        dropped: set[str] = set()
        for item in node.items():
            spec = _intel(item, base)
            if spec.name in exclude:
                dropped.add(spec.name)
                continue
            if spec.name in self._intel_paths:
                item.fail(f"duplicate intel name {spec.name!r} (also at {self._intel_paths[spec.name]})")
            self._intel_paths[spec.name] = item.path
            self.intel.append(spec)
        return dropped

    def _include(self, item: Node, base: Path) -> None:
        fields = item.fields({"include", "exclude"})
        file_node = fields.require("include")
        path = _resolve(file_node.string(), base)
        exclude = frozenset(fields.require("exclude").strings()) if "exclude" in fields else frozenset()
        prefix = f"{file_node.path}({file_node.value})"
        try:
            data = load_yaml(path.read_text(encoding="utf-8"), prefix)
        except ConfigError as e:
            raise ConfigError(e.path, f"{e.message} of {str(path)!r}") from e
        except (OSError, UnicodeDecodeError) as e:
            file_node.fail(f"cannot read rule pack {str(path)!r}: {e}")
        except yaml.YAMLError as e:
            file_node.fail(f"rule pack {str(path)!r} is not valid YAML: {e}")
        self.packs.append(str(path))
        pack = Node(data, prefix).fields({"rules", "intel", "description"})
        dropped: set[str] = set()
        if "rules" in pack:
            dropped |= self.rule_list(pack.require("rules"), path.parent, nested=True, exclude=exclude)
        if "intel" in pack:
            dropped |= self.intel_list(pack.require("intel"), path.parent, exclude)
        if unknown := exclude - dropped:
            fields.require("exclude").fail(f"not in {file_node.value}: {', '.join(sorted(unknown))}")

    def _rule(self, node: Node) -> RuleSpec:
        fields = node.fields(_RULE_KEYS)
        rule_id = fields.require("id").string()
        if not _ID.match(rule_id):
            fields.require("id").fail(
                f"expected lower-case letters, digits, '-', '_' or '.' (at most 64), got {rule_id!r}"
            )
        when = self._match(fields.get("when"))
        unless = self._match(fields.get("unless"))
        threshold = optional(fields.get("threshold"), lambda n: n.integer(min=1, max=1_000_000), 1)
        precision_node = fields.get("precision")
        precision: Precision = (
            precision_node.choice(PRECISIONS)
            if precision_node is not None
            else ("exact" if threshold <= EXACT_MAX_THRESHOLD else "approx")
        )
        action: Action = optional(fields.get("action"), lambda n: n.choice(ACTIONS), "tag")
        key = _key(fields)
        rule = RuleSpec(
            id=rule_id,
            when=when,
            unless=unless,
            key=key,
            threshold=threshold,
            window=optional(fields.get("window"), lambda n: n.duration(min=0.001), 60.0),
            precision=precision,
            distinct=optional(fields.get("distinct"), lambda n: n.choice(DISTINCTS), None),
            action=action,
            tags=optional(fields.get("tags"), _tags, (rule_id,)),
            tag_matches=optional(fields.get("tag_matches"), Node.boolean, False),
            ban=optional(fields.get("ban"), lambda n: n.duration(min=1), None),
            escalate=optional(fields.get("escalate"), _escalate, None),
            mode=optional(fields.get("mode"), lambda n: Mode(n.choice(MODES)), None),
            response=optional(fields.get("response"), _response, _default_response(when, unless)),
            max_keys=optional(
                fields.get("max_keys"), lambda n: n.integer(min=1, max=10_000_000), DEFAULT_MAX_KEYS
            ),
            description=optional(fields.get("description"), Node.string, None),
        )
        _check_rule(rule, fields)
        return rule

    def _match(self, node: Node | None) -> MatchSpec:
        if node is None:
            return MatchSpec()
        fields = node.fields(_MATCH_KEYS)
        patterns: list[tuple[PatternField, tuple[str, ...]]] = []
        for name in PATTERN_FIELDS:
            child = fields.get(name)
            if child is not None:
                patterns.append((name, tuple(self._pattern(item, name) for item in _nonempty(child))))
        return MatchSpec(
            methods=frozenset(_methods(fields.get("method"))),
            statuses=frozenset(_statuses(fields.get("status"))),
            patterns=tuple(patterns),
            headers=_header_list(fields.get("headers")),
            missing_headers=_header_list(fields.get("missing_headers")),
            inspect=optional(fields.get("inspect"), _inspect, None),
        )

    def _pattern(self, item: Node, field_name: PatternField) -> str:
        text = item.string(allow_empty=field_name == "user_agent")
        if text.startswith("@"):
            if text[1:] not in self._lists:
                item.fail(
                    f"unknown list {text} (known lists: {', '.join('@' + n for n in sorted(self._lists))})"
                )
            return text
        if text == "":
            return text
        try:
            re2.compile(text, _RE2_OPTIONS)
        except re2.error as e:
            reason = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
            item.fail(f"invalid re2 pattern {text!r}: {reason}")
        # The engine matches every pattern of a field in one re2.Set, whose memory budget a
        # pattern can exceed even though it compiles on its own.
        alone = re2.Set.SearchSet(_RE2_OPTIONS)
        alone.Add(text)
        try:
            alone.Compile()
        except re2.error:
            item.fail(f"re2 pattern too large to compile ({len(text)} characters): shorten or split it")
        return text


# fmt: off
_RULE_KEYS = frozenset({
    "id", "description", "when", "unless", "key", "prefix", "tier", "threshold", "window", "precision",
    "distinct", "action", "tags", "tag_matches", "ban", "escalate", "mode", "response", "max_keys",
})
# fmt: on
_MATCH_KEYS = frozenset({"method", "status", "headers", "missing_headers", "inspect", *PATTERN_FIELDS})
_INTEL_KEYS = frozenset(
    {"name", "file", "format", "action", "tags", "refresh", "include_private", "mode", "response"}
)


def _inspect(node: Node) -> InspectSpec:
    """``inspect: true`` or ``inspect: {paranoia, threshold, exclude_ids, families, body,
    body_limit}``."""
    if isinstance(node.value, bool):
        if not node.value:
            node.fail("expected true or a mapping of inspection settings")
        return InspectSpec()
    fields = node.fields({"paranoia", "threshold", "exclude_ids", "families", "body", "body_limit"})
    excluded: list[int] = []
    if "exclude_ids" in fields:
        for item in _nonempty(fields.require("exclude_ids")):
            excluded.append(item.integer(min=900_000, max=999_999))
    families: list[InspectFamily] = []
    if "families" in fields:
        families = [item.choice(INSPECT_FAMILIES) for item in _nonempty(fields.require("families"))]
    return InspectSpec(
        paranoia=optional(fields.get("paranoia"), lambda n: n.integer(min=1, max=4), 1),
        threshold=optional(fields.get("threshold"), lambda n: n.integer(min=1, max=1000), 5),
        exclude_ids=frozenset(excluded),
        families=frozenset(families),
        body=optional(fields.get("body"), Node.boolean, True),
        body_limit=optional(
            fields.get("body_limit"), lambda n: n.integer(min=0, max=1 << 20), DEFAULT_BODY_LIMIT
        ),
    )


def _key(fields: Any) -> KeySpec:
    kind: KeyKind = optional(fields.get("key"), lambda n: n.choice(KEY_KINDS), "client")
    prefix, tier = fields.get("prefix"), fields.get("tier")
    for node in (prefix, tier):
        if node is not None and kind != "client_net":
            node.fail("only a rule with key: client_net has network prefixes")
    v4, v6 = 32, 64
    if prefix is not None:
        p = prefix.fields({"v4", "v6"})
        v4 = optional(p.get("v4"), lambda n: n.integer(min=8, max=32), v4)
        v6 = optional(p.get("v6"), lambda n: n.integer(min=16, max=128), v6)
    spec = KeySpec(kind=kind, v4_prefix=v4, v6_prefix=v6)
    if tier is None:
        return spec
    t = tier.fields({"v4", "v6", "factor"})
    tier_v4 = optional(t.get("v4"), lambda n: n.integer(min=8, max=32), None)
    tier_v6 = optional(t.get("v6"), lambda n: n.integer(min=16, max=128), None)
    if tier_v4 is None and tier_v6 is None:
        tier.fail("name a wider prefix for v4 and/or v6, e.g. {v6: 48, factor: 4}")
    if tier_v4 is not None and tier_v4 >= v4:
        t.require("v4").fail(f"a tier must be wider than the /{v4} key, got /{tier_v4}")
    if tier_v6 is not None and tier_v6 >= v6:
        t.require("v6").fail(f"a tier must be wider than the /{v6} key, got /{tier_v6}")
    factor = optional(t.get("factor"), lambda n: n.integer(min=1, max=1000), 4)
    return KeySpec(kind, v4, v6, tier_v4, tier_v6, factor)


def _check_rule(rule: RuleSpec, fields: Any) -> None:
    """Cross-field checks, each naming the key that is wrong."""
    if rule.ban is not None and rule.action != "block":
        fields.require("ban").fail("only action: block can ban (a tag rule never bans)")
    if rule.escalate is not None and rule.ban is None:
        fields.require("escalate").fail("escalation needs a ban: to escalate")
    if rule.key.kind == "global" and rule.ban is not None:
        fields.require("ban").fail("a key: global rule cannot ban (it would ban every client)")
    if rule.action == "block" and rule.phase == "response" and rule.ban is None:
        node = fields.get("action") or fields.require("id")
        node.fail(
            "a block on a status rule needs a ban: the response is already sent when it fires, "
            "so only later requests can be blocked"
        )
    if "response" in fields and rule.action != "block":
        fields.require("response").fail("only action: block sends a response")
    if rule.distinct in ("query", "url") and rule.precision == "exact" and rule.threshold > 1000:
        fields.require("threshold").fail("a distinct exact window keeps one value per count: at most 1000")


def _default_response(when: MatchSpec, unless: MatchSpec) -> ResponseSpec:
    # A rule that counts every request (or only by method) is a rate limit: 429 + Retry-After.
    is_rate = not (when.statuses or when.patterns or when.headers or when.missing_headers or when.inspect)
    return ResponseSpec(status=429 if is_rate else 403)


def _intel(node: Node, base: Path) -> IntelSpec:
    fields = node.fields(_INTEL_KEYS)
    name_node = fields.require("name")
    name = name_node.string()
    if not _ID.match(name):
        name_node.fail(f"expected lower-case letters, digits, '-', '_' or '.', got {name!r}")
    file_node = fields.require("file")
    path = _resolve(file_node.string(), base)
    if not os.access(path, os.R_OK):
        file_node.fail(f"cannot read {str(path)!r}")
    return IntelSpec(
        name=name,
        file=str(path),
        format=optional(fields.get("format"), lambda n: n.choice(INTEL_FORMATS), "auto"),
        action=optional(fields.get("action"), lambda n: n.choice(ACTIONS), "block"),
        tags=optional(fields.get("tags"), _tags, (name,)),
        refresh=optional(fields.get("refresh"), lambda n: n.duration(min=1), 3600.0),
        include_private=optional(fields.get("include_private"), Node.boolean, False),
        mode=optional(fields.get("mode"), lambda n: Mode(n.choice(MODES)), None),
        response=optional(fields.get("response"), _response, ResponseSpec()),
    )


def _escalate(node: Node) -> EscalateSpec:
    fields = node.fields({"factor", "max", "memory"})
    default = EscalateSpec()
    maximum = optional(fields.get("max"), lambda n: n.duration(min=1), default.max)
    return EscalateSpec(
        factor=optional(fields.get("factor"), lambda n: n.number(min=1, max=100), default.factor),
        max=maximum,
        memory=optional(fields.get("memory"), lambda n: n.duration(min=1), max(default.memory, maximum)),
    )


def _response(node: Node) -> ResponseSpec:
    fields = node.fields({"status", "body"})
    return ResponseSpec(
        status=optional(fields.get("status"), lambda n: n.integer(min=400, max=599), 403),
        body=optional(fields.get("body"), lambda n: n.string(allow_empty=True), None),
    )


def _tags(node: Node) -> tuple[str, ...]:
    tags = []
    for item in _nonempty(node):
        tag = item.string()
        if not _TAG.match(tag):
            item.fail(f"a tag is letters, digits, '-', '_', '.' or ':' (at most 64), got {tag!r}")
        tags.append(tag)
    return tuple(dict.fromkeys(tags))


def _methods(node: Node | None) -> list[str]:
    if node is None:
        return []
    methods = []
    for item in _nonempty(node):
        method = item.string().strip().upper()
        if not method.isalpha():
            item.fail(f"expected an HTTP method like GET or POST, got {item.value!r}")
        methods.append(method)
    return methods


def _statuses(node: Node | None) -> list[int]:
    if node is None:
        return []
    codes: list[int] = []
    for item in _nonempty(node):
        value = item.value
        if isinstance(value, int) and not isinstance(value, bool):
            codes.append(item.integer(min=100, max=599))
            continue
        text = item.string().strip().lower()
        if text.isdigit() and 100 <= int(text) <= 599:
            codes.append(int(text))
        elif match := _STATUS_CLASS.match(text):
            first = int(match.group(1)) * 100
            codes.extend(range(first, first + 100))
        else:
            item.fail(f"expected a status code like 404 or a class like 4xx, got {value!r}")
    return codes


def _header_list(node: Node | None) -> tuple[str, ...]:
    if node is None:
        return ()
    _nonempty(node)
    return node.header_names()


def _nonempty(node: Node) -> list[Node]:
    items = list(node.items())
    if not items:
        node.fail("must not be empty")
    return items


def _resolve(text: str, base: Path) -> Path:
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else base / path
