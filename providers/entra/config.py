"""Configuration model of the Microsoft Entra ID provider."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator

from providers.base import ProviderConfig

_GUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_RESERVED_SCOPES = {"openid", "profile", "offline_access", "email"}


class EntraProviderConfig(ProviderConfig):
    type: Literal["entra"] = "entra"
    tenant_id: str = Field(pattern=_GUID, description="Directory (tenant) ID of the app registration.")
    allowed_tenants: list[Annotated[str, Field(pattern=_GUID)]] = Field(
        default_factory=list,
        description="Other tenant IDs accepted (multi-tenant app); sign-in then goes through /organizations.",
    )
    client_id: str = Field(pattern=_GUID, description="Application (client) ID.")
    client_secret: SecretStr | None = Field(default=None, description="Client secret value.")
    client_certificate_file: str | None = Field(default=None, description="PEM with key and cert.")
    client_certificate_thumbprint: str | None = Field(
        default=None, description="SHA-1 thumbprint (legacy); by default the certificate's SHA-256 one is sent."
    )
    client_certificate_password: SecretStr | None = Field(
        default=None, description="Passphrase of an encrypted private key in client_certificate_file."
    )
    authority_host: HttpUrl = Field(
        default=HttpUrl("https://login.microsoftonline.com"),
        description="Override for sovereign clouds (https only).",
    )
    graph_url: HttpUrl = Field(default=HttpUrl("https://graph.microsoft.com"))
    graph_scopes: list[str] = Field(
        default_factory=lambda: ["User.Read"],
        description="Delegated Microsoft Graph permissions requested at sign-in (for groups overage); "
        "GroupMember.Read.All is needed for resolve_group_names. Empty: use app-only Graph instead.",
    )
    groups_from_graph: Literal["overage", "always"] = Field(
        default="overage", description="Ask Microsoft Graph only on groups overage, or always."
    )
    resolve_group_names: bool = Field(
        default=False, description="Read groups and their display names from Graph so mappings can use names."
    )
    refresh_check: Literal["graph", "none"] = Field(
        default="graph",
        description="At refresh, look the user up with app-only Graph (account enabled, current groups); "
        "'none' keeps the groups of sign-in time.",
    )
    delegated_access: bool = Field(
        default=False,
        description="Keep each user's MSAL token cache from sign-in (sealed, with the grant; offline_access is "
        "requested) so delegation targets of kind entra can get tokens as the user. Needs "
        "signing.key_encryption_key.",
    )
    accept_v1_issuer: bool = False
    v1_issuer_host: HttpUrl = Field(
        default=HttpUrl("https://sts.windows.net"), description="Host of v1.0 issuers (when accept_v1_issuer)."
    )
    ca_file: str | None = Field(default=None, description="Extra CA bundle (tests, TLS inspection).")
    proxy: HttpUrl | None = Field(
        default=None, description="HTTP(S) proxy for Entra and Graph; environment proxy settings are ignored."
    )
    timeout: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Seconds: one overall deadline for each call to Entra or Graph, connection and whole answer included.",
    )

    @model_validator(mode="after")
    def _one_credential(self) -> EntraProviderConfig:
        if (self.client_secret is None) == (self.client_certificate_file is None):
            raise ValueError("set exactly one of client_secret or client_certificate_file")
        return self

    @field_validator("authority_host", "graph_url")
    @classmethod
    def _https(cls, url: HttpUrl) -> HttpUrl:
        if url.scheme != "https":
            raise ValueError("must be an https:// URL")
        return url

    @field_validator("graph_scopes")
    @classmethod
    def _graph_scopes(cls, scopes: list[str]) -> list[str]:
        reserved = sorted(set(scopes) & _RESERVED_SCOPES)
        if reserved:
            raise ValueError(f"{reserved} are requested automatically; list Graph permissions only")
        return scopes

    @property
    def upstream_refresh_setting(self) -> str | None:
        return "delegated_access" if self.delegated_access else None

    @property
    def tenants(self) -> frozenset[str]:
        """Every tenant whose users may sign in, lower-case."""
        return frozenset(t.lower() for t in [self.tenant_id, *self.allowed_tenants])
