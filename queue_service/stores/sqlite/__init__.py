"""The SQLite store: ``store`` (the Store), ``queries`` (its SQL), ``connections``."""
from .store import SQLiteStore, path_from_url

__all__ = ["SQLiteStore", "path_from_url"]
