"""The ``shared_signals`` section: OpenID Shared Signals Framework 1.0 receiver streams (issue 15),
one per transmitter (Okta, Keycloak, another IdP) whose Security Event Tokens name users of a
provider.

```yaml
shared_signals:
  streams:
    - id: okta                          # the stream's path: {issuer}/ssf/push/okta
      provider: corp-okta               # the provider whose users the events' subjects name
      issuer: https://corp.okta.com     # the transmitter's issuer: a SET's iss must equal it
      jwks_uri: https://corp.okta.com/oauth2/v1/keys   # else from {issuer}/.well-known/ssf-configuration
      audience: https://mcp.example.com # what a SET's aud must contain (default: our issuer)
      delivery: push                    # push (RFC 8935) or poll (RFC 8936)
      push:
        authorization: ${SSF_OKTA_PUSH_TOKEN}  # the bearer token the transmitter sends (>= 32 chars)
    - id: keycloak
      provider: corp-keycloak
      issuer: https://sso.example.com/realms/corp
      delivery: poll
      poll:
        endpoint: https://sso.example.com/realms/corp/ssf/poll/abc
        authorization: ${SSF_KC_POLL_TOKEN}    # our bearer token at the transmitter
        interval: 5                     # seconds between polls that returned nothing
```
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from broker.config.types import Duration, ForeignIssuer, check_public_url

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SsfPushConfig(_Section):
    authorization: SecretStr = Field(
        description="Bearer token the transmitter sends with each pushed SET (at least 32 characters); "
        "kept as its SHA-256, compared in constant time."
    )

    @field_validator("authorization")
    @classmethod
    def _long_enough(cls, token: SecretStr) -> SecretStr:
        if len(token.get_secret_value()) < 32:
            raise ValueError("a push authorization token must be at least 32 characters")
        return token

    def token_digest(self) -> bytes:
        return hashlib.sha256(self.authorization.get_secret_value().encode()).digest()


class SsfPollConfig(_Section):
    endpoint: str = Field(description="The transmitter's poll endpoint for this stream (RFC 8936).")
    authorization: SecretStr = Field(description="Bearer token the broker sends to the poll endpoint.")
    interval: float = Field(default=5.0, gt=0, le=3600, description="Seconds between polls that returned nothing.")
    max_events: int = Field(default=100, ge=1, le=1000, description="maxEvents asked per poll.")
    timeout: Duration = Field(default=10, description="Bound of one poll request.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, url: str) -> str:
        check_public_url(url.rstrip("/"), what="poll endpoint")
        return url


class SsfStreamConfig(_Section):
    id: str = Field(description="The stream's id; push streams receive at {issuer}/ssf/push/<id>.")
    provider: str = Field(description="Id of the provider whose users the events' subjects name.")
    issuer: ForeignIssuer = Field(description="The transmitter's issuer: each SET's iss must equal it.")
    jwks_uri: str | None = Field(
        default=None,
        description="The transmitter's JWKS; unset: jwks_uri of {issuer}/.well-known/ssf-configuration.",
    )
    audience: str | None = Field(default=None, description="What each SET's aud must contain; unset: our issuer.")
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"],
        description="Asymmetric JWS algorithms accepted for SETs.",
    )
    delivery: Literal["push", "poll"] = Field(description="push (RFC 8935) or poll (RFC 8936).")
    push: SsfPushConfig | None = None
    poll: SsfPollConfig | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("a stream id is 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, uri: str | None) -> str | None:
        if uri is not None:
            check_public_url(uri.rstrip("/").split("?")[0], what="jwks_uri")
        return uri

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, algorithms: list[str]) -> list[str]:
        allowed = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
        if not algorithms or not set(algorithms) <= allowed:
            raise ValueError(f"algorithms are asymmetric JWS algorithms: {', '.join(sorted(allowed))}")
        return algorithms

    @model_validator(mode="after")
    def _delivery(self) -> SsfStreamConfig:
        if self.delivery == "push" and self.push is None:
            raise ValueError("a push stream needs push.authorization")
        if self.delivery == "poll" and self.poll is None:
            raise ValueError("a poll stream needs poll.endpoint and poll.authorization")
        return self


class SharedSignalsConfig(_Section):
    streams: list[SsfStreamConfig] = Field(
        default_factory=list, description="Shared Signals streams received (OpenID SSF 1.0); empty: off."
    )

    @field_validator("streams")
    @classmethod
    def _unique(cls, streams: list[SsfStreamConfig]) -> list[SsfStreamConfig]:
        ids = [s.id for s in streams]
        if len(ids) != len(set(ids)):
            raise ValueError("stream ids are unique")
        return streams
