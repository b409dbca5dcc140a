"""Placeholder: the entra provider is being built (see the upstream identity providers issue)."""

from __future__ import annotations

from providers.entra.config import EntraProviderConfig


class EntraProvider:
    def __init__(self, config: EntraProviderConfig) -> None:
        raise NotImplementedError(f"provider {config.id!r}: the entra provider is not available in this version")
