"""Settings from app.config, else from the environment (where Heroku and Render put them)."""
from __future__ import annotations

import pytest
from flask import Flask

from queue_service import JobQueue
from queue_service.core.settings import Settings, setting
from servers import smtp_server  # noqa: F401  (fixture)

TOKEN = "env-token-1234"


def make_app(tmp_path, **config) -> tuple[Flask, JobQueue]:
    app = Flask("env_app")
    app.config.update({"QUEUE_DATABASE_URL": f"sqlite:///{tmp_path / 'queue.db'}", "QUEUE_AUTOSTART": False,
                       **config})
    queue = JobQueue(app)
    return app, queue


def test_an_exported_admin_token_opens_the_admin_routes(tmp_path, monkeypatch):
    monkeypatch.setenv("QUEUE_ADMIN_TOKEN", TOKEN)
    app, _ = make_app(tmp_path)
    client = app.test_client()
    assert client.get("/api/queue/stats", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/api/queue/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_app_config_beats_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("QUEUE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("QUEUE_MAX_RETRIES", "7")
    app, queue = make_app(tmp_path, QUEUE_ADMIN_TOKEN="config-token", QUEUE_MAX_RETRIES=2)
    settings = queue.state(app).settings
    assert (settings.admin_token, settings.max_retries) == ("config-token", 2)
    client = app.test_client()
    assert client.get("/api/queue/stats", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert client.get("/api/queue/stats", headers={"Authorization": "Bearer config-token"}).status_code == 200


def test_environment_strings_parse_like_config_values(monkeypatch):
    monkeypatch.setenv("QUEUE_POLL_INTERVAL", "0.5")
    monkeypatch.setenv("QUEUE_RETRY_DELAYS", "2,4.5")
    monkeypatch.setenv("QUEUE_ALLOW_PRIVATE_URLS", "true")
    monkeypatch.setenv("QUEUE_URL_PREFIX", "/jobs/")
    settings = Settings.from_config({})
    assert settings.poll_interval == 0.5 and isinstance(settings.poll_interval, float)
    assert settings.retry_delays == (2.0, 4.5)
    assert settings.allow_private_urls is True
    assert settings.url_prefix == "/jobs"


def test_empty_variables_and_none_in_config_count_as_unset():
    environ = {"QUEUE_STUCK_AFTER": "", "QUEUE_ADMIN_TOKEN": "t"}
    settings = Settings.from_config({"QUEUE_ADMIN_TOKEN": None}, environ=environ)
    assert settings.stuck_after == 600.0 and settings.admin_token == "t"


def test_only_the_queue_names_fall_back_to_the_environment():
    environ = {"SECRET_KEY": "s", "MONGO_URI": "mongodb://h/db", "MAIL_SERVER": "smtp.example"}
    assert setting({}, "SECRET_KEY", "default", environ) == "default"
    assert setting({}, "MONGO_URI", None, environ) == "mongodb://h/db"
    assert setting({}, "MAIL_SERVER", None, environ) == "smtp.example"
    assert setting({"MAIL_SERVER": "config.example"}, "MAIL_SERVER", None, environ) == "config.example"
    assert Settings.from_config({}, environ=environ).mail.server == "smtp.example"


def test_an_invalid_environment_value_is_a_configuration_error(tmp_path, monkeypatch):
    from queue_service import ConfigurationError

    monkeypatch.setenv("QUEUE_POLL_INTERVAL", "soon")
    with pytest.raises(ConfigurationError, match="QUEUE_POLL_INTERVAL"):
        make_app(tmp_path)


def test_the_missing_token_message_says_where_it_looked(tmp_path):
    app, _ = make_app(tmp_path)
    response = app.test_client().get("/api/queue/stats")
    assert response.status_code == 403
    assert "QUEUE_ADMIN_TOKEN is not configured (looked in app.config and the environment)" in \
        response.get_json()["error"]


def test_email_send_reads_mail_settings_from_the_environment(tmp_path, monkeypatch, smtp_server):
    monkeypatch.setenv("MAIL_SERVER", smtp_server.host)
    monkeypatch.setenv("MAIL_PORT", str(smtp_server.port))
    monkeypatch.setenv("MAIL_DEFAULT_SENDER", "Env <env@shop.example>")
    monkeypatch.setenv("MAIL_TIMEOUT", "5")
    app, queue = make_app(tmp_path)
    job_id = queue.add_job("EMAIL_SEND", {"to": "a@example.com", "subject": "hi", "body": "x"}, app=app)
    queue.state(app).runtime.make_worker().run_once()
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "completed", job["error"]
    [(mail_from, rcpts, message)] = smtp_server.messages
    assert mail_from == "env@shop.example" and message["From"] == "Env <env@shop.example>"


def test_a_missing_sender_names_both_places(tmp_path):
    app, queue = make_app(tmp_path, MAIL_SERVER="127.0.0.1", MAIL_PORT=9)
    job_id = queue.add_job("EMAIL_SEND", {"to": "a@example.com", "subject": "hi", "body": "x"}, app=app)
    queue.state(app).runtime.make_worker().run_once()
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "failed"
    assert "MAIL_DEFAULT_SENDER is not set (looked in app.config and the environment)" in job["error"]
