"""Configuration model of the Microsoft Entra ID provider."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, HttpUrl, SecretStr, model_validator

from providers.base import ProviderConfig

_GUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class EntraProviderConfig(ProviderConfig):
    type: Literal["entra"] = "entra"
    tenant_id: str = Field(pattern=_GUID, description="Directory (tenant) ID of the app registration.")
    allowed_tenants: list[str] = Field(
        default_factory=list, description="Other tenant IDs accepted (multi-tenant app)."
    )
    client_id: str = Field(pattern=_GUID, description="Application (client) ID.")
    client_secret: SecretStr | None = Field(default=None, description="Client secret value.")
    client_certificate_file: str | None = Field(default=None, description="PEM with key and cert.")
    client_certificate_thumbprint: str | None = None
    authority_host: HttpUrl = Field(
        default=HttpUrl("https://login.microsoftonline.com"),
        description="Override for sovereign clouds.",
    )
    graph_url: HttpUrl = Field(default=HttpUrl("https://graph.microsoft.com"))
    groups_from_graph: Literal["overage", "always"] = Field(
        default="overage", description="Ask Microsoft Graph only on groups overage, or always."
    )
    resolve_group_names: bool = Field(default=False, description="Look up group display names.")
    accept_v1_issuer: bool = False
    ca_file: str | None = Field(default=None, description="Extra CA bundle (tests, TLS inspection).")

    @model_validator(mode="after")
    def _one_credential(self) -> EntraProviderConfig:
        if (self.client_secret is None) == (self.client_certificate_file is None):
            raise ValueError("set exactly one of client_secret or client_certificate_file")
        return self
