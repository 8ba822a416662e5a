"""Operating a live proxylog: control socket, `proxylog ctl`, reload, persistence, metrics, alerts.

Everything runs through real sockets against a real `proxylog serve` in front of real Puma.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests._http import request
from tests._records import request_headers
from tests.conftest import free_port


def ctl(proxy: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `proxylog ctl` against a running proxy's control socket."""
    cmd = [sys.executable, "-m", "proxylog.cli", "ctl", "--socket", str(proxy.control_socket), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def ctl_json(proxy: Any, *args: str) -> dict[str, Any]:
    result = ctl(proxy, "--json", *args)
    return json.loads(result.stdout)


def documents(proxy: Any, action_prefix: str) -> list[dict[str, Any]]:
    return [r for r in proxy.records() if r["event"]["action"].startswith(action_prefix)]


def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    return predicate()


def rewrite_config(proxy: Any, **changes: Any) -> None:
    config = yaml.safe_load(proxy.config_path.read_text())
    config.update(changes)
    proxy.config_path.write_text(yaml.safe_dump(config))


def test_control_socket_is_private_and_answers_ctl(start_proxylog, engine: str) -> None:
    """The control socket is 0600, and `proxylog ctl status` reports the engine, mode, sinks
    and config; the startup line names the engine too."""
    proxy = start_proxylog()
    assert stat.S_IMODE(proxy.control_socket.stat().st_mode) == 0o600
    by_config = subprocess.run(
        [sys.executable, "-m", "proxylog.cli", "ctl", "--config", str(proxy.config_path), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert by_config.returncode == 0, by_config.stderr
    result = ctl(proxy, "status")
    assert result.returncode == 0, result.stderr
    assert "mode monitor" in result.stdout and str(proxy.config_path) in result.stdout
    assert f"engine {engine}," in result.stdout
    status = ctl_json(proxy, "status")
    assert status["ok"] and status["mode"] == "monitor" and status["inflight"] == 0
    assert status["engine"] == engine
    assert any(line.endswith(f"(engine: {engine})") for line in proxy.stderr_lines)


def test_another_user_cannot_use_the_control_socket(start_proxylog) -> None:
    """Another Unix user cannot connect (0600 socket); even if the file mode is loosened, the peer-uid
    check refuses it."""
    if os.getuid() != 0:
        pytest.skip("needs root to run a client as another user")
    proxy = start_proxylog()
    sock = proxy.control_socket
    # curl, not `proxylog ctl`: the interpreter lives under /root, out of nobody's reach
    as_nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "curl",
        "-s",
        "--unix-socket",
        str(sock),
        "-d",
        '{"mode":"enforce"}',
        "http://control/mode",
    ]
    blocked = subprocess.run(as_nobody, capture_output=True, text=True, timeout=60)
    assert blocked.returncode == 7, blocked.stderr  # curl: could not connect
    for path in (sock.parent, *sock.parents[:-1]):
        path.chmod(path.stat().st_mode | 0o055)  # loosen, to reach the peer-credential check
    sock.chmod(0o666)
    refused = subprocess.run(as_nobody, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 0 and "only the owner" in refused.stdout
    assert ctl_json(proxy, "mode")["mode"] == "monitor"


def test_mode_switch_is_immediate_audited_and_persisted(start_proxylog) -> None:
    """`ctl mode enforce` applies to the next request, writes an audit record and survives a restart."""
    proxy = start_proxylog()
    assert request(proxy.url, "/before").status == 200
    result = ctl(proxy, "mode", "enforce")
    assert result.returncode == 0 and "mode enforce (was monitor)" in result.stdout
    assert request(proxy.url, "/after").status == 200
    records = proxy.records(count=3)
    by_path = {r["url"]["path"]: r for r in records if "url" in r}
    assert by_path["/before"]["proxylog"]["mode"] == "monitor"
    assert by_path["/after"]["proxylog"]["mode"] == "enforce"
    [audit] = documents(proxy, "audit.mode")
    assert audit["proxylog"]["audit"]["old"] == "monitor" and audit["proxylog"]["audit"]["new"] == "enforce"
    assert "unix socket" in audit["proxylog"]["audit"]["who"]
    assert ctl(proxy, "mode", "sideways").returncode == 2  # a usage error
    state = proxy.config_path.parent / "state" / "state.json"
    assert json.loads(state.read_text())["mode"] == "enforce"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600


def test_mode_persists_across_restart(tmp_path, start_proxylog) -> None:
    """A restarted proxylog comes back in the mode it was switched to, not the config's."""
    state_dir = tmp_path / "shared-state"
    proxy = start_proxylog({"state_dir": str(state_dir)})
    assert ctl(proxy, "mode", "enforce").returncode == 0
    assert proxy.stop() == 0
    restarted = start_proxylog({"state_dir": str(state_dir)})
    assert ctl_json(restarted, "mode")["mode"] == "enforce"


BAD_CONFIGS = [
    pytest.param("sinks: [\n", "not valid YAML", id="invalid-yaml"),
    pytest.param({"sinks": [{"type": "kafka"}]}, "sinks[0].type", id="unknown-sink-type"),
    pytest.param({"timeouts": {"upstream": "-5s"}}, "timeouts.upstream", id="negative-duration"),
    pytest.param({"modes": ["nonsense:spec"]}, "modes[0]", id="bad-mitmproxy-mode"),
]


@pytest.mark.parametrize(("bad", "named"), BAD_CONFIGS)
def test_a_bad_reload_keeps_the_old_config_serving(start_proxylog, engine: str, bad: Any, named: str) -> None:
    """A reload with an invalid file fails with the key path, is audited, and the proxy keeps serving."""
    if engine == "fast" and "modes" in bad:
        named = "engine"  # the fast plane serves no mitmproxy modes: that is the error
    proxy = start_proxylog({"record": {"headers": ["referer"]}})
    if isinstance(bad, str):
        proxy.config_path.write_text(bad)
    else:
        rewrite_config(proxy, **bad)
    result = ctl(proxy, "reload")
    assert result.returncode == 1
    assert named in result.stderr and "unchanged" in result.stderr
    resp = request(proxy.url, "/still-here", headers=[("Referer", "https://r.example/")])
    assert resp.status == 200
    record = next(r for r in proxy.records(count=2) if r.get("url", {}).get("path") == "/still-here")
    assert request_headers(record) == {"referer": "https://r.example/"}
    [audit] = documents(proxy, "audit.reload")
    assert audit["proxylog"]["audit"]["ok"] is False and named in audit["proxylog"]["audit"]["error"]


def test_reload_applies_a_good_config_and_keeps_flags(start_proxylog) -> None:
    """`ctl reload` applies the new record settings; command-line flags stay in force without warnings."""
    proxy = start_proxylog({"record": {"headers": ["referer"]}}, args=["--log-level", "warning"])
    rewrite_config(proxy, record={"headers": ["x-trace"]})
    result = ctl(proxy, "reload")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout
    request(proxy.url, "/traced", headers=[("X-Trace", "abc"), ("Referer", "https://r.example/")])
    record = next(r for r in proxy.records(count=2) if r.get("url", {}).get("path") == "/traced")
    assert request_headers(record) == {"x-trace": "abc"}


def test_sighup_reloads_the_config(start_proxylog) -> None:
    """SIGHUP re-reads the config file (and reopens sinks)."""
    proxy = start_proxylog({"record": {"headers": ["referer"]}})
    rewrite_config(proxy, record={"headers": ["x-trace"]})
    proxy.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: documents(proxy, "audit.reload"))
    request(proxy.url, "/after-hup", headers=[("X-Trace", "1")])
    record = next(r for r in proxy.records(count=2) if r.get("url", {}).get("path") == "/after-hup")
    assert request_headers(record) == {"x-trace": "1"}


def test_file_watch_reloads_on_change(start_proxylog) -> None:
    """With control.watch, editing the config file is enough."""
    proxy = start_proxylog({"control": {"watch": True, "watch_interval": "100ms"}, "record": {"headers": []}})
    rewrite_config(proxy, record={"headers": ["x-trace"]})
    assert wait_until(lambda: documents(proxy, "audit.reload"))
    request(proxy.url, "/watched", headers=[("X-Trace", "w")])
    record = next(r for r in proxy.records(count=2) if r.get("url", {}).get("path") == "/watched")
    assert request_headers(record) == {"x-trace": "w"}


def test_tcp_control_requires_the_bearer_token(tmp_path, start_proxylog) -> None:
    """The optional loopback TCP control port answers only with the right bearer token."""
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    port = free_port()
    proxy = start_proxylog({"control": {"tcp": f"127.0.0.1:{port}", "token_file": str(token)}})
    base = [sys.executable, "-m", "proxylog.cli", "ctl", "--tcp", f"127.0.0.1:{port}"]
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    denied = subprocess.run(
        [*base, "--token-file", str(wrong), "mode", "enforce"], capture_output=True, text=True
    )
    assert denied.returncode == 1 and "bearer token" in denied.stderr
    granted = subprocess.run(
        [*base, "--token-file", str(token), "mode", "enforce"], capture_output=True, text=True
    )
    assert granted.returncode == 0, granted.stderr
    assert ctl_json(proxy, "mode")["mode"] == "enforce"


def test_control_port_is_unreachable_through_the_proxy(tmp_path, start_proxylog) -> None:
    """Absolute-form URLs, Host tricks and CONNECT sent to the proxy listener never reach the control API."""
    token = tmp_path / "token"
    token.write_text("s3cret-token")
    port = free_port()
    proxy = start_proxylog({"control": {"tcp": f"127.0.0.1:{port}", "token_file": str(token)}})
    attacks = [
        f"POST http://127.0.0.1:{port}/mode HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        'Authorization: Bearer s3cret-token\r\nContent-Length: 18\r\n\r\n{"mode":"enforce"}',
        f"POST /mode HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer s3cret-token\r\n"
        'Content-Length: 18\r\n\r\n{"mode":"enforce"}',
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
    ]
    for attack in attacks:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(attack.encode())
            reply = sock.recv(65536)
        assert b'"ok":true' not in reply
    assert ctl_json(proxy, "mode")["mode"] == "monitor"
    assert not documents(proxy, "audit.mode")


def test_metrics_endpoint_is_scraped_and_parsed(start_proxylog) -> None:
    """The Prometheus endpoint exposes requests by class and action, sink counters, latency and reloads."""
    metrics_port = free_port()
    rules = [{"id": "not-found", "when": {"status": [404]}, "threshold": 1, "action": "tag"}]
    proxy = start_proxylog({"metrics": {"listen": f"127.0.0.1:{metrics_port}"}, "rules": rules})
    for path in ("/a", "/b", "/status/404", "/status/503"):
        request(proxy.url, path)
    ctl(proxy, "reload")
    ctl(proxy, "ban", "203.0.113.7", "--ttl", "1h")
    proxy.records(count=5)
    text = request(f"http://127.0.0.1:{metrics_port}", "/metrics").body.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        (s.labels["status_class"], s.labels["action"]): s.value
        for s in families["proxylog_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests == {("2xx", "allowed"): 2, ("4xx", "allowed"): 1, ("5xx", "allowed"): 1}
    latency = {s.name: s.value for s in families["proxylog_upstream_latency_seconds"].samples}
    assert latency["proxylog_upstream_latency_seconds_count"] == 4
    written = [s for s in families["proxylog_sink_written"].samples if s.name.endswith("_total")]
    assert written and written[0].value >= 4
    reloads = {
        s.labels["result"]: s.value
        for s in families["proxylog_config_reloads"].samples
        if s.name.endswith("_total")
    }
    assert reloads == {"ok": 1, "failed": 0}
    assert {s.labels["mode"]: s.value for s in families["proxylog_mode"].samples} == {
        "monitor": 1,
        "enforce": 0,
    }
    hits = {
        s.labels["rule"]: s.value for s in families["proxylog_rule_hits"].samples if s.name.endswith("_total")
    }
    assert hits == {"not-found": 1}
    assert [s.value for s in families["proxylog_active_bans"].samples] == [1]
    for family in ("proxylog_sink_queue_depth", "proxylog_sink_dropped", "proxylog_sink_retries"):
        [sample] = [s for s in families[family].samples if not s.name.endswith("_created")]
        assert sample.labels == {"sink": f"file:{proxy.records_path}"} and sample.value == 0
    log_drops = families["proxylog_log_lines_dropped"].samples
    assert [s.value for s in log_drops if s.name.endswith("_total")] == [0]


class _Receiver:
    """A real local webhook receiver recording every JSON POST."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.posts.append(
                    {
                        "path": self.path,
                        "body": json.loads(self.rfile.read(length)),
                        "auth": self.headers.get("Authorization"),
                    }
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        return [alert for post in self.posts for alert in post["body"].get("alerts", [])]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = _Receiver()
    yield server
    server.close()


def test_failed_reload_alerts_once_within_the_cooldown(start_proxylog, receiver, tmp_path) -> None:
    """A failed reload alerts the webhook (bearer token sent); a repeat within the cooldown is deduped."""
    token = tmp_path / "hook-token"
    token.write_text("hook-secret")
    alerts = [
        {"type": "webhook", "url": receiver.url, "group": "200ms", "cooldown": "1h", "token_file": str(token)}
    ]
    proxy = start_proxylog({"alerts": alerts})
    proxy.config_path.write_text("sinks: [\n")
    assert ctl(proxy, "reload").returncode == 1
    assert ctl(proxy, "reload").returncode == 1
    assert wait_until(receiver.alerts)
    time.sleep(0.5)  # a duplicate, if any, would arrive within the group window
    [alert] = receiver.alerts()
    assert alert["kind"] == "config_reload_failed" and "YAML" in alert["error"]
    assert receiver.posts[0]["auth"] == "Bearer hook-secret"
    assert len(documents(proxy, "audit.reload")) == 2
    assert len(documents(proxy, "alert")) == 1


def test_sink_failure_alerts_slack_format(start_proxylog, receiver, tmp_path) -> None:
    """A sink that starts failing raises a sink_failure alert in Slack's format."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = {
        "sinks": [
            {"type": "file", "path": str(tmp_path / "ok.jsonl")},
            {"type": "file", "path": str(blocker / "x.jsonl"), "name": "broken"},
        ],
        "alerts": [{"type": "slack", "url": receiver.url, "group": "100ms"}],
    }
    proxy = start_proxylog(config)
    proxy.records_path = tmp_path / "ok.jsonl"
    request(proxy.url, "/trigger")
    assert wait_until(lambda: receiver.posts, timeout=15)
    text = receiver.posts[0]["body"]["text"]
    assert "sink broken failing" in text  # the headline: which sink, what happened


def test_a_second_instance_leaves_the_running_one_alone(start_proxylog) -> None:
    """Started on the same state dir, a second proxylog refuses to start and must not remove
    the control socket of the one already running."""
    proxy = start_proxylog()
    second = subprocess.run(
        [sys.executable, "-m", "proxylog.cli", "serve", "--config", str(proxy.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=proxy.config_path.parent,
    )
    assert second.returncode == 1
    assert "another proxylog already serves" in second.stderr
    assert stat.S_ISSOCK(os.lstat(proxy.control_socket).st_mode)
    assert ctl(proxy, "status").returncode == 0


def test_a_file_in_the_control_sockets_place_is_refused_not_deleted(tmp_path, puma) -> None:
    """A regular file at `control.socket` stops start-up with a message naming it; the file stays."""
    squatter = tmp_path / "control.sock"
    squatter.write_text("not a socket")
    config = tmp_path / "proxylog.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstream": puma.url,
                "listen": "127.0.0.1:0",
                "state_dir": str(tmp_path / "state"),
                "control": {"socket": str(squatter)},
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "proxylog.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{squatter} exists and is not a socket" in result.stderr
    assert squatter.read_text() == "not a socket"


@pytest.mark.engines("mitmproxy")  # forward proxy modes are served by mitmproxy only
def test_own_ports_are_unreachable_through_a_forward_proxy_mode(tmp_path, start_proxylog, puma) -> None:
    """In regular (forward proxy) mode the client names the destination: proxylog still never
    connects to its own control or metrics port, while other destinations work."""
    token = tmp_path / "token"
    token.write_text("s3cret-token")
    control, metrics, listen = free_port(), free_port(), free_port()
    proxy = start_proxylog(
        {
            "modes": [f"regular@127.0.0.1:{listen}"],
            "control": {"tcp": f"127.0.0.1:{control}", "token_file": str(token)},
            "metrics": {"listen": f"127.0.0.1:{metrics}"},
        }
    )
    attacks = [
        f"GET http://127.0.0.1:{metrics}/metrics HTTP/1.1\r\nHost: 127.0.0.1:{metrics}\r\n\r\n",
        f"POST http://localhost:{control}/mode HTTP/1.1\r\nHost: localhost:{control}\r\n"
        'Authorization: Bearer s3cret-token\r\nContent-Length: 18\r\n\r\n{"mode":"enforce"}',
    ]
    for attack in attacks:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(attack.encode())
            reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 502"), reply[:200]
        assert b"proxylog_requests" not in reply and b'"ok":true' not in reply
    assert ctl_json(proxy, "mode")["mode"] == "monitor"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"GET {puma.url}/forward HTTP/1.1\r\nHost: {puma.url[7:]}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_the_configs_mode_applies_until_an_operator_chooses_one(tmp_path, start_proxylog) -> None:
    """Without `ctl mode`, a reload or a restart follows the config's `mode:`; once an
    operator switched, that choice stays, and a reload that disagrees says so."""
    state_dir = tmp_path / "state"
    proxy = start_proxylog({"state_dir": str(state_dir), "mode": "monitor"})
    rewrite_config(proxy, mode="enforce")
    assert ctl(proxy, "reload").returncode == 0
    assert ctl_json(proxy, "mode")["mode"] == "enforce"
    [audit] = documents(proxy, "audit.mode")
    assert audit["proxylog"]["audit"]["source"] == "config"
    rewrite_config(proxy, mode="monitor")
    assert proxy.stop() == 0
    restarted = start_proxylog(yaml.safe_load(proxy.config_path.read_text()))
    assert ctl_json(restarted, "mode")["mode"] == "monitor", "nobody chose a mode: the config decides"

    assert ctl(restarted, "mode", "enforce").returncode == 0
    rewrite_config(restarted, mode="monitor")
    result = ctl(restarted, "reload")
    assert "the config says monitor, but enforce was set with `proxylog ctl mode`" in result.stdout
    assert ctl_json(restarted, "mode")["mode"] == "enforce"


def test_enforce_flag_is_kept_even_when_the_config_already_enforces(start_proxylog) -> None:
    """`serve --enforce` is the operator's choice: a reload to `mode: monitor` keeps
    enforcing, and says so."""
    proxy = start_proxylog({"mode": "enforce"}, args=["--enforce"])
    rewrite_config(proxy, mode="monitor")
    result = ctl(proxy, "reload")
    assert "the config says monitor, but enforce was set" in result.stdout
    assert ctl_json(proxy, "mode")["mode"] == "enforce"
