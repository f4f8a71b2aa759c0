"""The layout's one rule that code can check: the core and the stores import no Flask."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_core_and_stores_import_without_flask():
    """Every module below queue_service.core and queue_service.stores imports
    in a process where Flask (and flask_pymongo) cannot be imported."""
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        class NoFlask:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("flask", "flask_pymongo", "werkzeug"):
                    raise ImportError(f"{name} is not importable in this test")
                return None
        sys.meta_path.insert(0, NoFlask())
        # The package's own __init__ mounts the web layer; load the rooms below it directly.
        import types
        pkg = types.ModuleType("queue_service")
        pkg.__path__ = [sys.argv[1]]
        sys.modules["queue_service"] = pkg
        loaded = []
        for room in ("core", "stores"):
            base = importlib.import_module(f"queue_service.{room}")
            for info in pkgutil.walk_packages(base.__path__, f"queue_service.{room}."):
                importlib.import_module(info.name)
                loaded.append(info.name)
        assert not [m for m in sys.modules if m.split(".")[0] in ("flask", "werkzeug")], "flask got imported"
        print(len(loaded))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(ROOT / "queue_service")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 12  # core's modules and both stores were really imported


def test_the_extension_leaves_job_validation_to_the_core():
    """JobQueue.periodic hands its arguments to core.periodic.make_schedule, as
    add_job hands them to the service: web/extension.py loads no payload
    (no marshmallow) and checks no job option against core.limits itself."""
    tree = ast.parse((ROOT / "queue_service" / "web" / "extension.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(alias.name for alias in node.names)
            names.add(getattr(node, "module", None) or "")
    assert not names & {"marshmallow", "PRIORITY_RANGE", "as_json", "storable"}, names
