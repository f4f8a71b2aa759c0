"""The README's "Mount it in your app" snippet, run verbatim with the settings
exported in the environment (as Heroku and Render hand them over)."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def mount_snippet() -> str:
    """The first ```python block under the "## Mount it in your app" heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Mount it in your app\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert match, "no ```python block under 'Mount it in your app'"
    return match.group(1)


def test_the_mount_snippet_works_verbatim_with_exported_settings(tmp_path, monkeypatch):
    source = mount_snippet()
    assert "from_prefixed_env" not in source  # reads FLASK_* only: the trap the snippet used to set
    monkeypatch.setenv("QUEUE_ADMIN_TOKEN", "exported-token")
    monkeypatch.setenv("QUEUE_DATABASE_URL", f"sqlite:///{tmp_path / 'readme.db'}")
    monkeypatch.setenv("QUEUE_AUTOSTART", "false")  # no threads in this test
    path = tmp_path / "readme_app.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("readme_app", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "readme_app", module)
    spec.loader.exec_module(module)

    client = module.app.test_client()
    admin = {"Authorization": "Bearer exported-token"}
    assert client.get("/api/queue/stats").status_code == 401
    assert client.get("/api/queue/stats", headers=admin).status_code == 200

    created = client.post("/invoices/42/pdf")
    assert created.status_code == 202
    job_id = created.get_json()["id"]
    module.queue.state(module.app).runtime.make_worker().run_once()
    job = client.get(f"/api/queue/job/{job_id}", headers=admin).get_json()
    assert job["status"] == "completed" and job["result"] == {"pages": 3}
