"""Build provider instances from their configuration: one entry per provider type.

The broker imports this module and nothing inside the provider packages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from providers.base import ProviderConfig


def _ldap(config: Any) -> object:
    from providers.ldap.provider import LdapProvider

    return LdapProvider(config)


def _entra(config: Any) -> object:
    from providers.entra.provider import EntraProvider

    return EntraProvider(config)


def _oidc(config: Any) -> object:
    from providers.oidc.provider import OidcProvider

    return OidcProvider(config)


_FACTORIES: dict[str, Callable[[Any], object]] = {"ldap": _ldap, "entra": _entra, "oidc": _oidc}


class UnsupportedProvider(Exception):
    pass


def open_provider(config: ProviderConfig) -> object:
    kind = getattr(config, "type", None)
    factory = _FACTORIES.get(str(kind))
    if factory is None:
        raise UnsupportedProvider(f"provider {config.id!r}: type {kind!r} is not available in this version")
    return factory(config)
