"""The shipped Prometheus alert rules and Grafana dashboard (deploy/), checked by
Prometheus's own `promtool`: rules parse, fire on synthetic series as their
tests say, every dashboard query parses, and every alert has its runbook."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "imagine-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "imagine-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "imagine-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool (Debian's prometheus package) is not installed; scripts/test installs it"
        )
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def dashboard_queries() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_alert_rules_are_valid() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout


def test_no_worker_and_oldest_age_alerts_fire_on_synthetic_series() -> None:
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    text = RULE_TESTS.read_text()
    for alert in ("ImagineNoLiveWorkers", "ImagineQueueOldestTaskTooOld"):
        assert f"alertname: {alert}" in text


def test_a_broken_rule_test_fails(tmp_path: Path) -> None:
    """promtool really evaluates the expectations (so the test above can fail)."""
    (tmp_path / "imagine-alerts.yml").write_text(RULES.read_text())
    broken = RULE_TESTS.read_text().replace("eval_time: 22m", "eval_time: 12m", 1)
    (tmp_path / "broken.test.yml").write_text(broken)
    tested = promtool("test", "rules", str(tmp_path / "broken.test.yml"))
    assert tested.returncode != 0
    assert "ImagineQueueOldestTaskTooOld" in tested.stdout + tested.stderr


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    # Each query as a recording rule, Grafana's interval variable given a value.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q.replace("$__rate_interval", "5m")}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_has_a_runbook_section() -> None:
    alerts = re.findall(r"- alert: (\w+)", RULES.read_text())
    anchors = re.findall(r"docs/operations\.md#(\w+)", RULES.read_text())
    assert len(alerts) == len(anchors) == 8
    headings = {
        re.sub(r"[^a-z0-9-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("### ")
    }
    for alert, anchor in zip(alerts, anchors, strict=True):
        assert anchor == alert.lower() and anchor in headings, alert
