"""docs/configuration.md documents every mcp_app setting, with its default, and the chart sets no other."""

from __future__ import annotations

import json
import re

from mcp_app.settings import McpAppSettings
from tests.deploy.chart import CHART_DIR, ROOT

DOC = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
SECTION = DOC.split("\n## mcp_app settings\n", 1)[-1].split("\n## ", 1)[0]
ROWS = {m[0]: m[1] for m in re.findall(r"^\| `([a-z_]+)` \| [^|]+ \| ([^|]+) \|", SECTION, re.MULTILINE)}


def _shown(value: object) -> str:
    """A default as the doc writes it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def test_the_doc_has_the_section() -> None:
    assert "\n## mcp_app settings\n" in DOC
    assert ROWS


def test_every_setting_is_documented_and_nothing_else() -> None:
    assert set(ROWS) == set(McpAppSettings.model_fields)


def test_each_documented_default_is_the_real_one() -> None:
    wrong = {
        name: (ROWS[name], _shown(field.get_default(call_default_factory=True)))
        for name, field in McpAppSettings.model_fields.items()
        if name in ROWS and not ROWS[name].strip().startswith(_shown(field.get_default(call_default_factory=True)))
    }
    assert wrong == {}


def test_the_chart_sets_only_real_settings() -> None:
    template = (CHART_DIR / "templates" / "mcp-app-deployment.yaml").read_text(encoding="utf-8")
    names = {name.lower() for name in re.findall(r"name: MCP_APP_([A-Z_]+)", template)}
    assert names
    assert names <= set(McpAppSettings.model_fields)
