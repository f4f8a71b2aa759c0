"""EMAIL_SEND: one message over SMTP, configured with Flask-Mail's names.

Header injection is refused at enqueue, before anything is stored: a subject
or address holding CR, LF or any other control character, or an RFC 2047
encoded word that decodes to one. The second check is ours because Python
3.11.7's email package (CVE-2024-6923) turns ``=?UTF-8?Q?=0A?=Bcc: x@y`` in a
Subject into a real ``Bcc:`` header when it serializes the message.

SMTP 5xx fails the job at once (PermanentJobError); 4xx, refused
connections and timeouts raise plainly, so the worker retries. The
Message-ID is derived from the job id: a message sent again after a crash
carries the same id, so receiving systems can drop the duplicate.
"""
from __future__ import annotations

import binascii
import logging
import re
import smtplib
import ssl
from email.header import decode_header
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any

import marshmallow
from marshmallow import fields, validate

from ..core.context import JobContext
from ..core.errors import PermanentJobError
from ..core.settings import WHERE, MailSettings

log = logging.getLogger("queue_service.worker")

MAX_RECIPIENTS = 50
MAX_SUBJECT_CHARS = 998  # RFC 5322's line limit
MAX_BODY_CHARS = 1_000_000
ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[A-Za-z]?\?[^?\s]*\?=")
_address_validator = validate.Email(error="Not a valid email address.")


def _control_char(text: str) -> str | None:
    """The first control character (C0, DEL, C1, Unicode line breaks), or None."""
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F or ch in "\u2028\u2029":
            return ch
    return None


def check_header_text(text: str) -> None:
    """Refuse text that could end a header line, directly or through an
    encoded word (nested encodings are unwrapped up to three levels)."""
    for depth in range(3):
        bad = _control_char(text)
        if bad is not None:
            where = " inside an RFC 2047 encoded word" if depth else ""
            raise marshmallow.ValidationError(f"Must not contain control characters (found {bad!r}{where}).")
        words = ENCODED_WORD.findall(text)
        if not words:
            return
        decoded = []
        for word in words:
            try:
                for chunk, charset in decode_header(word):
                    decoded.append(chunk.decode(charset or "ascii", errors="replace")
                                   if isinstance(chunk, bytes) else chunk)
            except (LookupError, binascii.Error, ValueError, UnicodeError):
                raise marshmallow.ValidationError(f"Malformed encoded word {word!r}.") from None
        text = "".join(decoded)
    raise marshmallow.ValidationError("Too deeply nested encoded words.")


def check_address(value: Any) -> str:
    if not isinstance(value, str):
        raise marshmallow.ValidationError("Not a valid email address.")
    check_header_text(value)
    # Bare addresses only: display names and quoted local parts are where
    # parsers disagree, and nothing here needs them.
    if "=?" in value or '"' in value or len(value) > 254:
        raise marshmallow.ValidationError("Not a valid email address.")
    _address_validator(value)
    return value


class Recipients(fields.Field):
    """One address or a list of 1 to 50; loads as a list."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise marshmallow.ValidationError("Must be an email address or a list of them.")
        if not 1 <= len(items) <= MAX_RECIPIENTS:
            raise marshmallow.ValidationError(f"Must hold 1 to {MAX_RECIPIENTS} addresses.")
        errors: dict[int, list[str]] = {}
        for index, item in enumerate(items):
            try:
                check_address(item)
            except marshmallow.ValidationError as exc:
                errors[index] = exc.messages if isinstance(exc.messages, list) else [str(exc.messages)]
        if errors:
            raise marshmallow.ValidationError(errors)
        return list(items)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


def _validate_subject(value: str) -> None:
    check_header_text(value)


class EmailSchema(marshmallow.Schema):
    to = Recipients(required=True)
    subject = fields.String(required=True,
                            validate=[validate.Length(1, MAX_SUBJECT_CHARS), _validate_subject])
    body = fields.String(required=True, validate=validate.Length(max=MAX_BODY_CHARS))
    html = fields.String(allow_none=True, validate=validate.Length(max=MAX_BODY_CHARS))


def _sender(mail: MailSettings) -> tuple[str, str]:
    """(From header, envelope address) from MAIL_DEFAULT_SENDER, which
    Flask-Mail allows as "a@b", "Name <a@b>" or ("Name", "a@b")."""
    sender = mail.default_sender
    if isinstance(sender, (tuple, list)) and len(sender) == 2:
        sender = formataddr((str(sender[0]), str(sender[1])))
    if not sender or not isinstance(sender, str):
        raise PermanentJobError(f"MAIL_DEFAULT_SENDER is not set (looked in {WHERE})")
    address = parseaddr(sender)[1]
    if _control_char(sender) or "@" not in address:
        raise PermanentJobError(f"MAIL_DEFAULT_SENDER is not a valid sender: {sender!r}")
    return sender, address


def build_message(payload: dict[str, Any], job_id: str, sender: str, sender_address: str,
                  date: Any) -> EmailMessage:
    message = EmailMessage(policy=SMTP_POLICY)
    domain = sender_address.rpartition("@")[2] or "queue-service.invalid"
    message["Message-ID"] = f"<{job_id}@{domain}>"
    message["Date"] = format_datetime(date)
    message["From"] = sender
    message["To"] = ", ".join(payload["to"])
    message["Subject"] = payload["subject"]
    message.set_content(payload["body"])
    if payload.get("html"):
        message.add_alternative(payload["html"], subtype="html")
    return message


def _deliver(mail: MailSettings, message: EmailMessage, sender_address: str, recipients: list[str]) -> dict:
    context = ssl.create_default_context()
    if mail.use_ssl:
        client: smtplib.SMTP = smtplib.SMTP_SSL(mail.server, mail.port, timeout=mail.timeout, context=context)
    else:
        client = smtplib.SMTP(mail.server, mail.port, timeout=mail.timeout)
    with client:
        if mail.use_tls and not mail.use_ssl:
            client.starttls(context=context)
        if mail.username:
            client.login(mail.username, mail.password or "")
        return client.send_message(message, from_addr=sender_address, to_addrs=recipients)


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


def send_email(payload: dict[str, Any], job: JobContext) -> dict[str, Any]:
    """The EMAIL_SEND handler."""
    mail = job.settings.mail
    sender, sender_address = _sender(mail)
    recipients: list[str] = payload["to"]
    message = build_message(payload, job.id, sender, sender_address, job.now())
    try:
        refused = _deliver(mail, message, sender_address, recipients)
    except smtplib.SMTPRecipientsRefused as exc:  # every recipient was refused
        codes = {code for code, _ in exc.recipients.values()}
        detail = "; ".join(f"{rcpt}: {code} {_text(msg)}" for rcpt, (code, msg) in exc.recipients.items())
        if all(500 <= code < 600 for code in codes):
            raise PermanentJobError(f"SMTP refused every recipient: {detail}") from exc
        raise RuntimeError(f"SMTP refused every recipient for now: {detail}") from exc
    except smtplib.SMTPResponseException as exc:
        text = _text(exc.smtp_error)
        if 500 <= exc.smtp_code < 600:
            raise PermanentJobError(f"SMTP {exc.smtp_code}: {text}") from exc
        raise  # 4xx: the worker retries
    except (smtplib.SMTPNotSupportedError, ssl.SSLCertVerificationError) as exc:
        raise PermanentJobError(f"SMTP server unusable with this configuration: {exc}") from exc
    # Recipients refused while others were accepted are recorded, not retried:
    # a retry would deliver the accepted ones a second time.
    refused_list = {rcpt: [code, _text(msg)] for rcpt, (code, msg) in refused.items()}
    log.info("[Worker] 📧 Email %s sent to %d recipient(s)", message["Message-ID"],
             len(recipients) - len(refused_list))
    return {"messageId": message["Message-ID"], "to": recipients, "refused": refused_list}
