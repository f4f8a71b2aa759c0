"""Typed settings read from the host app's configuration (a plain mapping), else
from the environment.

Each ``QUEUE_*`` and ``MAIL_*`` setting and ``MONGO_URI`` comes from
``app.config`` when it is set there (not None) and otherwise from
``os.environ`` (an empty variable counts as unset): what Heroku and Render
export works without copying it into ``app.config``, and app.config wins.

A value may be a Python value (list, float, bool, None) or the environment's
string form ("1,5,15", "0.5", "false"); both mean the same. Durations are
seconds and may be fractions.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, Mapping
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .limits import QUEUE_NAME, is_queue_name
from .jobs import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_DELAYS_SECONDS, RetryPolicy

ENV_PREFIXES = ("QUEUE_", "MAIL_")
ENV_NAMES = frozenset({"MONGO_URI"})
#: For messages about a setting that was not found.
WHERE = "app.config and the environment"


def from_environment(name: str) -> bool:
    """Whether ``name`` may come from the environment when app.config lacks it."""
    return name.startswith(ENV_PREFIXES) or name in ENV_NAMES


def setting(config: Mapping[str, Any], name: str, default: Any = None,
            environ: Mapping[str, str] | None = None) -> Any:
    """``config[name]`` when set (not None); else, for QUEUE_*, MAIL_* and
    MONGO_URI, the environment variable of that name when not empty; else
    ``default``."""
    value = config.get(name)
    if value is None and from_environment(name):
        value = (os.environ if environ is None else environ).get(name) or None
    return default if value is None else value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be a boolean, got {value!r}")


def as_seconds(value: Any, name: str, minimum: float = 0.0) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}") from None
    if seconds < minimum or seconds != seconds:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value!r}")
    return seconds


def as_int(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    if number < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value!r}")
    return number


def as_queues(value: Any, name: str) -> tuple[str, ...] | None:
    """"*" (every queue) -> None; "images,default" or a list -> the names, checked."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(item).strip() for item in items if str(item).strip()]
    if not names or names == ["*"]:
        return None
    bad = [n for n in names if not is_queue_name(n)]
    if bad:
        raise ConfigurationError(f"{name} takes queue names matching {QUEUE_NAME} or *, got {bad[0]!r}")
    return tuple(dict.fromkeys(names))


def check_admin_token(token: Any) -> None:
    """Refuse at start a token no client can send: surrounding whitespace
    (HTTP strips it from header values) or non-ASCII characters (clients
    send headers as latin-1 or refuse them, so the bytes never match)."""
    if token is None:
        return
    if not isinstance(token, str):
        raise ConfigurationError("QUEUE_ADMIN_TOKEN must be a string")
    if token != token.strip():
        raise ConfigurationError("QUEUE_ADMIN_TOKEN has leading or trailing whitespace; remove it")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigurationError("QUEUE_ADMIN_TOKEN must be printable ASCII without spaces "
                                 "(HTTP clients cannot send other characters reliably)")


def as_delays(value: Any, name: str) -> list[float]:
    items = value.split(",") if isinstance(value, str) else list(value)
    delays = [as_seconds(item, name) for item in items if str(item).strip() != ""]
    if not delays:
        raise ConfigurationError(f"{name} needs at least one delay")
    return delays


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///instance/queue.db"
    sqlite_synchronous: str = "NORMAL"
    mongo_uri: str | None = None
    mongo_collection: str = "queue_jobs"
    url_prefix: str = "/api/queue"
    autostart: bool | None = None  # None: on outside gunicorn
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS_SECONDS
    heartbeat_interval: float = 30.0
    stuck_after: float = 600.0
    cleanup_interval: float = 300.0
    poll_interval: float = 1.0
    poll_max_interval: float = 10.0  # idle polls double from poll_interval up to this (core/idle.py)
    #: The ceiling's default when QUEUE_POLL_MAX_INTERVAL is unset: on MongoDB a
    #: poll is a round trip counted against the server's quota, so idle polls
    #: back off to 10 s; on SQLite it is a local read, so they do not back off.
    MONGO_POLL_MAX_INTERVAL = 10.0
    shutdown_timeout: float = 25.0
    completed_ttl: float = 604800.0
    failed_ttl: float = 2592000.0
    admin_token: str | None = None
    development: bool = False
    max_body_bytes: int = 65536
    allow_private_urls: bool = False
    image_max_side: int = 1600
    image_quality: int = 80
    image_format: str = "webp"
    callback_secret: str | None = None
    media_secret: str | None = None
    image_max_pixels: int = 35_000_000  # handlers.image.DEFAULT_MAX_PIXELS
    image_job_timeout: float = 180.0
    metrics_public: bool = False
    eager: bool = False  # QUEUE_EAGER: add_job runs the job in the caller (tests); no threads
    eager_raise: bool = False  # QUEUE_EAGER_RAISE: a job that fails eagerly re-raises its exception
    mail: "MailSettings" = None  # type: ignore[assignment]  # set by from_config
    worker_queues: tuple[str, ...] | None = None  # None: every queue ("*")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                    mongo_given: bool = False) -> "Settings":
        """From ``config`` (app.config), else ``environ`` (default ``os.environ``).
        ``mongo_given``: the host handed over a MongoDB database (``init_app(mongo=...)``)."""
        def get(key: str, default: Any = None) -> Any:
            return setting(config, key, default, environ)

        autostart = get("QUEUE_AUTOSTART")
        if isinstance(autostart, str) and autostart.strip().lower() in ("", "auto"):
            autostart = None
        eager = as_bool(get("QUEUE_EAGER", False), "QUEUE_EAGER")
        if eager:
            if autostart is not None and as_bool(autostart, "QUEUE_AUTOSTART"):
                raise ConfigurationError("QUEUE_EAGER runs jobs in the caller, without threads: "
                                         "unset QUEUE_AUTOSTART or set it to false")
            autostart = False
        synchronous = str(get("QUEUE_SQLITE_SYNCHRONOUS", "NORMAL")).upper()
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigurationError(f"QUEUE_SQLITE_SYNCHRONOUS must be NORMAL or FULL, got {synchronous!r}")
        settings = cls(
            database_url=str(get("QUEUE_DATABASE_URL", cls.database_url)),
            sqlite_synchronous=synchronous,
            mongo_uri=get("MONGO_URI") or None,
            mongo_collection=str(get("QUEUE_MONGO_COLLECTION", cls.mongo_collection)),
            url_prefix=str(get("QUEUE_URL_PREFIX", cls.url_prefix)).rstrip("/"),
            autostart=None if autostart is None else as_bool(autostart, "QUEUE_AUTOSTART"),
            max_retries=as_int(get("QUEUE_MAX_RETRIES", cls.max_retries), "QUEUE_MAX_RETRIES"),
            retry_delays=tuple(as_delays(get("QUEUE_RETRY_DELAYS", cls.retry_delays), "QUEUE_RETRY_DELAYS")),
            heartbeat_interval=as_seconds(get("QUEUE_HEARTBEAT_INTERVAL", 30), "QUEUE_HEARTBEAT_INTERVAL", 0.001),
            stuck_after=as_seconds(get("QUEUE_STUCK_AFTER", 600), "QUEUE_STUCK_AFTER", 0.001),
            cleanup_interval=as_seconds(get("QUEUE_CLEANUP_INTERVAL", 300), "QUEUE_CLEANUP_INTERVAL", 0.001),
            poll_interval=as_seconds(get("QUEUE_POLL_INTERVAL", 1), "QUEUE_POLL_INTERVAL", 0.001),
            poll_max_interval=as_seconds(get("QUEUE_POLL_MAX_INTERVAL", cls.MONGO_POLL_MAX_INTERVAL
                                             if mongo_given or get("MONGO_URI") else get("QUEUE_POLL_INTERVAL", 1)),
                                         "QUEUE_POLL_MAX_INTERVAL", 0.001),
            shutdown_timeout=as_seconds(get("QUEUE_SHUTDOWN_TIMEOUT", 25), "QUEUE_SHUTDOWN_TIMEOUT"),
            completed_ttl=as_seconds(get("QUEUE_COMPLETED_TTL", 604800), "QUEUE_COMPLETED_TTL"),
            failed_ttl=as_seconds(get("QUEUE_FAILED_TTL", 2592000), "QUEUE_FAILED_TTL"),
            admin_token=get("QUEUE_ADMIN_TOKEN") or None,
            development=as_bool(get("QUEUE_DEVELOPMENT", False), "QUEUE_DEVELOPMENT"),
            max_body_bytes=as_int(get("QUEUE_MAX_BODY_BYTES", 65536), "QUEUE_MAX_BODY_BYTES", 1),
            allow_private_urls=as_bool(get("QUEUE_ALLOW_PRIVATE_URLS", False), "QUEUE_ALLOW_PRIVATE_URLS"),
            image_max_side=as_int(get("QUEUE_IMAGE_MAX_SIDE", 1600), "QUEUE_IMAGE_MAX_SIDE", 16),
            image_quality=as_int(get("QUEUE_IMAGE_QUALITY", 80), "QUEUE_IMAGE_QUALITY", 1),
            image_format=str(get("QUEUE_IMAGE_FORMAT", "webp")).strip().lower().replace("jpg", "jpeg"),
            callback_secret=get("QUEUE_CALLBACK_SECRET") or None,
            media_secret=get("QUEUE_MEDIA_SECRET") or None,
            image_max_pixels=as_int(get("QUEUE_IMAGE_MAX_PIXELS", cls.image_max_pixels), "QUEUE_IMAGE_MAX_PIXELS", 1),
            image_job_timeout=as_seconds(get("QUEUE_IMAGE_JOB_TIMEOUT", cls.image_job_timeout),
                                         "QUEUE_IMAGE_JOB_TIMEOUT", 0.001),
            metrics_public=as_bool(get("QUEUE_METRICS_PUBLIC", False), "QUEUE_METRICS_PUBLIC"),
            eager=eager,
            eager_raise=as_bool(get("QUEUE_EAGER_RAISE", False), "QUEUE_EAGER_RAISE"),
            mail=MailSettings.from_config(get),
            worker_queues=as_queues(get("QUEUE_WORKER_QUEUES", "*"), "QUEUE_WORKER_QUEUES"),
        )
        check_admin_token(settings.admin_token)
        if settings.image_quality > 100:
            raise ConfigurationError(f"QUEUE_IMAGE_QUALITY must be 1..100, got {settings.image_quality}")
        if settings.image_format not in ("webp", "jpeg"):
            raise ConfigurationError(f"QUEUE_IMAGE_FORMAT must be webp or jpeg, got {settings.image_format!r}")
        if settings.heartbeat_interval >= settings.stuck_after:
            raise ConfigurationError("QUEUE_HEARTBEAT_INTERVAL must be shorter than QUEUE_STUCK_AFTER")
        if settings.mongo_uri:
            from .extras import require

            require("mongo", "MONGO_URI (the MongoDB store)")
            if not urlsplit(settings.mongo_uri).path.strip("/"):
                raise ConfigurationError(
                    "MONGO_URI names no database: put one after the host, e.g. "
                    "mongodb+srv://USER:PASSWORD@cluster0.example.mongodb.net/myapp?retryWrites=true&w=majority")
        return settings

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of these settings (``stuck_after`` decides what is
        stuck): one object, shared by the worker, the scheduler and the service.
        Settings are frozen, so it never goes stale."""
        return RetryPolicy(self.stuck_after)

    def as_dict(self) -> dict[str, Any]:
        secret = ("admin_token", "callback_secret", "media_secret", "mail")
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in secret}
        out["mail"] = {k: v for k, v in vars(self.mail).items() if k != "password"} if self.mail else None
        return out


@dataclass(frozen=True)
class MailSettings:
    """EMAIL_SEND's SMTP settings, under Flask-Mail's names. The sender is
    checked when a message is sent (a missing one fails that job, not the app)."""

    server: str = "localhost"
    port: int = 25
    use_tls: bool = False
    use_ssl: bool = False
    username: str | None = None
    password: str | None = None
    default_sender: Any = None  # "a@b", "Name <a@b>" or ("Name", "a@b")
    timeout: float = 30.0

    @classmethod
    def from_config(cls, get: Any) -> "MailSettings":
        username, password = get("MAIL_USERNAME"), get("MAIL_PASSWORD")
        return cls(
            server=str(get("MAIL_SERVER") or cls.server),
            port=as_int(get("MAIL_PORT") or cls.port, "MAIL_PORT", 1),
            use_tls=as_bool(get("MAIL_USE_TLS") or False, "MAIL_USE_TLS"),
            use_ssl=as_bool(get("MAIL_USE_SSL") or False, "MAIL_USE_SSL"),
            username=str(username) if username else None,
            password=None if password is None else str(password),
            default_sender=get("MAIL_DEFAULT_SENDER"),
            timeout=as_seconds(get("MAIL_TIMEOUT") or cls.timeout, "MAIL_TIMEOUT", 0.001),
        )
