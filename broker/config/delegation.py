"""The ``delegation`` section: downstream targets an MCP server may get tokens for, as the user
(RFC 8693 token exchange, issue 14), and the rules saying who may.

```yaml
delegation:
  targets:
    - id: tickets                           # named by rules, audit events and metrics
      kind: internal                        # internal | entra | oidc
      audience: https://tickets.example.com # what the MCP server asks for (`audience` or `resource`)
      scopes: [tickets:read, tickets:write] # the most a token for this target may carry
  rules:
    - id: notes-tickets-readers
      mcp_server: notes                     # a resource id: the MCP server asking
      target: tickets
      provider: corp-ldap
      groups: [mcp-readers]
      scopes: [tickets:read]
```

Each kind of target is one model in ``TargetConfigUnion`` (a discriminated union on ``kind``);
the kind-specific fields live on its model. A rule grants (or denies) scopes of one target to
the users of one provider (by group, or by user as the mapping rules do) when one MCP server asks.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker.config.types import Duration, check_public_url

_SCOPE = r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TargetBase(_Section):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Named by rules, audit events and metrics.")
    audience: str = Field(
        description="What an MCP server asks for: the `audience` (or `resource`) of its token exchange. "
        "For an internal target also the `aud` of the tokens the broker mints."
    )
    scopes: list[Annotated[str, Field(pattern=_SCOPE)]] = Field(
        min_length=1, description="The scopes a token for this target may carry (rules grant from these)."
    )
    cache_margin: Duration = Field(
        default=30,
        le=3600,
        description="A cached downstream token is reused until this long before it expires.",
    )

    @field_validator("audience")
    @classmethod
    def _audience(cls, audience: str) -> str:
        if "://" in audience:
            return check_public_url(audience, what="audience")
        if not audience or len(audience) > 200 or any(c.isspace() for c in audience):
            raise ValueError("audience must be a URI or a name without spaces (at most 200 characters)")
        return audience


class InternalTargetConfig(_TargetBase):
    """An API behind the broker: it accepts the broker's own tokens (our JWKS, ``iss``) for its
    ``audience``; the broker mints them with an ``act`` claim naming the MCP server."""

    kind: Literal["internal"]
    ttl: Duration = Field(
        default=300,
        le=3600,
        description="Longest lifetime of a minted token; never beyond the subject token's remaining life "
        "nor `tokens.access_token_ttl`.",
    )


class EntraTargetConfig(_TargetBase):
    """A Microsoft Entra protected API (Microsoft Graph, a middle-tier API), through MSAL from the
    user's Entra session. Kind-specific fields: see docs/delegation.md."""

    kind: Literal["entra"]
    provider: str = Field(
        description="Id of the Entra provider whose sign-in session is used (it needs delegated_access: true)."
    )
    on_behalf_of: bool = Field(
        default=False,
        description="Get the token on-behalf-of (OAuth 2.0 OBO) with a token for the broker's exposed API "
        "(api://<client id>/access_as_user) as the assertion, instead of silently from the user's session.",
    )


class OidcTargetConfig(_TargetBase):
    """An API of a generic OpenID Connect upstream, from the upstream refresh token the broker keeps
    (``use_upstream_refresh``). Kind-specific fields: see docs/delegation.md."""

    kind: Literal["oidc"]
    provider: str = Field(
        description="Id of the OIDC provider whose upstream session is used (it needs use_upstream_refresh: true)."
    )
    upstream_resource: str | None = Field(
        default=None,
        description="Sent to the OP as `resource` (RFC 8707) on the refresh, or as `audience` in its token "
        "exchange: the API the upstream token is for. Most OPs issue only for a resource named at sign-in "
        "(authorize_params.resource).",
    )


TargetConfigUnion = Annotated[InternalTargetConfig | EntraTargetConfig | OidcTargetConfig, Field(discriminator="kind")]
TargetKind = Literal["internal", "entra", "oidc"]


class DelegationRule(_Section):
    """Like a mapping rule, for one (MCP server, target) pair: which users of a provider get which
    of the target's scopes when that MCP server asks. Deny rules win over grants."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="Named in audit events and explain.")
    mcp_server: str = Field(description="Resource id of the MCP server that asks.")
    target: str = Field(description="Target id.")
    provider: str = Field(description="Provider id.")
    effect: Literal["grant", "deny"] = "grant"
    groups: list[str] = Field(default_factory=list, description="Group ids, DNs or names.")
    users: list[str] = Field(default_factory=list, description="Usernames or subjects.")
    scopes: list[str] = Field(min_length=1)


class DelegationConfig(_Section):
    targets: list[TargetConfigUnion] = Field(
        default_factory=list, description="Downstream APIs MCP servers may obtain tokens for, as the user."
    )
    rules: list[DelegationRule] = Field(
        default_factory=list, description="Which MCP server may obtain which target, for whom, with which scopes."
    )

    @model_validator(mode="after")
    def _consistent(self) -> DelegationConfig:
        ids = [t.id for t in self.targets]
        if len(ids) != len(set(ids)):
            raise ValueError("target ids must be unique")
        audiences = [t.audience for t in self.targets]
        if len(audiences) != len(set(audiences)):
            raise ValueError("target audiences must be unique")
        rule_ids = [r.id for r in self.rules]
        if len(rule_ids) != len(set(rule_ids)):
            raise ValueError("rule ids must be unique")
        targets = {t.id: t for t in self.targets}
        for rule in self.rules:
            target = targets.get(rule.target)
            if target is None:
                raise ValueError(f"rule {rule.id}: unknown target {rule.target!r}")
            unknown = sorted(set(rule.scopes) - set(target.scopes))
            if unknown:
                raise ValueError(f"rule {rule.id}: scopes {unknown} are not scopes of target {target.id}")
        return self

    def target(self, id_or_audience: str) -> TargetConfigUnion | None:
        """The target an MCP server names by ``audience``/``resource`` (its audience, or its id)."""
        return next((t for t in self.targets if id_or_audience in (t.audience, t.id)), None)
