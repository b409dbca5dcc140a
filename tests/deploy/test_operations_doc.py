"""docs/operations.md names every audit event and every metric the code emits."""

from __future__ import annotations

import re
import typing

from prometheus_client import Counter, Histogram

from broker import metrics
from broker.audit import AuditEvent
from mcp_app import metrics as mcp_app_metrics
from tests.deploy.chart import CHART_DIR, ROOT

DOC = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")


def _documented_table_names() -> set[str]:
    return set(re.findall(r"^\| `(mcpb_[a-z_]+)`", DOC, re.MULTILINE))


def test_every_audit_event_is_documented() -> None:
    missing = [event for event in typing.get_args(AuditEvent) if f"`{event}`" not in DOC]
    assert missing == []


def test_the_metrics_table_matches_the_code() -> None:
    exposed = set()
    for value in [*vars(metrics).values(), *vars(mcp_app_metrics).values()]:
        if isinstance(value, Counter):
            exposed.add(f"{value._name}_total")
        elif isinstance(value, Histogram):
            exposed.add(value._name)
    assert exposed
    assert _documented_table_names() == exposed


def test_the_examples_named_in_the_doc_exist() -> None:
    for name in re.findall(r"`([a-z-]+-values\.yaml)`", DOC):
        assert (CHART_DIR / "ci" / name).exists(), name
