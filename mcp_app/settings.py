"""Settings of the protected MCP server, from ``MCP_APP_*`` environment variables or flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    @property
    def effective_jwks_url(self) -> str:
        return self.jwks_url or f"{self.issuer}/jwks.json"
