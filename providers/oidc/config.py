"""Configuration model of the generic OpenID Connect provider."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from providers.base import ProviderConfig
from providers.net import is_loopback_host

# Parameters the provider sets itself; ``authorize_params`` may not override them.
PROTOCOL_PARAMS = frozenset(
    {
        "client_id",
        "redirect_uri",
        "response_type",
        "response_mode",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "request",
        "request_uri",
    }
)


def check_endpoint_url(url: str, *, what: str) -> str:
    """An absolute https URL (plain http only on a loopback host), without a fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} {url!r} is not an absolute http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(f"{what} {url!r} must use https (plain http is allowed only on loopback)")
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"{what} {url!r} must not have a fragment")
    return url


class OidcProviderConfig(ProviderConfig):
    type: Literal["oidc"] = "oidc"
    issuer: str = Field(
        description=(
            "Issuer identifier, exactly as the OP's discovery document spells it (trailing slash "
            "included or not); discovery is read from its well-known URL. https, or http on loopback."
        )
    )
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = Field(default=None, description="Omit for a public client.")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    groups_claim: str = Field(
        default="groups",
        min_length=1,
        description="Claim holding the groups: a top-level claim name, else a dotted path (realm_access.roles).",
    )
    groups_from_userinfo: bool = Field(default=False, description="Read the groups claim from userinfo.")
    username_claim: str = Field(
        default="preferred_username", min_length=1, description="Falls back to a verified email, then sub."
    )
    unique_usernames: bool = Field(
        default=False,
        description=(
            "Set true only if the OP guarantees username_claim is unique and users cannot change it; then "
            "grant rules may name this provider's users by username. Otherwise they name subjects "
            "(`<provider id>:<sub>`), and a username in a deny rule still matches."
        ),
    )
    use_upstream_refresh: bool = Field(
        default=False, description="Keep the upstream refresh token to re-check groups at refresh."
    )
    authorize_params: dict[str, str] = Field(
        default_factory=dict,
        description="Extra authorization request parameters, e.g. prompt: consent (OIDC Core §11 offline_access).",
    )
    http_timeout: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Seconds: one overall deadline for each call to the OP, connection and whole answer included.",
    )
    ca_file: str | None = Field(default=None, description="Extra CA bundle (PEM) trusted for the OP.")

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, issuer: str) -> str:
        # Kept as written: discovery must return this exact string (OIDC Discovery §4.3), and a
        # pydantic URL type would normalise it (``https://op.example`` -> ``https://op.example/``).
        check_endpoint_url(issuer, what="issuer")
        if urlsplit(issuer).query or issuer.endswith("?"):
            raise ValueError(f"issuer {issuer!r} must not have a query")
        return issuer

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, scopes: list[str]) -> list[str]:
        if "openid" not in scopes:
            raise ValueError("scopes must include openid")
        return scopes

    @field_validator("authorize_params")
    @classmethod
    def _no_protocol_params(cls, params: dict[str, str]) -> dict[str, str]:
        reserved = sorted(PROTOCOL_PARAMS & params.keys())
        if reserved:
            raise ValueError(f"authorize_params cannot set {', '.join(reserved)}: the provider sets them itself")
        return params

    @property
    def usernames_are_unique(self) -> bool:
        return self.unique_usernames

    @property
    def upstream_refresh_setting(self) -> str | None:
        return "use_upstream_refresh" if self.use_upstream_refresh else None
