"""Placeholder: the oidc provider is being built (see the upstream identity providers issue)."""

from __future__ import annotations

from providers.oidc.config import OidcProviderConfig


class OidcProvider:
    def __init__(self, config: OidcProviderConfig) -> None:
        raise NotImplementedError(f"provider {config.id!r}: the oidc provider is not available in this version")
