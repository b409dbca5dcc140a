"""Configuration model of the generic OpenID Connect provider."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, HttpUrl, SecretStr

from providers.base import ProviderConfig


class OidcProviderConfig(ProviderConfig):
    type: Literal["oidc"] = "oidc"
    issuer: HttpUrl = Field(description="Issuer; discovery is read from its well-known URL.")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = Field(default=None, description="Omit for a public client.")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    groups_claim: str = Field(default="groups", description="Dotted path of the groups claim.")
    groups_from_userinfo: bool = False
    username_claim: str = "preferred_username"
    use_upstream_refresh: bool = Field(
        default=False, description="Keep the upstream refresh token to re-check groups at refresh."
    )
    ca_file: str | None = None
