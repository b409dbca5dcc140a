"""docs/identity-assertion.md stays true to the configuration: its YAML examples load (unknown
keys are errors there), and every dotted configuration key it names exists."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from broker.config import parse_config
from broker.config.models import BrokerConfig

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "identity-assertion.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")

BASE = """
issuer: https://mcp-auth.example.com
redis:
  url: redis://127.0.0.1:6379/0
signing:
  key_encryption_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
providers:
  - id: corp-ad
    type: ldap
    display_name: Corporate directory
    urls: ["ldaps://dc1.corp.example.com"]
    bind_dn: "CN=mcp-broker,OU=Services,DC=corp,DC=example,DC=com"
    bind_password: "x"
    user_base_dn: "OU=People,DC=corp,DC=example,DC=com"
resources:
  - id: notes
    uri: https://notes.example.com/mcp
    name: Team notes
    scopes:
      - name: notes:read
        description: Read notes
"""


def _yaml_blocks() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC, flags=re.DOTALL)
    assert len(blocks) >= 2
    return [yaml.safe_load(block) for block in blocks]


def test_the_examples_load_as_one_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LDAP_BIND_PASSWORD", "CLAUDE_ENTERPRISE_SECRET"):
        monkeypatch.setenv(name, "s" * 32)
    merged: dict[str, Any] = yaml.safe_load(BASE)
    for block in _yaml_blocks():
        for key, value in block.items():
            if isinstance(value, list):
                merged[key] = [*merged.get(key, []), *value]
            elif isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    config = parse_config(yaml.safe_dump(merged))
    [trusted] = config.identity_assertion.trusted_issuers
    assert (trusted.issuer, trusted.provider, trusted.subject_claim) == (
        "https://example.okta.com",
        "corp-ad-by-mail",
        "email",
    )
    [external] = config.external_authorization_servers
    assert external.clients == {"claude-enterprise": "cl_7f3a9"}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, through ``list[...]``, ``dict[str, ...]`` and ``... | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, dict, typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def _resolves(path: str) -> bool:
    model: type[BaseModel] | None = BrokerConfig
    for part in path.replace("[]", "").split("."):
        if model is None or part not in model.model_fields:
            return False
        model = _model_of(model.model_fields[part].annotation)
    return True


def test_every_configuration_key_named_exists() -> None:
    sections = tuple(BrokerConfig.model_fields)
    named = {
        name
        for name in re.findall(r"`([a-z_]+(?:\[\])?(?:\.[a-z_]+(?:\[\])?)*)`", DOC)
        if name.split("[")[0].split(".")[0] in sections
    }
    assert {"identity_assertion.trusted_issuers", "external_authorization_servers", "tokens.id_jag_ttl"} <= named
    assert [name for name in sorted(named) if not _resolves(name)] == []


def test_the_readme_links_the_walkthrough() -> None:
    assert "(docs/identity-assertion.md)" in README
