"""The JWT bearer grant for ID-JAGs (RFC 7523 §2.1, draft-ietf-oauth-identity-assertion-authz-grant
§4.4, MCP Enterprise-Managed Authorization §5): an enterprise IdP's Identity Assertion JWT
Authorization Grant redeemed for an access token to one of our MCP servers, without a browser.

After the assertion's own checks (:mod:`broker.oauth.id_jag`):

* the client: a confidential client that authenticated at this request, and the one the ID-JAG's
  ``client_id`` names (``invalid_client`` / ``invalid_grant``);
* the resource: the ID-JAG's ``resource`` (the request's ``resource``, if given, must be it), one
  of our MCP servers this issuer may name (``invalid_target``); it is the token's audience;
* ``jti`` spent, once across every replica (``Store.claim_assertion_jti``, kept until ``exp``): a
  second presentation is ``invalid_grant`` and audited as ``assertion_replayed``;
* the user: the issuer's ``subject_claim`` mapped onto an identity of its ``provider`` (groups from
  ``groups_claim``, or the user looked up at the provider), so mapping rules, ``explain`` and the
  per-user revocation index treat them as after a browser sign-in;
* the scopes: what the policy grants that identity for the resource, within the ID-JAG's ``scope``
  and the request's ``scope`` (each closed over ``implies``); none left is ``invalid_scope``.

The answer has no refresh token (the client presents a new ID-JAG instead). The grant is recorded
for the access token's lifetime, so revoking the token, the grant or the user works as for any
other. Every refusal is audited as ``assertion_refused`` with its reason.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.audit import audit
from broker.config.models import BrokerConfig, ResourceConfig, TrustedIssuerConfig
from broker.metrics import TOKENS_ISSUED
from broker.oauth.authorize import find_resource
from broker.oauth.clients import Client
from broker.oauth.errors import (
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    UnsupportedGrantType,
)
from broker.oauth.grants import identity_record
from broker.oauth.id_jag import JWT_BEARER, IdJag, IdJagVerifier, Refused
from broker.oauth.sealing import Sealer
from broker.oauth.signing import KeyRing
from broker.oauth.tokens import mint_for_grant, new_grant_id
from broker.policy import Policy
from broker.policy.holder import PolicyHolder
from broker.scim.groups import GroupSource
from broker.store.base import Store
from broker.store.records import Grant
from broker.upstream_log import log_upstream_failure
from providers.base import (
    AccountDisabled,
    Identity,
    InvalidCredentials,
    LookupProvider,
    Provider,
    ProviderError,
    qualified_subject,
)

MAX_GROUPS = 1_000  # groups taken from one assertion's groups claim


@dataclass
class AssertionGrant:
    config: BrokerConfig
    store: Store
    keyring: KeyRing
    policies: PolicyHolder
    providers: Mapping[str, Provider]
    sealer: Sealer
    verifier: IdJagVerifier

    def __post_init__(self) -> None:
        self._groups = GroupSource(self.store, self.config.scim.tenants)
        for trusted in self.config.identity_assertion.trusted_issuers:
            provider = self.providers.get(trusted.provider)
            if trusted.groups_claim is None and not isinstance(provider, LookupProvider):
                raise ValueError(
                    f"identity_assertion trusted issuer {trusted.issuer}: provider {trusted.provider!r} cannot look "
                    "users up; set groups_claim to trust the assertion's groups instead"
                )

    @property
    def enabled(self) -> bool:
        return bool(self.config.identity_assertion.trusted_issuers)

    async def aclose(self) -> None:
        await self.verifier.aclose()

    async def redeem(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        """The token response for ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``."""
        if not self.enabled:
            raise UnsupportedGrantType(detail=f"{JWT_BEARER} without trusted identity assertion issuers")
        jag: IdJag | None = None
        try:
            if client.is_public:  # draft §7.1: for confidential clients only
                raise InvalidClient(
                    "Only a confidential client may redeem an identity assertion.",
                    detail=f"public client {client.client_id} presented an assertion",
                )
            assertion = form.get("assertion")
            if not assertion:
                raise InvalidRequest("assertion is required")
            jag = await self.verifier.verify(assertion)
            return await self._redeem(client, form, jag)
        except OAuthError as exc:
            replayed = isinstance(exc, Refused) and exc.reason == "replayed"  # audited as such
            if not replayed and not isinstance(exc, TemporarilyUnavailable):
                audit(
                    "assertion_refused",
                    client_id=client.client_id,
                    issuer=jag.issuer if jag else None,
                    sub=jag.subject if jag else None,
                    reason=exc.reason if isinstance(exc, Refused) else exc.error,
                    detail=exc.detail,
                )
            raise

    async def _redeem(self, client: Client, form: Mapping[str, str], jag: IdJag) -> dict[str, Any]:
        if not hmac.compare_digest(jag.client_id.encode(), client.client_id.encode()):
            raise Refused(
                "client_id",
                "The assertion was issued to another client.",
                detail=f"assertion for client {jag.client_id[:200]!r} presented by {client.client_id}",
            )
        policy = self.policies.current  # one policy for the whole request (a reload may replace it)
        resource = self._resource(policy, jag, form.get("resource"))
        requested = form.get("scope")
        if not await self.store.claim_assertion_jti(jag.issuer, jag.jti, jag.expires_at + jag.trusted.clock_skew):
            audit(
                "assertion_replayed", client_id=client.client_id, issuer=jag.issuer, sub=jag.subject, jti=jag.jti[:200]
            )
            raise Refused("replayed", "The assertion was already used.", detail=f"jti {jag.jti[:200]!r} replayed")
        try:  # groups from SCIM where the provider takes them from there (scim.tenants[].groups_source)
            identity = await self._groups.apply(await self._identity(jag))
        except AccountDisabled:
            raise Refused("disabled", "The assertion's user may not sign in.", detail="inactive in SCIM") from None
        decision = policy.evaluate(resource, identity)
        scopes = policy.narrow(resource, decision, jag.scopes)
        if requested is not None and requested.strip():
            scopes &= policy.narrow(resource, decision, requested.split())
        if not scopes:
            raise InvalidScope(
                "None of the requested scopes is granted to this user.",
                detail=f"policy {sorted(decision.scopes)}, assertion {jag.scopes}, request {requested!r}",
            )
        return await self._issue(client, jag, resource, identity, sorted(scopes), policy.version)

    @staticmethod
    def _resource(policy: Policy, jag: IdJag, requested: str | None) -> ResourceConfig:
        """The one resource the token is for: the assertion's, which the request may name again."""
        named = [r for r in (find_resource(policy, uri) for uri in jag.resources) if r is not None]
        if requested is not None:
            wanted = find_resource(policy, requested)
            if wanted is None:
                raise InvalidTarget(detail=f"unknown resource {requested[:200]!r}")
            if wanted not in named:
                raise InvalidTarget(
                    "The requested resource is not the one the assertion names.",
                    detail=f"request resource {requested[:200]!r}, assertion {list(jag.resources)}",
                )
            named = [wanted]
        if not named:
            raise InvalidTarget(
                "The assertion names no resource of this server.", detail=f"assertion resource {list(jag.resources)}"
            )
        if len(named) > 1:
            raise InvalidTarget("The assertion names several resources: name one in the request.")
        resource = named[0]
        if resource.id not in jag.trusted.resources:
            raise InvalidTarget(
                "The assertion's issuer may not grant access to this resource.",
                detail=f"{jag.issuer} may not name resource {resource.id}",
            )
        return resource

    async def _identity(self, jag: IdJag) -> Identity:
        """The user the assertion speaks for, as an identity of the issuer's provider."""
        trusted = jag.trusted
        value = jag.subject if trusted.subject_claim == "sub" else jag.claims.get("email")
        if not isinstance(value, str) or not value or len(value) > 256:
            raise Refused("subject", f"The assertion has no usable '{trusted.subject_claim}' claim.")
        email = jag.claims.get("email") if isinstance(jag.claims.get("email"), str) else None
        if trusted.groups_claim is not None:
            return Identity(
                provider_id=trusted.provider,
                subject=qualified_subject(trusted.provider, value),
                username=email or value,
                email=email,
                groups=_groups(jag, trusted),
            )
        provider = self.providers.get(trusted.provider)
        if not isinstance(provider, LookupProvider):  # refused at start; a provider replaced in a test
            raise InvalidGrant(detail=f"provider {trusted.provider} cannot look users up")
        try:
            identity = await provider.lookup(value)
        except InvalidCredentials:
            raise Refused(
                "unknown_user", "The assertion's user is not known here.", detail=f"no user {value!r}"
            ) from None
        except AccountDisabled:
            raise Refused(
                "disabled", "The assertion's user may not sign in.", detail=f"{value!r} is disabled"
            ) from None
        except ProviderError as exc:
            log_upstream_failure(trusted.provider, "lookup", exc)
            raise TemporarilyUnavailable(detail=f"lookup of {value!r} failed: {exc}") from None
        if trusted.subject_claim == "email" and (identity.email or "").casefold() != value.casefold():
            raise Refused(
                "unknown_user",
                "The assertion's user is not known here.",
                detail=f"lookup of {value!r} found an account with another email",
            )
        return identity

    async def _issue(
        self,
        client: Client,
        jag: IdJag,
        resource: ResourceConfig,
        identity: Identity,
        scopes: list[str],
        policy_version: str,
    ) -> dict[str, Any]:
        ttl = self.config.tokens.access_token_ttl
        now = time.time()
        auth_time = jag.claims.get("auth_time")
        grant = Grant(
            grant_id=new_grant_id(),
            client_id=client.client_id,
            subject=identity.subject,
            username=identity.username,
            provider_id=identity.provider_id,
            resource=resource.uri,
            scopes=" ".join(scopes),
            identity=identity_record(identity, self.sealer),
            created_at=now,
            last_refresh=now,
            auth_time=int(auth_time) if isinstance(auth_time, int) and not isinstance(auth_time, bool) else None,
            expires_at=now + ttl,  # no refresh token: the grant lives as long as its access token
            status="active",
            policy_version=policy_version,
        )
        await self.store.create_grant(grant, "none", ttl, ttl)
        access = mint_for_grant(self.keyring, issuer=self.config.issuer, grant=grant, scopes=scopes, ttl=ttl, now=now)
        TOKENS_ISSUED.inc()
        audit(
            "assertion_redeemed",
            grant_id=grant.grant_id,
            client_id=client.client_id,
            issuer=jag.issuer,
            assertion_sub=jag.subject,
            sub=grant.subject,
            resource=resource.uri,
            scope=" ".join(scopes),
            policy_version=policy_version,
        )
        return {"access_token": access.token, "token_type": "Bearer", "expires_in": ttl, "scope": " ".join(scopes)}


def _groups(jag: IdJag, trusted: TrustedIssuerConfig) -> frozenset[str]:
    value = jag.claims.get(trusted.groups_claim or "")
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return frozenset(v for v in values[:MAX_GROUPS] if isinstance(v, str) and v and len(v) <= 512)
