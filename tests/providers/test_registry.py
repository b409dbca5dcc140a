"""The registry and the capabilities each provider class declares (issue 11, item 4).

A provider class declares its capabilities by inheriting the protocols of
``providers.base``; ``mypy --strict`` checks that what it declares is implemented. These tests
check the other half: no class has a capability it does not declare (the broker finds
capabilities with ``isinstance``, so an undeclared structural match would be used silently),
and the registry is the one list of provider types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from providers.base import (
    CAPABILITIES,
    DelegatedAccess,
    EmailDomainHints,
    FormOrigins,
    Lifecycle,
    LookupProvider,
    PasswordProvider,
    Provider,
    RedirectProvider,
    RefreshProvider,
)
from providers.entra.provider import EntraProvider
from providers.ldap.provider import LdapProvider
from providers.oidc.provider import OidcProvider, RefreshingOidcProvider
from providers.registry import ProviderConfigUnion, open_provider, provider_types

GUID = "00000000-0000-0000-0000-000000000001"
MINIMAL: dict[str, dict[str, Any]] = {
    "ldap": {"type": "ldap", "urls": ["ldap://127.0.0.1:1"], "user_base_dn": "ou=people,dc=example"},
    "entra": {"type": "entra", "tenant_id": GUID, "client_id": GUID, "client_secret": "s"},
    "oidc": {"type": "oidc", "issuer": "https://op.example", "client_id": "broker"},
    "oidc-refreshing": {
        "type": "oidc",
        "issuer": "https://op.example",
        "client_id": "broker",
        "use_upstream_refresh": True,
    },
}
EXPECTED: Mapping[str, tuple[type[Provider], set[type]]] = {
    "ldap": (LdapProvider, {PasswordProvider, RefreshProvider, LookupProvider, Lifecycle, EmailDomainHints}),
    "entra": (
        EntraProvider,
        {RedirectProvider, RefreshProvider, DelegatedAccess, Lifecycle, FormOrigins, EmailDomainHints},
    ),
    "oidc": (OidcProvider, {RedirectProvider, Lifecycle, FormOrigins, EmailDomainHints}),
    "oidc-refreshing": (
        RefreshingOidcProvider,
        {RedirectProvider, RefreshProvider, DelegatedAccess, Lifecycle, FormOrigins, EmailDomainHints},
    ),
}
PARSE: TypeAdapter[Any] = TypeAdapter(ProviderConfigUnion)


def declared(cls: type) -> set[type]:
    return {capability for capability in CAPABILITIES if capability in cls.__mro__}


@pytest.fixture(params=sorted(MINIMAL))
async def opened(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Provider]]:
    name: str = request.param
    values = {"id": name, "display_name": name.title(), "email_domains": ["Example.COM"], **MINIMAL[name]}
    provider = open_provider(PARSE.validate_python(values))
    try:
        yield name, provider
    finally:
        assert isinstance(provider, Lifecycle)
        await provider.aclose()


async def test_each_provider_has_exactly_the_capabilities_it_declares(opened: tuple[str, Provider]) -> None:
    name, provider = opened
    cls, expected = EXPECTED[name]
    assert type(provider) is cls
    assert isinstance(provider, Provider)
    assert (provider.id, provider.display_name) == (name, name.title())
    assert declared(cls) == expected
    assert {capability for capability in CAPABILITIES if isinstance(provider, capability)} == expected


async def test_declared_attributes_read_the_configuration(opened: tuple[str, Provider]) -> None:
    _, provider = opened
    assert isinstance(provider, EmailDomainHints)
    assert provider.email_domains == ("Example.COM",)
    if isinstance(provider, RefreshProvider):
        assert provider.refresh_spends_upstream_token is isinstance(provider, RefreshingOidcProvider)
    if isinstance(provider, FormOrigins):
        assert provider.origins == (
            ("https://login.microsoftonline.com",) if isinstance(provider, EntraProvider) else ("https://op.example",)
        )


async def test_prepare_defaults_to_nothing(opened: tuple[str, Provider]) -> None:
    _, provider = opened
    assert isinstance(provider, Lifecycle)
    if not isinstance(provider, OidcProvider):  # OIDC reads discovery (tests/providers/oidc)
        assert await provider.prepare() is None


def test_the_registry_lists_every_type_once() -> None:
    assert provider_types() == ("ldap", "entra", "oidc")
    assert {values["type"] for values in MINIMAL.values()} == set(provider_types())


def test_a_type_outside_the_registry_is_refused_with_the_registry_list() -> None:
    with pytest.raises(ValidationError) as caught:
        PARSE.validate_python({"type": "saml", "id": "x", "display_name": "X"})
    assert caught.value.errors()[0]["type"] == "union_tag_invalid"
    assert "'ldap', 'entra', 'oidc'" in str(caught.value)
