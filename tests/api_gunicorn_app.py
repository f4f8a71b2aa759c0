"""The app tests/test_api_gunicorn.py serves with gunicorn: the queue alone,
configured from QUEUE_* environment variables (a temp SQLite file)."""
from __future__ import annotations

import os

from flask import Flask

from queue_service import JobQueue

app = Flask(__name__)
app.config.update({key: value for key, value in os.environ.items() if key.startswith("QUEUE_")})
queue = JobQueue(app)
