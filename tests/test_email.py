"""EMAIL_SEND against a real SMTP server (aiosmtpd) on 127.0.0.1, run by a
real worker on both stores, time moved by the manual clock."""
from __future__ import annotations

from email.header import decode_header, make_header

import pytest

from queue_service.core.errors import ValidationError
from servers import free_port, smtp_server  # noqa: F401  (fixture)

SENDER = "Shop <noreply@shop.example>"


@pytest.fixture
def mail_app(make_app, smtp_server):
    def factory(**config):
        settings = {"MAIL_SERVER": smtp_server.host, "MAIL_PORT": smtp_server.port,
                    "MAIL_DEFAULT_SENDER": SENDER, "MAIL_TIMEOUT": 5}
        settings.update(config)
        return make_app(**settings)
    return factory


def run(app, queue, payload, **options):
    job_id = queue.add_job("EMAIL_SEND", payload, app=app, **options)
    app.extensions["queue_service"].runtime.make_worker().run_once()
    return job_id, queue.get_job_status(job_id, app=app)


def test_message_delivered_once_with_the_right_headers(mail_app, smtp_server, clock):
    app, queue = mail_app()
    payload = {"to": "alice@example.com", "subject": "Your order", "body": "Thanks!"}
    job_id, job = run(app, queue, payload)
    assert job["status"] == "completed", job["error"]
    [(mail_from, rcpts, message)] = smtp_server.messages
    assert (mail_from, rcpts) == ("noreply@shop.example", ["alice@example.com"])
    assert message["From"] == SENDER and message["To"] == "alice@example.com"
    assert message["Subject"] == "Your order"
    assert message["Message-ID"] == f"<{job_id}@shop.example>" == job["result"]["messageId"]
    assert message["Date"] == "Tue, 01 Jan 2030 00:00:00 +0000"  # from the injected clock
    assert message.get_content_type() == "text/plain" and message.get_payload(decode=True) == b"Thanks!\r\n"
    assert message["Bcc"] is None
    assert job["result"]["refused"] == {}


def test_html_makes_multipart_alternative_and_lists_reach_everyone(mail_app, smtp_server):
    app, queue = mail_app(MAIL_DEFAULT_SENDER=("Shop", "noreply@shop.example"))
    to = ["a@example.com", "b@example.com", "c@example.org"]
    _, job = run(app, queue, {"to": to, "subject": "Hi", "body": "plain", "html": "<p>rich</p>"})
    assert job["status"] == "completed"
    [(_, rcpts, message)] = smtp_server.messages
    assert rcpts == to and message["To"] == ", ".join(to) and message["From"] == SENDER
    assert message.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in message.get_payload()]
    assert parts == ["text/plain", "text/html"]


def test_non_ascii_subject_is_encoded_and_round_trips(mail_app, smtp_server):
    app, queue = mail_app()
    run(app, queue, {"to": "a@example.com", "subject": "Café ☕ — commande reçue", "body": "é"})
    [(_, _, message)] = smtp_server.messages
    assert str(make_header(decode_header(message["Subject"]))) == "Café ☕ — commande reçue"


def test_550_fails_at_once(mail_app, smtp_server):
    app, queue = mail_app()
    smtp_server.recorder.replies = ["550 5.7.1 Message rejected"]
    _, job = run(app, queue, {"to": "a@example.com", "subject": "x", "body": "y"})
    assert job["status"] == "failed" and job["retryCount"] == 0 and len(job["attempts"]) == 1
    assert "SMTP 550" in job["error"] and "rejected" in job["error"]
    assert smtp_server.messages == []


def test_451_retries_then_delivers_once_with_the_same_message_id(mail_app, smtp_server, clock):
    app, queue = mail_app()
    state = app.extensions["queue_service"]
    smtp_server.recorder.replies = ["451 4.3.0 Try again later"]
    job_id, job = run(app, queue, {"to": "a@example.com", "subject": "x", "body": "y"})
    assert job["status"] == "pending" and job["retryCount"] == 1
    assert "451" in job["attempts"][0]["error"] and job["attempts"][0]["nextDelaySeconds"] == 1
    assert state.runtime.make_worker().run_once() is None  # the 1 s delay has not passed
    clock.advance(1.001)
    assert state.runtime.make_worker().run_once() is not None
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "completed"
    assert smtp_server.recorder.attempts == 2
    [(_, _, message)] = smtp_server.messages
    assert message["Message-ID"] == f"<{job_id}@shop.example>"


def test_refused_connection_retries(mail_app):
    app, queue = mail_app(MAIL_PORT=free_port())  # nothing listens there
    _, job = run(app, queue, {"to": "a@example.com", "subject": "x", "body": "y"})
    assert job["status"] == "pending" and job["retryCount"] == 1
    assert "Connection" in job["attempts"][0]["error"] or "refused" in job["attempts"][0]["error"]


def test_every_recipient_refused_with_5xx_fails(mail_app, smtp_server):
    app, queue = mail_app()
    smtp_server.recorder.rcpt_replies = {"a@example.com": "550 5.1.1 No such user"}
    _, job = run(app, queue, {"to": "a@example.com", "subject": "x", "body": "y"})
    assert job["status"] == "failed" and "No such user" in job["error"]


def test_every_recipient_refused_with_4xx_retries(mail_app, smtp_server):
    app, queue = mail_app()
    smtp_server.recorder.rcpt_replies = {"a@example.com": "450 4.2.1 Mailbox busy"}
    _, job = run(app, queue, {"to": "a@example.com", "subject": "x", "body": "y"})
    assert job["status"] == "pending" and job["retryCount"] == 1


def test_partly_refused_recipients_are_recorded_not_retried(mail_app, smtp_server):
    app, queue = mail_app()
    smtp_server.recorder.rcpt_replies = {"gone@example.com": "550 5.1.1 No such user"}
    _, job = run(app, queue, {"to": ["ok@example.com", "gone@example.com"], "subject": "x", "body": "y"})
    assert job["status"] == "completed"
    assert job["result"]["refused"] == {"gone@example.com": [550, "5.1.1 No such user"]}
    [(_, rcpts, _)] = smtp_server.messages
    assert rcpts == ["ok@example.com"]


def test_starttls_required_but_not_offered_fails_permanently(mail_app, smtp_server):
    app, queue = mail_app(MAIL_USE_TLS="true")  # the test server offers no STARTTLS
    _, job = run(app, queue, {"to": "a@example.com", "subject": "x", "body": "y"})
    assert job["status"] == "failed" and "STARTTLS" in job["error"]
    assert smtp_server.messages == []


def test_missing_sender_fails_permanently(mail_app, smtp_server):
    app, queue = mail_app(MAIL_DEFAULT_SENDER=None)
    _, job = run(app, queue, {"to": "a@example.com", "subject": "x", "body": "y"})
    assert job["status"] == "failed" and "MAIL_DEFAULT_SENDER" in job["error"]


INJECTIONS = [
    "Hello\r\nBcc: victim@example.com",
    "Hello\nBcc: victim@example.com",
    "Hello\rBcc: victim@example.com",
    "Hello\x00",
    "Hello\x85Bcc: x@y.com",
    "Hello\u2028Bcc: x@y.com",
    "=?UTF-8?Q?=0A?=Bcc: victim@example.com",  # CVE-2024-6923
    "=?utf-8?q?Hi=0D=0ABcc=3A_victim=40example=2Ecom?=",
    "=?UTF-8?B?DQpCY2M6IHZpY3RpbUBleGFtcGxlLmNvbQ==?=",  # base64 of "\r\nBcc: victim@example.com"
    "=?ISO-8859-1?Q?a=0Ab?=",
    "=?UTF-8?Q?=3D=3FUTF-8=3FQ=3F=3D0A=3F=3D?=",  # an encoded word that decodes to one
]


@pytest.mark.parametrize("subject", INJECTIONS)
def test_header_injection_in_subject_is_refused_at_enqueue(mail_app, subject):
    app, queue = mail_app()
    with pytest.raises(ValidationError) as info:
        queue.add_job("EMAIL_SEND", {"to": "a@example.com", "subject": subject, "body": "y"}, app=app)
    assert "control characters" in info.value.messages["payload"]["subject"][0]
    assert queue.get_queue_stats(app=app)["total"] == 0


@pytest.mark.parametrize("to, where", [
    ("a@example.com\r\nBcc: victim@example.com", 0),
    ("a@example.com\n", 0),
    ("=?UTF-8?Q?a=0A?=@example.com", 0),
    (["ok@example.com", "b@example.com\nBcc: victim@example.com"], 1),
    ("Alice <a@example.com>", 0),
    ('"a\\nb"@example.com', 0),
    ("not-an-address", 0),
    ("a@example.com, b@example.com", 0),
    ([42], 0),
])
def test_bad_addresses_are_refused_at_enqueue(mail_app, to, where):
    app, queue = mail_app()
    with pytest.raises(ValidationError) as info:
        queue.add_job("EMAIL_SEND", {"to": to, "subject": "x", "body": "y"}, app=app)
    assert where in info.value.messages["payload"]["to"]
    assert queue.get_queue_stats(app=app)["total"] == 0


@pytest.mark.parametrize("payload, field", [
    ({"subject": "x", "body": "y"}, "to"),
    ({"to": [], "subject": "x", "body": "y"}, "to"),
    ({"to": ["a@example.com"] * 51, "subject": "x", "body": "y"}, "to"),
    ({"to": {"a": 1}, "subject": "x", "body": "y"}, "to"),
    ({"to": "a@example.com", "body": "y"}, "subject"),
    ({"to": "a@example.com", "subject": "", "body": "y"}, "subject"),
    ({"to": "a@example.com", "subject": "x" * 999, "body": "y"}, "subject"),
    ({"to": "a@example.com", "subject": "x"}, "body"),
    ({"to": "a@example.com", "subject": "x", "body": 5}, "body"),
    ({"to": "a@example.com", "subject": "x", "body": "y", "html": 5}, "html"),
    ({"to": "a@example.com", "subject": "x", "body": "y", "cc": "b@example.com"}, "cc"),
])
def test_bad_payloads_name_the_field(mail_app, payload, field):
    app, queue = mail_app()
    with pytest.raises(ValidationError) as info:
        queue.add_job("EMAIL_SEND", payload, app=app)
    assert field in info.value.messages["payload"]
    assert queue.get_queue_stats(app=app)["total"] == 0


def test_harmless_encoded_words_are_allowed(mail_app, smtp_server):
    app, queue = mail_app()
    _, job = run(app, queue, {"to": "a@example.com", "subject": "=?UTF-8?Q?caf=C3=A9?= time", "body": "y"})
    assert job["status"] == "completed"
    assert len(smtp_server.messages) == 1
