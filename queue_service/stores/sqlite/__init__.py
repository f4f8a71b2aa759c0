"""The SQLite store: ``store`` (the Store; ``side_tables`` its media, schedules, workers and
history), ``queries`` (its SQL), ``rows`` (rows <-> Jobs), ``connections``."""
from .store import SQLiteStore, path_from_url

__all__ = ["SQLiteStore", "path_from_url"]
