"""The provider types this version knows: one entry each, and the one place that names them.

Adding a provider type is a package under ``providers/`` (its config model with a ``type``
literal, its provider class declaring its capabilities from :mod:`providers.base`) plus one
entry here: its config in :data:`ProviderConfigUnion` and its constructor in ``_OPENERS``.
The broker imports this module and :mod:`providers.base`, nothing inside the provider
packages, and names no provider type itself (its messages use :func:`provider_types`).
Provider classes are imported only when a provider of their type is opened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, get_args

from pydantic import Field

from providers.base import Provider, ProviderConfig
from providers.entra.config import EntraProviderConfig
from providers.ldap.config import LdapProviderConfig
from providers.oidc.config import OidcProviderConfig

ProviderConfigUnion = Annotated[
    LdapProviderConfig | EntraProviderConfig | OidcProviderConfig,
    Field(discriminator="type"),
]
"""A ``providers:`` entry of the configuration file, told apart by its ``type``."""


def _ldap(config: LdapProviderConfig) -> Provider:
    from providers.ldap.provider import LdapProvider

    return LdapProvider(config)


def _entra(config: EntraProviderConfig) -> Provider:
    from providers.entra.provider import EntraProvider

    return EntraProvider(config)


def _oidc(config: OidcProviderConfig) -> Provider:
    from providers.oidc.provider import OidcProvider

    return OidcProvider(config)


_OPENERS: dict[type[ProviderConfig], Callable[[Any], Provider]] = {
    LdapProviderConfig: _ldap,
    EntraProviderConfig: _entra,
    OidcProviderConfig: _oidc,
}


class UnsupportedProvider(Exception):
    pass


def _type_name(config_class: type[ProviderConfig]) -> str:
    """The ``type`` value a config class accepts (its field is a one-value ``Literal``)."""
    (name,) = get_args(config_class.model_fields["type"].annotation)
    return str(name)


def provider_types() -> tuple[str, ...]:
    """The ``type`` values a ``providers:`` entry may have, in registry order."""
    return tuple(_type_name(c) for c in get_args(get_args(ProviderConfigUnion)[0]))


def open_provider(config: ProviderConfig) -> Provider:
    """Build the provider a validated config entry describes."""
    for config_class, opener in _OPENERS.items():
        if isinstance(config, config_class):
            return opener(config)
    kind = type(config).__name__
    raise UnsupportedProvider(f"provider {config.id!r}: type {kind!r} is not available in this version")
