"""MONGO_URI as Atlas hands it out: checked at ``init_app`` without the network.

``pymongo.uri_parser.parse_uri`` resolves a ``mongodb+srv://`` host in DNS
(and a wrong name then waits on the resolver), so an SRV URI is parsed as the
equivalent ``mongodb://`` URI with its SRV-only options left out: the user,
the database and the options are the same, and nothing is resolved.

``client_options`` bounds the queue's own client unless the URI sets its own
bounds: server selection in 5 s (pymongo's default is 30 s, which made an
unreachable server fail gunicorn's boot) and every operation in 5 s.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

from ..core.errors import ConfigurationError

SERVER_SELECTION_TIMEOUT_MS = 5000
OPERATION_TIMEOUT_MS = 5000
_SRV_ONLY = ("srvservicename", "srvmaxhosts")


def _without_srv(uri: str) -> str:
    rest = uri[len("mongodb+srv://"):]
    head, _, query = rest.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() not in _SRV_ONLY]
    return "mongodb://" + head + ("?" + urlencode(kept) if kept else "")


def parse(uri: str) -> dict[str, Any]:
    """pymongo's parse of ``uri``, never contacting a server or a resolver.
    A malformed URI is a ConfigurationError naming MONGO_URI."""
    from pymongo import uri_parser
    from pymongo.errors import ConfigurationError as PyMongoConfigurationError, InvalidURI

    plain = _without_srv(uri) if uri.startswith("mongodb+srv://") else uri
    try:
        return uri_parser.parse_uri(plain)
    except (InvalidURI, PyMongoConfigurationError, ValueError) as exc:
        raise ConfigurationError(f"MONGO_URI is not a valid MongoDB URI: {exc}") from None


def check(uri: str) -> str:
    """The database MONGO_URI names; a ConfigurationError when it names none."""
    database = parse(uri).get("database")
    if not database:
        raise ConfigurationError(
            "MONGO_URI names no database: put one after the host, e.g. "
            "mongodb+srv://user:pw@cluster0.example.net/myapp?retryWrites=true (Atlas leaves it out)")
    return database


def client_options(uri: str) -> dict[str, Any]:
    """Keyword arguments for the queue's MongoClient: the bounds the URI does not set."""
    given = {name.lower() for name in parse(uri).get("options", {})}
    options: dict[str, Any] = {}
    if "serverselectiontimeoutms" not in given:
        options["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
    # pymongo lets timeoutMS override serverSelectionTimeoutMS (measured: 300 ms
    # selection with timeoutMS=2000 waited 2 s), so a URI that sets either bound
    # keeps its own; else one 5 s bound covers selection and every operation.
    if not given & {"timeoutms", "serverselectiontimeoutms"}:
        options["timeoutMS"] = OPERATION_TIMEOUT_MS
    return options
