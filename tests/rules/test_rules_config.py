"""`rules:`, `intel:` and `allow:` parsing: specs, defaults, packs, and errors naming the key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxylog.config import ConfigError, parse_config
from proxylog.config.reader import Node
from proxylog.config.rule_specs import RulesSpec
from proxylog.config.rules import named_lists, parse_rules
from proxylog.rules.named_lists import load_list

ROOT = Path(__file__).resolve().parents[2]
INTEL = ROOT / "configs" / "intel" / "firehol_level1.netset"


def _rule(**fields: Any) -> dict[str, Any]:
    return {"id": "r", **fields}


def _parse(rules: Any = None, intel: Any = None, allow: Any = None, base: Path | None = None) -> RulesSpec:
    return parse_rules(
        None if rules is None else Node(rules, "rules"),
        None if intel is None else Node(intel, "intel"),
        None if allow is None else Node(allow, "allow"),
        base_dir=base,
    )


BAD_RULES = [
    ([_rule(), _rule(id="b"), _rule(id="c", window="soon")], "rules[2].window", "expected a duration"),
    ([_rule(), _rule()], "rules[1]", "duplicate rule id 'r' (also at rules[0])"),
    ([_rule(threshold=-3)], "rules[0].threshold", "must be at least 1, got -3"),
    ([_rule(threshold=0)], "rules[0].threshold", "must be at least 1"),
    ([_rule(when={"path": "(?<=x)a"})], "rules[0].when.path", "invalid re2 pattern '(?<=x)a'"),
    ([_rule(when={"path": ["^/ok", "a{1001}"]})], "rules[0].when.path[1]", "invalid re2 pattern"),
    ([_rule(when={"path": "x" * 100_000})], "rules[0].when.path", "too large to compile"),
    ([_rule(when={"path": "@sensitive-file"})], "rules[0].when.path", "unknown list @sensitive-file"),
    ([_rule(when={"paths": "/x"})], "rules[0].when.paths", "unknown key"),
    ([_rule(color="red")], "rules[0].color", "unknown key"),
    ([{"threshold": 3}], "rules[0].id", "is required"),
    ([_rule(id="Bad Id")], "rules[0].id", "lower-case letters"),
    ([_rule(ban="10m")], "rules[0].ban", "only action: block can ban"),
    ([_rule(key="global", action="block", ban="1m")], "rules[0].ban", "cannot ban"),
    ([_rule(when={"status": [404]}, action="block")], "rules[0].action", "needs a ban"),
    ([_rule(prefix={"v4": 24})], "rules[0].prefix", "only a rule with key: client_net"),
    ([_rule(key="client_net", tier={"v6": 64})], "rules[0].tier.v6", "wider than the /64"),
    ([_rule(key="client_net", tier={"factor": 2})], "rules[0].tier", "name a wider prefix"),
    ([_rule(key="client_net", prefix={"v4": 33})], "rules[0].prefix.v4", "at most 32"),
    ([_rule(escalate={"factor": 2})], "rules[0].escalate", "needs a ban"),
    ([_rule(action="block", ban="1h", escalate={"factor": 0.5})], "rules[0].escalate.factor", "at least 1"),
    ([_rule(when={"status": ["6xx"]})], "rules[0].when.status[0]", "like 404 or a class like 4xx"),
    ([_rule(when={"status": [99]})], "rules[0].when.status[0]", "at least 100"),
    ([_rule(when={"method": "GET POST"})], "rules[0].when.method", "an HTTP method"),
    ([_rule(when={"headers": ["bad header"]})], "rules[0].when.headers[0]", "not a valid header name"),
    ([_rule(when={"path": []})], "rules[0].when.path", "must not be empty"),
    ([_rule(key="ip")], "rules[0].key", "expected one of client, client_net, global"),
    ([_rule(action="ban")], "rules[0].action", "expected one of tag, block"),
    ([_rule(distinct="cookie")], "rules[0].distinct", "expected one of"),
    ([_rule(response={"status": 403})], "rules[0].response", "only action: block"),
    ([_rule(action="block", response={"status": 302})], "rules[0].response.status", "at least 400"),
    ([_rule(tags=["a,b"])], "rules[0].tags[0]", "a tag is letters"),
    ([_rule(mode="maybe")], "rules[0].mode", "expected one of monitor, enforce"),
    ({"id": "r"}, "rules", "expected a list of rules"),
]


@pytest.mark.parametrize(("rules", "path", "message"), BAD_RULES)
def test_bad_rules_name_the_key_path(rules: Any, path: str, message: str) -> None:
    """Every invalid rule is a ConfigError whose path names the offending key."""
    with pytest.raises(ConfigError) as info:
        parse_config({"rules": rules})
    assert info.value.path == path
    assert message in info.value.message


BAD_INTEL = [
    ([{"name": "x", "file": "/nonexistent/list.netset"}], "intel[0].file", "cannot read"),
    (
        [{"name": "x", "file": str(INTEL)}, {"name": "x", "file": str(INTEL)}],
        "intel[1]",
        "duplicate intel name",
    ),
    ([{"name": "x", "file": str(INTEL), "format": "csv"}], "intel[0].format", "expected one of auto"),
    ([{"name": "x", "file": str(INTEL), "refresh": "0s"}], "intel[0].refresh", "at least 1s"),
    ([{"file": str(INTEL)}], "intel[0].name", "is required"),
]


@pytest.mark.parametrize(("intel", "path", "message"), BAD_INTEL)
def test_bad_intel_names_the_key_path(intel: Any, path: str, message: str) -> None:
    """Every invalid intel list is a ConfigError whose path names the offending key."""
    with pytest.raises(ConfigError) as info:
        parse_config({"intel": intel})
    assert info.value.path == path
    assert message in info.value.message


def test_bad_allow_entry_names_its_index() -> None:
    """A bad allowlist entry names its index."""
    with pytest.raises(ConfigError) as info:
        parse_config({"allow": ["10.0.0.0/8", "not-a-cidr"]})
    assert info.value.path == "allow[1]"


def test_ipv4_mapped_networks_are_read_as_ipv4() -> None:
    """``allow:`` and ``trusted_proxies:`` entries inside ``::ffff:0:0/96`` become IPv4 networks,
    since client addresses are unwrapped to IPv4 before they are compared."""
    config = parse_config(
        {
            "allow": ["::ffff:192.0.2.0/120", "2001:db8::/32"],
            "trusted_proxies": ["::ffff:10.0.0.0/104", "::ffff:10.1.2.3"],
        }
    )
    assert [str(net) for net in config.rules.allow] == ["192.0.2.0/24", "2001:db8::/32"]
    assert [str(net) for net in config.trusted_proxies] == ["10.0.0.0/8", "10.1.2.3/32"]


def test_rule_defaults_and_phases() -> None:
    """A bare rule tags every request at threshold 1 per client; status makes a response rule."""
    spec = _parse([_rule(), _rule(id="s", when={"status": ["4xx", 503]}, action="block", ban="1m")])
    bare, status = spec.rules
    assert (bare.key.kind, bare.threshold, bare.window, bare.action, bare.tags) == (
        "client",
        1,
        60.0,
        "tag",
        ("r",),
    )
    assert bare.phase == "request"
    assert status.phase == "response"
    assert status.when.statuses == frozenset(range(400, 500)) | {503}
    assert status.response.status == 403


def test_rate_rules_default_to_429_and_large_thresholds_to_approx() -> None:
    """A rule without request conditions answers 429; thresholds above 100 use the approximate window."""
    spec = _parse([_rule(action="block", threshold=600, window="1m", when={"method": ["get"]})])
    (rule,) = spec.rules
    assert rule.response.status == 429
    assert rule.precision == "approx"
    assert rule.when.methods == frozenset({"GET"})


def test_packs_resolve_relative_paths_and_exclude(tmp_path: Path) -> None:
    """An included pack's rules and intel join the config's; its paths resolve against the pack."""
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "bad.txt").write_text("192.0.2.0/24\n")
    (tmp_path / "packs").mkdir()
    (tmp_path / "packs" / "p.yaml").write_text(
        yaml.safe_dump(
            {
                "rules": [_rule(id="one"), _rule(id="two")],
                "intel": [{"name": "bad", "file": "../lists/bad.txt"}],
            }
        )
    )
    spec = _parse([{"include": "packs/p.yaml", "exclude": ["two"]}, _rule(id="mine")], base=tmp_path)
    assert [r.id for r in spec.rules] == ["one", "mine"]
    assert spec.packs == (str(tmp_path / "packs" / "p.yaml"),)
    assert spec.intel[0].file == str(tmp_path / "packs" / ".." / "lists" / "bad.txt")


def test_pack_errors_name_the_pack(tmp_path: Path) -> None:
    """An error inside a pack names the include and the key inside the pack."""
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"rules": [_rule(window="soon")]}))
    with pytest.raises(ConfigError) as info:
        _parse([{"include": "p.yaml"}], base=tmp_path)
    assert info.value.path == "rules[0].include(p.yaml).rules[0].window"


@pytest.mark.parametrize(
    ("pack", "include", "path", "message"),
    [
        (None, {"include": "missing.yaml"}, "rules[0].include", "cannot read rule pack"),
        (
            {"rules": [{"include": "x.yaml"}]},
            {"include": "p.yaml"},
            "rules[0].include(p.yaml).rules[0]",
            "cannot include",
        ),
        (
            {"rules": [_rule()]},
            {"include": "p.yaml", "exclude": ["nope"]},
            "rules[0].exclude",
            "not in p.yaml: nope",
        ),
        (
            {"rules": [_rule()], "extra": 1},
            {"include": "p.yaml"},
            "rules[0].include(p.yaml).extra",
            "unknown key",
        ),
    ],
)
def test_bad_includes(tmp_path: Path, pack: Any, include: dict[str, Any], path: str, message: str) -> None:
    """Missing packs, nested includes, unknown exclusions and unknown pack keys are errors."""
    if pack is not None:
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(pack))
    with pytest.raises(ConfigError) as info:
        _parse([include], base=tmp_path)
    assert (info.value.path, message in info.value.message) == (path, True)


def test_default_pack_parses_with_its_intel() -> None:
    """configs/rules/default.yaml is valid, covers the strategy's alerts and loads its intel files."""
    spec = _parse([{"include": "configs/rules/default.yaml"}], base=ROOT)
    ids = {rule.id for rule in spec.rules}
    assert {
        "error-burst-4xx",
        "error-burst-5xx",
        "probing",
        "sensitive-files",
        "traversal",
        "sqli-probes",
        "xss-probes",
        "scanner-agents",
        "login-brute-force",
    } <= ids
    assert [i.name for i in spec.intel][:1] == ["firehol_level1"]
    assert all(Path(i.file).is_file() for i in spec.intel)


def test_named_lists_are_shipped_with_source_and_licence() -> None:
    """Each @list names its source and licence and compiles."""
    assert {
        "sensitive-files",
        "traversal",
        "sqli-probes",
        "xss-probes",
        "scanner-agents",
        "backdoors",
    } <= named_lists()
    assert "admin-paths" in named_lists()
    for name in named_lists():
        text = (ROOT / "proxylog" / "rules" / "lists" / f"{name}.txt").read_text()
        assert "# source:" in text and "# licence:" in text, name
        assert load_list(name).entries, name
