"""The ``scim`` section: SCIM 2.0 service provider tenants (RFC 7644, issue 15), one per provider
that IT provisions users and groups from.

```yaml
scim:
  tenants:
    - provider: corp-entra          # the provider whose users this tenant's SCIM client manages;
                                    # its base URL is {issuer}/scim/v2/corp-entra
      token: ${SCIM_ENTRA_TOKEN}    # the bearer token the provisioning service sends (>= 32 chars)
      subject: "{externalId}"       # optional: how a SCIM user maps onto the provider's subject
      groups_source: false          # true: this provider's groups come from the SCIM data
```

A SCIM user is matched to the broker's grants through the provider's subject,
``qualified_subject(provider, local)``. ``subject`` is a template over the SCIM user's
``userName``, ``externalId`` and ``id`` giving ``local`` (for example ``"<tid>:{externalId}"`` for
Entra when the provisioning maps ``objectId`` to ``externalId``); unset, the SCIM ``userName`` is
matched, case-insensitively, with the username the provider gave at sign-in (Entra's UPN, Okta's
login, the directory's login attribute).
"""

from __future__ import annotations

import hashlib
import string

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

_FIELDS = {"userName", "externalId", "id"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScimTenantConfig(_Section):
    provider: str = Field(
        description="Id of the provider whose users and groups this tenant provisions; the tenant's path."
    )
    token: SecretStr = Field(
        description="Bearer token of the provisioning client (at least 32 characters); kept hashed."
    )
    subject: str | None = Field(
        default=None,
        description="Template of the provider-local subject over {userName}, {externalId}, {id}; unset: the userName matches the username the provider gave at sign-in.",
    )
    groups_source: bool = Field(
        default=False,
        description="Take this provider's groups from the SCIM data (group ids and displayNames) at sign-in and refresh instead of from the provider; a user inactive there cannot sign in.",
    )

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr) -> SecretStr:
        if len(token.get_secret_value()) < 32:
            raise ValueError("a SCIM tenant token must be at least 32 characters")
        return token

    @field_validator("subject")
    @classmethod
    def _template(cls, template: str | None) -> str | None:
        if template is not None:
            names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
            if not names or not names <= _FIELDS:
                raise ValueError("the subject template names only {userName}, {externalId} or {id}, at least one")
        return template

    def token_digest(self) -> bytes:
        """What the broker keeps of the token: its SHA-256 (compared in constant time)."""
        return hashlib.sha256(self.token.get_secret_value().encode()).digest()


class ScimConfig(_Section):
    tenants: list[ScimTenantConfig] = Field(default_factory=list, description="One per provider IT provisions from.")

    @field_validator("tenants")
    @classmethod
    def _one_per_provider(cls, tenants: list[ScimTenantConfig]) -> list[ScimTenantConfig]:
        seen = [t.provider for t in tenants]
        if len(seen) != len(set(seen)):
            raise ValueError("one SCIM tenant per provider")
        return tenants
