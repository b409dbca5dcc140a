"""The shape of the broker's configuration file.

Every key is documented in ``docs/configuration.md``; keep the two in step. Models forbid
unknown keys, so a typo is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from broker.config.delegation import DelegationConfig
from broker.config.scim import ScimConfig
from broker.config.shared_signals import SharedSignalsConfig
from broker.config.types import Duration, ForeignIssuer, check_public_url
from broker.display import hidden_character
from providers.registry import ProviderConfigUnion


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = Field(default="127.0.0.1", description="Address the broker listens on.")
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes.")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="Proxy addresses whose X-Forwarded-* headers are trusted."
    )


class RedisConfig(_Section):
    url: str | None = Field(
        default=None,
        description="redis://, rediss://, redis+sentinel:// or redis+cluster:// URL. "
        "Unset: only `mcp-broker dev` works, with a private redis-server.",
    )
    password: SecretStr | None = Field(default=None, description="Overrides any password in the URL.")
    sentinel_password: SecretStr | None = Field(default=None, description="Password of the sentinels.")
    key_prefix: str = Field(default="mcpb", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    ca_file: str | None = Field(default=None, description="CA bundle for rediss:// connections.")
    socket_timeout: float = Field(default=5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        from broker.store.client import parse_redis_url

        if url is not None:
            parse_redis_url(url)
        return url


class TokensConfig(_Section):
    access_token_ttl: Duration = Field(default=300, le=3600, description="Access token lifetime.")
    authorization_code_ttl: Duration = Field(default=60, le=600)
    refresh_token_idle_ttl: Duration = Field(default=7 * 86400, description="Refresh token unused for this long dies.")
    refresh_token_absolute_ttl: Duration = Field(default=30 * 86400, description="No grant outlives this.")
    refresh_reuse_grace: Duration = Field(
        default=5, le=60, description="A rotated refresh token replayed within this window gets the same answer."
    )
    upstream_recheck_interval: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="Seconds a user's upstream re-check (groups, account state) is reused by later refreshes. "
        "0: every refresh asks the provider.",
    )
    id_token_ttl: Duration = Field(
        default=3600,
        le=86400,
        description="ID token lifetime (authorization code flow with the openid scope); the client may "
        "exchange it for ID-JAGs until then.",
    )
    id_jag_ttl: Duration = Field(
        default=300, ge=1, le=300, description="Lifetime of an ID-JAG the broker issues (at most 300 s)."
    )


class SigningConfig(_Section):
    algorithm: Literal["ES256", "RS256"] = "ES256"
    rotation_interval: Duration = Field(default=30 * 86400, description="A new signing key this often.")
    key_overlap: Duration = Field(default=86400, description="Old keys stay in the JWKS this long.")
    key_encryption_key: SecretStr | None = Field(
        default=None,
        description="Encrypts private keys held in Redis (32+ random bytes, base64). Set from the environment.",
    )
    keys_dir: str | None = Field(
        default=None, description="Read PEM keys from this folder (a mounted secret) instead of Redis."
    )


class ScopeConfig(_Section):
    name: str = Field(pattern=r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$", description="Scope token (RFC 6749 §3.3).")
    description: str = Field(min_length=1, max_length=200, description="Shown to users on the consent page.")
    implies: list[str] = Field(default_factory=list, description="Scopes this one includes.")


class ResourceConfig(_Section):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    uri: str = Field(description="Canonical URI of the MCP server (RFC 8707 resource, the token audience).")
    name: str = Field(min_length=1, max_length=80, description="Shown to users.")
    scopes: list[ScopeConfig] = Field(min_length=1)

    @field_validator("uri")
    @classmethod
    def _canonical(cls, uri: str) -> str:
        return check_public_url(uri, what="uri")


class MappingRule(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="Named in audit events.")
    resource: str = Field(description="Resource id.")
    provider: str = Field(description="Provider id.")
    effect: Literal["grant", "deny"] = "grant"
    groups: list[str] = Field(default_factory=list, description="Group ids, DNs or names.")
    users: list[str] = Field(default_factory=list, description="Usernames or subjects.")
    scopes: list[str] = Field(min_length=1)


class StaticClientConfig(_Section):
    client_id: str = Field(min_length=1, max_length=200)
    client_name: str = Field(min_length=1, max_length=100)
    client_secret: SecretStr | None = Field(default=None, description="Omit for a public client.")
    redirect_uris: list[str] = Field(min_length=1)
    application_type: Literal["native", "web"] = "native"
    introspection_resources: list[str] = Field(
        default_factory=list, description="Resource ids whose tokens this (confidential) client may introspect."
    )
    mcp_server: str | None = Field(
        default=None,
        description="Resource id of the MCP server this (confidential) client is: it may exchange tokens "
        "audience-bound to that server for delegation targets (RFC 8693).",
    )
    jwks: dict[str, Any] | None = Field(
        default=None,
        description="A JSON Web Key Set of the client's public keys: it then authenticates with private_key_jwt "
        "(RFC 7523) instead of a secret.",
    )

    @field_validator("jwks")
    @classmethod
    def _public_key_set(cls, jwks: dict[str, Any] | None) -> dict[str, Any] | None:
        if jwks is None:
            return None
        keys = jwks.get("keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) and "kty" in k for k in keys):
            raise ValueError("must be a JSON Web Key Set: {keys: [{kty: ..., ...}]}")
        if any(k.get("kty") == "oct" or "d" in k for k in keys):
            raise ValueError("must hold public keys only (no symmetric or private key)")
        return jwks

    @model_validator(mode="after")
    def _one_credential(self) -> StaticClientConfig:
        if self.jwks is not None and self.client_secret is not None:
            raise ValueError("give client_secret or jwks, not both")
        return self

    @property
    def confidential(self) -> bool:
        return self.client_secret is not None or self.jwks is not None

    @field_validator("client_name")
    @classmethod
    def _displayable(cls, name: str) -> str:
        hidden = hidden_character(name)
        if hidden:
            raise ValueError(f"must not contain control, invisible or bidirectional formatting characters ({hidden})")
        return name


class RegistrationConfig(_Section):
    dynamic_registration: bool = Field(default=True, description="Accept RFC 7591 registrations.")
    dynamic_registration_allowed_redirect_hosts: list[str] = Field(
        default_factory=list, description="If set, only these redirect hosts may register."
    )
    dynamic_registration_per_ip: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Registration requests accepted per client IP within the window; then HTTP 429.",
    )
    dynamic_registration_window: Duration = Field(
        default=3600, description="The window of dynamic_registration_per_ip."
    )
    registration_idle_ttl: Duration = Field(default=30 * 86400, description="Unused registrations expire.")
    client_metadata_documents: bool = Field(default=True, description="Accept URL client_ids (CIMD).")
    cimd_trusted_domains: list[str] = Field(
        default_factory=list, description="If set, only client_id URLs on these domains are accepted."
    )
    cimd_allow_private_addresses: list[str] = Field(
        default_factory=list, description="CIDRs a client_id URL may resolve to despite being private."
    )

    @field_validator("cimd_allow_private_addresses")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an address or CIDR network") from None
        return values

    cimd_ca_file: str | None = Field(
        default=None, description="Extra CA bundle trusted when fetching client ID metadata documents."
    )
    cimd_timeout: float = Field(default=5.0, gt=0, le=30, description="Time-out of one metadata document fetch.")
    static_clients: list[StaticClientConfig] = Field(default_factory=list)


class LoginProtectionConfig(_Section):
    max_failures_per_user: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Failed logins per username from one client address in the window; then the "
        "username is locked for that address.",
    )
    max_failures_per_account: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="Failed logins per username from all addresses together in the window; then the "
        "username is locked for every address. Unset: 4 times max_failures_per_user.",
    )
    max_failures_per_ip: int = Field(
        default=30, ge=1, le=100000, description="Failed logins per client IP in the window."
    )
    window: Duration = Field(default=900, description="Counting and lockout window.")
    failure_floor: float = Field(
        default=0.25,
        ge=0,
        le=5,
        description=(
            "Seconds: a refused password sign-in is answered no sooner than this after it began, so "
            "'wrong password' and 'unknown user' take the same time (and guessing is slower). "
            "A directory that cannot be reached is answered at once."
        ),
    )

    @model_validator(mode="after")
    def _account_limit_not_below_the_pair_limit(self) -> LoginProtectionConfig:
        if self.max_failures_per_account is not None and self.max_failures_per_account < self.max_failures_per_user:
            raise ValueError("max_failures_per_account must be at least max_failures_per_user")
        return self


class MetricsConfig(_Section):
    enabled: bool = Field(default=True, description="Serve Prometheus metrics on a port of their own.")
    host: str = Field(default="0.0.0.0", description="Address of the metrics listener.")
    port: int = Field(default=9090, ge=1, le=65535)


class AdminConfig(_Section):
    token: SecretStr | None = Field(
        default=None,
        description="Static bearer token for the admin API (at least 32 characters). Unset: the admin API is off.",
    )

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < 32:
            raise ValueError("the admin token must be at least 32 characters")
        return token


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        default="json", description="json (default), console, or auto (console on a TTY)."
    )


class ExternalAuthorizationServerConfig(_Section):
    """An MCP server's authorization server elsewhere that trusts this broker as its enterprise
    IdP: the broker issues ID-JAGs (draft-ietf-oauth-identity-assertion-authz-grant) for it."""

    issuer: ForeignIssuer = Field(
        description="Its issuer identifier: the `audience` of the token exchange, the ID-JAG's `aud`."
    )
    clients: dict[str, str] = Field(
        min_length=1,
        description="Our client id -> the client id that client has at this server (the ID-JAG's `client_id`). "
        "Only these clients get ID-JAGs for it.",
    )
    resources: list[ResourceConfig] = Field(
        min_length=1,
        description="Its MCP servers, named and scoped as `resources` are: mappings grant their scopes.",
    )


class PolicyFileModel(_Section):
    """The policy file: the protected resources and the mapping rules, nothing else."""

    resources: list[ResourceConfig] = Field(default_factory=list)
    mappings: list[MappingRule] = Field(default_factory=list)


IdJagAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"
]
"""Signature algorithms an ID-JAG may use: asymmetric only (never ``none`` or an HMAC)."""


class TrustedIssuerConfig(_Section):
    """An enterprise IdP whose ID-JAGs (draft-ietf-oauth-identity-assertion-authz-grant) the broker
    redeems at its token endpoint (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``)."""

    issuer: ForeignIssuer = Field(description="The IdP's issuer identifier, exactly as its ID-JAGs' `iss` carries it.")
    jwks_uri: str | None = Field(
        default=None,
        description="Where its signing keys are published. Unset: read from its discovery document "
        "(`{issuer}/.well-known/openid-configuration`, else RFC 8414's `oauth-authorization-server`).",
    )
    algorithms: list[IdJagAlgorithm] = Field(
        default=["RS256", "ES256"],  # pydantic copies a mutable default per instance
        min_length=1,
        description="Signature algorithms accepted from this IdP (asymmetric only).",
    )
    provider: str = Field(description="Id of the provider whose users this IdP speaks for.")
    subject_claim: Literal["sub", "email"] = Field(
        default="sub",
        description="The ID-JAG claim naming the user: with `groups_claim` the subject is "
        "`{provider}:{value}`; without, the value is looked up at the provider (as a username).",
    )
    groups_claim: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:/-]{1,100}$",
        description="Trust the groups this ID-JAG claim lists (the IdP's word, no upstream call). Unset: the "
        "user is looked up at `provider` (which must be able to look users up, e.g. LDAP) for their "
        "stable subject and current groups.",
    )
    resources: list[str] = Field(min_length=1, description="Ids of the resources (MCP servers) its ID-JAGs may name.")
    max_lifetime: Duration = Field(
        default=300, le=3600, description="Longest `exp` - `iat` accepted: longer-lived ID-JAGs are refused."
    )
    clock_skew: int = Field(
        default=30, ge=0, le=300, description="Seconds of clock difference allowed on `iat` and `exp`."
    )

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, uri: str | None) -> str | None:
        if uri is not None:
            parts = urlsplit(uri)  # https (http on loopback only), a host in lower case
            check_public_url(f"{parts.scheme}://{parts.netloc}", what="jwks_uri")
        return uri


class IdentityAssertionConfig(_Section):
    trusted_issuers: list[TrustedIssuerConfig] = Field(
        default_factory=list,
        description="IdPs whose ID-JAGs the token endpoint redeems (MCP Enterprise-Managed Authorization). "
        "Empty: the jwt-bearer grant is not offered.",
    )


class BrokerConfig(_Section):
    issuer: str = Field(description="Public issuer URL, identical in every metadata document and token.")
    server: ServerConfig = ServerConfig()
    redis: RedisConfig = RedisConfig()
    tokens: TokensConfig = TokensConfig()
    signing: SigningConfig = SigningConfig()
    registration: RegistrationConfig = RegistrationConfig()
    logging: LoggingConfig = LoggingConfig()
    admin: AdminConfig = AdminConfig()
    metrics: MetricsConfig = MetricsConfig()
    login_protection: LoginProtectionConfig = LoginProtectionConfig()
    identity_assertion: IdentityAssertionConfig = IdentityAssertionConfig()
    delegation: DelegationConfig = DelegationConfig()
    scim: ScimConfig = ScimConfig()
    shared_signals: SharedSignalsConfig = SharedSignalsConfig()
    policy_file: str | None = Field(
        default=None,
        description="A separate YAML file with `resources` and `mappings`, reloaded when it changes.",
    )
    providers: list[ProviderConfigUnion] = Field(default_factory=list)
    resources: list[ResourceConfig] = Field(default_factory=list)
    mappings: list[MappingRule] = Field(default_factory=list)
    external_authorization_servers: list[ExternalAuthorizationServerConfig] = Field(
        default_factory=list,
        description="Authorization servers of MCP servers elsewhere that accept ID-JAGs from this broker.",
    )

    @property
    def external_resources(self) -> list[ResourceConfig]:
        """Every external authorization server's MCP servers (their ids are unique with ours)."""
        return [r for server in self.external_authorization_servers for r in server.resources]

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, issuer: str) -> str:
        return check_public_url(issuer, what="issuer")
