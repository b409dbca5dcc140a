"""The Entra provider's configuration model: what it refuses before anything runs."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from providers.entra.config import EntraProviderConfig
from tests.emulators.entra import CLIENT_ID, OTHER_TENANT, TENANT

BASE: dict[str, Any] = {
    "id": "entra",
    "display_name": "Contoso",
    "tenant_id": TENANT,
    "client_id": CLIENT_ID,
    "client_secret": "s3cret",
}


def test_defaults() -> None:
    config = EntraProviderConfig(**BASE)
    assert str(config.authority_host) == "https://login.microsoftonline.com/"
    assert config.graph_scopes == ["User.Read"]
    assert config.refresh_check == "graph"
    assert config.tenants == {TENANT}
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"client_secret": None}, "exactly one of client_secret or client_certificate_file"),
        ({"client_certificate_file": "/etc/cert.pem"}, "exactly one of client_secret or client_certificate_file"),
        ({"authority_host": "http://login.example"}, "https://"),
        ({"graph_url": "http://graph.example"}, "https://"),
        ({"graph_scopes": ["openid", "User.Read"]}, "requested automatically"),
        ({"allowed_tenants": ["contoso.onmicrosoft.com"]}, "should match pattern"),
        ({"tenant_id": "common"}, "should match pattern"),
        ({"timeout": 0}, "greater than 0"),
    ],
)
def test_refused(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EntraProviderConfig(**{**BASE, **over})


def test_tenants_are_compared_in_lower_case() -> None:
    config = EntraProviderConfig(**{**BASE, "tenant_id": TENANT.upper(), "allowed_tenants": [OTHER_TENANT.upper()]})
    assert config.tenants == {TENANT, OTHER_TENANT}
