"""Settings from the environment, for the demo host app in wsgi.py.

Every QUEUE_*, MAIL_* and MONGO_URI variable in the environment is copied
into app.config as a string; queue_service parses strings and Python values
alike, so a host app may also set them directly.
"""
from __future__ import annotations

import os

PASSED_THROUGH_PREFIXES = ("QUEUE_", "MAIL_")
PASSED_THROUGH_NAMES = ("MONGO_URI", "SECRET_KEY")


def from_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {key: value for key, value in environ.items()
            if key.startswith(PASSED_THROUGH_PREFIXES) or key in PASSED_THROUGH_NAMES}


class Config:
    """Production defaults: admin routes need QUEUE_ADMIN_TOKEN."""

    SECRET_KEY = "change-me"
    QUEUE_DATABASE_URL = "sqlite:///instance/queue.db"
    MAIL_SERVER = "localhost"
    MAIL_PORT = "25"
    MAIL_DEFAULT_SENDER = "queue@localhost"


class DevelopmentConfig(Config):
    """``python wsgi.py``: admin routes open without a token."""

    QUEUE_DEVELOPMENT = True


class TestingConfig(Config):
    TESTING = True
    QUEUE_AUTOSTART = False


CONFIGS = {"production": Config, "development": DevelopmentConfig, "testing": TestingConfig}
