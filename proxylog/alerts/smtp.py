"""Email alerts: one plain-text mail per group of alerts, sent with the standard library's
smtplib on the channel's thread (never on the event loop).

`tls: starttls` (the default) upgrades the connection before anything else is said and
refuses to go on in clear when the server does not offer STARTTLS; `tls: tls` speaks TLS from
the first byte (port 465); `tls: none` is for a relay on the same host. Certificates are
verified against the system's CAs or `ca_file`. AUTH happens only over TLS.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from proxylog.alerts.channel import Channel, DeliveryError, Message, Owner, Refused
from proxylog.alerts.model import Alert, body, subject
from proxylog.config.alerts import EmailAlertSpec
from proxylog.config.secrets import read_secret

logger = logging.getLogger("proxylog.alerts")


class EmailChannel(Channel):
    """``type: email``."""

    spec: EmailAlertSpec

    def __init__(self, spec: EmailAlertSpec, owner: Owner, where: str) -> None:
        self.password = (
            read_secret(
                spec.password_file, spec.password_env, where, file_key="password_file", env_key="password_env"
            )
            if spec.username is not None
            else None
        )
        super().__init__(spec, owner)
        self.envelope_from = parseaddr(spec.sender)[1]
        self._tls: ssl.SSLContext | None = None

    def messages(self, batch: list[Alert]) -> list[Message]:
        return [Message(tuple(batch), self.mail(batch))]

    def mail(self, batch: list[Alert]) -> EmailMessage:
        """The mail for a group of alerts: short subject, plain-text body, automatic-reply
        suppression (RFC 3834)."""
        mail = EmailMessage()
        mail["From"] = self.spec.sender
        mail["To"] = ", ".join(self.spec.to)
        mail["Subject"] = subject(batch)
        mail["Date"] = formatdate(batch[0].ts, usegmt=True)
        mail["Message-ID"] = make_msgid("proxylog", domain=_domain(self.envelope_from))
        mail["Auto-Submitted"] = "auto-generated"
        mail["X-Proxylog-Alert"] = ", ".join(sorted({alert.kind for alert in batch}))
        mail.set_content(body(batch))
        return mail

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=self.spec.ca_file)
        return self._tls

    def send(self, message: Message) -> None:
        spec = self.spec
        try:
            if spec.tls == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    spec.host, spec.port, timeout=spec.timeout, context=self._context()
                )
            else:
                smtp = smtplib.SMTP(spec.host, spec.port, timeout=spec.timeout)
            with smtp:
                smtp.ehlo()
                if spec.tls == "starttls":
                    if not smtp.has_extn("starttls"):
                        raise Refused(f"{spec.host}:{spec.port} offers no STARTTLS; not sending in clear")
                    smtp.starttls(context=self._context())
                    smtp.ehlo()
                if spec.username is not None and self.password is not None:
                    smtp.login(spec.username, self.password)
                refused = smtp.send_message(
                    message.payload, from_addr=self.envelope_from, to_addrs=list(spec.to)
                )
                if refused:
                    logger.warning("%s: some recipients refused: %s", self.where, _replies(refused))
        except smtplib.SMTPRecipientsRefused as e:
            raise Refused(f"every recipient refused: {_replies(e.recipients)}") from e
        except smtplib.SMTPResponseException as e:
            text = f"SMTP {e.smtp_code}: {_text(e.smtp_error)}"
            raise (Refused(text) if e.smtp_code >= 500 else DeliveryError(text)) from e
        except smtplib.SMTPNotSupportedError as e:
            raise Refused(f"SMTP: {e}") from e
        except ssl.SSLCertVerificationError as e:
            raise Refused(f"TLS: {e.verify_message or e}") from e
        except smtplib.SMTPException as e:  # disconnected mid-way, and the like
            raise DeliveryError(f"SMTP: {e}") from e


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "localhost"


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _replies(recipients: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{code} {_text(reply)}" for code, reply in recipients.values())
