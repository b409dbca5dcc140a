"""Settings of the protected MCP server, from ``MCP_APP_*`` environment variables or flags."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Downstream(BaseModel):
    """The API the ``call_downstream`` tool calls for the users of one provider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(description="The broker's delegation target: its audience (or id).")
    url: str = Field(description="GET with the exchanged token: Graph /v1.0/me, the OP's userinfo, the demo API.")
    scope: str | None = Field(
        default=None, description="Scopes to ask for (space-separated); unset: all the rules give."
    )


class McpAppSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MCP_APP_", extra="forbid", frozen=True)

    resource_url: str = Field(
        default="http://127.0.0.1:8001/mcp",
        description="Canonical URI of this MCP server: the audience its tokens must carry.",
    )
    issuer: str = Field(default="http://127.0.0.1:8000", description="The broker's issuer URL.")
    jwks_url: str | None = Field(default=None, description="Defaults to <issuer>/jwks.json.")
    redis_url: str | None = Field(default=None, description="Redis shared with the broker (revocations, notes).")
    verification: Literal["jwks", "introspection"] = Field(
        default="jwks",
        description="Verify tokens locally (JWKS + revocations from Redis) or ask the broker (RFC 7662).",
    )
    introspection_client_id: str | None = Field(default=None, description="This server's client id at the broker.")
    introspection_client_secret: SecretStr | None = None
    introspection_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    redis_password: SecretStr | None = None
    redis_sentinel_password: SecretStr | None = Field(default=None, description="For a redis+sentinel:// URL.")
    redis_ca_file: str | None = Field(default=None, description="CA bundle for rediss:// connections.")
    redis_key_prefix: str = Field(default="mcpb", description="The broker's redis.key_prefix.")
    revocation_max_staleness: float = Field(
        default=30.0, gt=0, description="Seconds without news from Redis before the revocation view counts as stale."
    )
    fail_closed: bool = Field(default=True, description="Refuse every token while the revocation view is stale.")
    scope_implies: dict[str, list[str]] = Field(
        default_factory=lambda: {"notes:write": ["notes:read"]},
        description="The scope hierarchy, as JSON: each scope maps to the scopes it implies.",
    )
    delegation_client_id: str | None = Field(
        default=None, description="This server's client id at the broker for token exchange (mcp_server set)."
    )
    delegation_client_secret: SecretStr | None = None
    downstreams: dict[str, Downstream] = Field(
        default_factory=dict, description="Provider id -> the downstream API call_downstream calls, as JSON."
    )
    downstream_ca_file: str | None = Field(default=None, description="CA bundle for the downstream APIs.")
    demo_api_audience: str | None = Field(
        default=None, description="Serve the internal demo API at /demo-api/whoami for tokens with this audience."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    allowed_hosts: list[str] = Field(default_factory=list, description="Extra Host header values accepted.")
    allowed_origins: list[str] = Field(default_factory=list, description="Extra Origin values accepted.")
    log_format: str = "json"
    metrics_port: int | None = Field(default=9090, description="Prometheus metrics port; unset or 0 to disable.")
    metrics_host: str = "0.0.0.0"

    @model_validator(mode="after")
    def _introspection_credentials(self) -> McpAppSettings:
        if self.verification == "introspection" and not (
            self.introspection_client_id and self.introspection_client_secret
        ):
            raise ValueError("verification=introspection needs introspection_client_id and introspection_client_secret")
        return self

    @model_validator(mode="after")
    def _delegation_credentials(self) -> McpAppSettings:
        if self.downstreams and not (self.delegation_client_id and self.delegation_client_secret):
            raise ValueError("downstreams needs delegation_client_id and delegation_client_secret")
        return self

    @property
    def effective_jwks_url(self) -> str:
        return self.jwks_url or f"{self.issuer}/jwks.json"
