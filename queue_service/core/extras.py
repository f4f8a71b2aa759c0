"""The distribution's optional parts (``pip install "queue-service[EXTRA]"``).

The base install runs the SQLite store, an app's own job types, EMAIL_SEND and
CLEANUP. What needs an extra checks for it where it is first used and says in
one line which extra to install; nothing here imports the optional modules.
"""
from __future__ import annotations

import importlib.util

from .errors import ConfigurationError

DISTRIBUTION = "queue-service"

#: extra -> (import name, distribution name) of what it installs.
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "mongo": (("pymongo", "pymongo"), ("flask_pymongo", "flask-pymongo")),
    "images": (("PIL", "pillow"),),
    "metrics": (("prometheus_client", "prometheus-client"),),
}


def install_hint(extra: str) -> str:
    return f'pip install "{DISTRIBUTION}[{extra}]"'


def missing(extra: str) -> list[str]:
    """The distributions of ``extra`` that cannot be imported here."""
    return [dist for module, dist in EXTRAS[extra] if importlib.util.find_spec(module) is None]


def message(extra: str, what: str) -> str | None:
    """None when ``extra`` is installed, else the one-line explanation."""
    absent = missing(extra)
    if not absent:
        return None
    return f"{what} needs {' and '.join(absent)}, which is not installed: {install_hint(extra)}"


def require(extra: str, what: str) -> None:
    """Raise ConfigurationError (one line, naming the extra) unless ``extra`` is installed."""
    text = message(extra, what)
    if text is not None:
        raise ConfigurationError(text)
