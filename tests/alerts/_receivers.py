"""Real receivers on loopback for the alert channels: an SMTP server (aiosmtpd, STARTTLS or
implicit TLS with a throwaway certificate, optional AUTH) and a PagerDuty Events API v2
endpoint that validates what it receives the way the service documents it."""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import json
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and localhost: (cert, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxylog test SMTP")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@dataclass
class Mail:
    """One message as the server received it."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str | None


class SmtpReceiver:
    """aiosmtpd on a free loopback port. `tls`: ``starttls`` (offered and required before
    MAIL), ``tls`` (implicit, from the first byte) or ``none`` (STARTTLS not even offered);
    with `credentials`, AUTH is required and only that login/password pass."""

    def __init__(
        self, directory: Path, tls: str = "starttls", credentials: tuple[str, str] | None = None
    ) -> None:
        import ssl

        self.mails: list[Mail] = []
        self.logins: list[tuple[str, str]] = []
        self.arrived = threading.Condition()
        self.cert, key = make_cert(directory)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.credentials = credentials
        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if tls == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        elif tls == "tls":
            kwargs.update(ssl_context=context, auth_require_tls=False)
        if credentials is not None:  # required, except over implicit TLS where aiosmtpd cannot tell
            kwargs.update(authenticator=self._authenticate, auth_required=tls != "tls")
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = data.login.decode(), data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=(login, password) == self.credentials, handled=False, auth_data=data)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        tls = server.transport is not None and server.transport.get_extra_info("ssl_object") is not None
        auth = session.auth_data
        login = auth.login.decode() if session.authenticated and isinstance(auth, LoginPassword) else None
        with self.arrived:
            self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message, tls, login))
            self.arrived.notify_all()
        return "250 Message accepted for delivery"

    def wait(self, count: int, timeout: float = 15.0) -> list[Mail]:
        """The mails received, once there are at least `count` (or the timeout passed)."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.mails) >= count, timeout)
            return list(self.mails)

    def close(self) -> None:
        self.controller.stop()


SEVERITIES = {"critical", "error", "warning", "info"}
ACTIONS = {"trigger", "acknowledge", "resolve"}


def pagerduty_errors(event: Any) -> list[str]:
    """What the Events API v2 would reject in `event` (empty when it is valid)."""
    if not isinstance(event, dict):
        return ["event must be an object"]
    errors = []
    if not isinstance(event.get("routing_key"), str) or len(event["routing_key"]) != 32:
        errors.append("routing_key must be a 32-character string")
    if event.get("event_action") not in ACTIONS:
        errors.append("event_action must be trigger, acknowledge or resolve")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not 0 < len(dedup) <= 255):
        errors.append("dedup_key must be a string of 1 to 255 characters")
    if event.get("event_action") in ("acknowledge", "resolve"):
        if dedup is None:
            errors.append("dedup_key is required to acknowledge or resolve")
        return errors
    payload = event.get("payload")
    if not isinstance(payload, dict):
        return [*errors, "payload is required for a trigger"]
    if not isinstance(payload.get("summary"), str) or not 0 < len(payload["summary"]) <= 1024:
        errors.append("payload.summary must be a string of 1 to 1024 characters")
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        errors.append("payload.source is required")
    if payload.get("severity") not in SEVERITIES:
        errors.append("payload.severity must be critical, error, warning or info")
    if "timestamp" in payload:
        try:
            datetime.datetime.fromisoformat(payload["timestamp"])
        except (TypeError, ValueError):
            errors.append("payload.timestamp must be ISO 8601")
    for key in ("component", "group", "class"):
        if key in payload and not isinstance(payload[key], str):
            errors.append(f"payload.{key} must be a string")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        errors.append("payload.custom_details must be an object")
    return errors


class PagerDutyReceiver:
    """A local Events API v2 endpoint at ``/v2/enqueue``: 202 for a valid event (recorded),
    400 with the errors for an invalid one; `fail_next` answers the next N events with 503."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.rejected: list[list[str]] = []
        self.fail_next = 0
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.arrived:
                    if receiver.fail_next > 0:
                        receiver.fail_next -= 1
                        self._reply(503, {"status": "unavailable"})
                        return
                    try:
                        event = json.loads(body)
                    except ValueError:
                        event = None
                    errors = ["not JSON"] if event is None else pagerduty_errors(event)
                    if self.path != "/v2/enqueue" or self.headers.get("Content-Type") != "application/json":
                        errors.append(f"wrong path or type: {self.path} {self.headers.get('Content-Type')}")
                    if errors:
                        receiver.rejected.append(errors)
                        self._reply(400, {"status": "invalid event", "errors": errors})
                    else:
                        receiver.events.append(event)
                        self._reply(202, {"status": "success", "dedup_key": event.get("dedup_key")})
                    receiver.arrived.notify_all()

            def _reply(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v2/enqueue"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def wait(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The valid events received, once there are at least `count` (or the timeout passed)."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
