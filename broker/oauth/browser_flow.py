"""The browser flow's steps, without HTTP: authorize → consent → sign-in (password or upstream
redirect) → code. Each step returns an outcome; the routes in ``broker.routes`` render it.

Confused-deputy rules (MCP security best practices): the user approves this client, redirect
host, MCP server and scopes before anything goes upstream; the flow cookie and the upstream
``state`` exist only after approval; ``state`` upstream is single-use and lives ten minutes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from broker.audit import audit
from broker.config.models import BrokerConfig
from broker.metrics import LOGINS, UPSTREAM_LATENCY
from broker.oauth.authorize import AuthorizationRequest, may_redirect_errors, redirect_with
from broker.oauth.clients import Client, ClientRegistry
from broker.oauth.errors import AccessDenied, OAuthError
from broker.oauth.grants import GrantService, identity_from
from broker.oauth.vault import Vault
from broker.policy.holder import PolicyHolder
from broker.security.compare import same_secret
from broker.security.password_login import LoginOutcome, password_login
from broker.security.throttle import LoginThrottle
from broker.store.base import Store
from broker.store.keys import digest
from broker.store.records import Consent, PendingFlow, UpstreamLeg
from broker.upstream_log import log_upstream_failure
from providers.base import (
    AccountDisabled,
    FormOrigins,
    Identity,
    PasswordProvider,
    Provider,
    ProviderError,
    RedirectProvider,
    UpstreamUnavailable,
)

FLOW_TTL = 600
MAX_LOGIN_ATTEMPTS = 5
_log = structlog.get_logger("mcp_broker.authorize")

SignInProvider = PasswordProvider | RedirectProvider


def error_redirect(issuer: str, redirect_uri: str, error: OAuthError, client_state: str | None) -> str:
    """The client's redirect URI carrying ``error`` (RFC 6749 §4.1.2.1, RFC 9207 ``iss``)."""
    return redirect_with(
        redirect_uri,
        {"error": error.error, "error_description": error.description, "state": client_state, "iss": issuer},
    )


@dataclass(frozen=True)
class Loaded:
    """A pending authorization request: its stored flow, the request and its client."""

    flow_id: str
    flow: PendingFlow
    auth: AuthorizationRequest
    client: Client


@dataclass(frozen=True)
class Approved(Loaded):
    """A flow the user approved, back in the browser that approved it."""

    provider: Provider


# Outcomes the routes render.
@dataclass(frozen=True)
class Expired:
    """The flow is gone, spent or not this browser's: "Sign-in expired"."""


@dataclass(frozen=True)
class Redirect:
    """Send the browser to ``url``; ``binding`` (if any) becomes the flow cookie, ``csrf`` (if
    any) the CSRF cookie."""

    url: str
    binding: str | None = None
    csrf: str | None = None


@dataclass(frozen=True)
class Denied:
    """The user said no: back to the client if its address may receive errors, else a page."""

    redirect: str | None
    resource_name: str | None


@dataclass(frozen=True)
class Unavailable:
    """The provider could not start a sign-in (503)."""

    public: str


@dataclass(frozen=True)
class Throttled:
    """Too many failed sign-ins for this user or address; try again in ``minutes``."""

    minutes: int


@dataclass(frozen=True)
class PasswordRefused:
    """The password sign-in failed; the form is shown again with ``public`` and ``status``."""

    public: str
    status: int


@dataclass(frozen=True)
class TooManyAttempts:
    """This flow saw too many failed sign-ins and is gone."""


@dataclass(frozen=True)
class UpstreamDeclined:
    """The upstream provider answered with an error; ``return_url`` only where errors may go back."""

    return_url: str | None


@dataclass(frozen=True)
class SignInFailed:
    """Exchanging the upstream callback failed (502 if the provider was unreachable, else 400)."""

    public: str
    status: int


@dataclass(frozen=True)
class NoAccess:
    """Signed in, but the policy grants none of the scopes asked for (403 page)."""

    resource_name: str
    username: str
    groups: list[str]
    return_url: str


@dataclass(frozen=True)
class AccountSignedIn:
    """An account-page sign-in came back from upstream: start a session for ``identity``."""

    identity: Identity


@dataclass(frozen=True)
class SessionRenewed:
    """A delegation target's ``interaction_uri`` sign-in came back: the new upstream session was
    kept for ``grants`` of the user's active grants with that provider (docs/delegation.md)."""

    identity: Identity
    target_id: str
    grants: int


DELEGATION_PURPOSE = "delegation:"  # + the target id: a sign-in that renews the kept upstream session


Finished = Expired | Redirect | NoAccess
Consented = Expired | Redirect | Unavailable
PasswordOutcome = Finished | Throttled | PasswordRefused | TooManyAttempts
CallbackOutcome = Finished | UpstreamDeclined | SignInFailed | AccountSignedIn | SessionRenewed


class BrowserFlow:
    def __init__(
        self,
        config: BrokerConfig,
        store: Store,
        clients: ClientRegistry,
        policies: PolicyHolder,
        providers: Mapping[str, Provider],
        grants: GrantService,
        throttle: LoginThrottle,
    ) -> None:
        self._config = config
        self._issuer = config.issuer
        self._store = store
        self._clients = clients
        self._policies = policies
        self._providers = providers
        self._grants = grants
        self._throttle = throttle
        # Capabilities found once: isinstance against a runtime-checkable protocol takes 15-30 µs
        # (Python 3.11), and every step of every sign-in asked again.
        self._sign_in: dict[str, SignInProvider] = {
            key: p for key, p in providers.items() if isinstance(p, PasswordProvider | RedirectProvider)
        }
        self._passwords: dict[str, PasswordProvider] = {
            key: p for key, p in self._sign_in.items() if isinstance(p, PasswordProvider)
        }
        self.form_origins: tuple[str, ...] = tuple(
            o for p in self._sign_in.values() if isinstance(p, FormOrigins) for o in p.origins
        )
        """Where the sign-in providers' own forms post (the consent page's CSP form-action)."""

    def sign_in_providers(self) -> list[SignInProvider]:
        return list(self._sign_in.values())

    def password_provider(self, provider: Provider) -> PasswordProvider | None:
        """``provider`` if it takes a password (one of this flow's providers), else None."""
        found = self._passwords.get(provider.id)
        return found if found is provider else None

    async def start(self, auth: AuthorizationRequest) -> tuple[str, str]:
        """Store a validated request awaiting consent; its flow id and the consent form's CSRF token."""
        flow_id = secrets.token_urlsafe(24)
        csrf = secrets.token_urlsafe(24)
        await self._store.save_flow(
            flow_id,
            PendingFlow(request=auth.to_record(), csrf_hash=digest(csrf), approved=False, created_at=time.time()),
            FLOW_TTL,
        )
        return flow_id, csrf

    async def load(self, flow_id: str | None) -> Loaded | None:
        if not flow_id or len(flow_id) > 64:
            return None
        flow = await self._store.get_flow(flow_id)
        if flow is None:
            return None
        if flow.request is None:  # an account-page sign-in, not an authorization request
            return None
        auth = AuthorizationRequest(**flow.request)
        client = await self._clients.get(auth.client_id)
        if client is None:
            return None
        return Loaded(flow_id, flow, auth, client)

    async def approved(self, flow_id: str | None, binding: str | None) -> Approved | None:
        """The approved flow ``flow_id`` if ``binding`` (the flow cookie) is the approving browser's."""
        loaded = await self.load(flow_id)
        if loaded is None:
            return None
        flow, client = loaded.flow, loaded.client
        if not flow.approved or not same_secret(binding, flow.binding_hash):
            _log.warning("flow_binding_failed", client_id=client.client_id)
            return None
        provider = self._providers.get(flow.provider or "")
        if provider is None:
            return None
        return Approved(loaded.flow_id, flow, loaded.auth, client, provider)

    async def deny(self, loaded: Loaded) -> Denied:
        auth, client = loaded.auth, loaded.client
        await self._store.take_flow(loaded.flow_id)
        audit("consent_denied", client_id=client.client_id, resource=auth.resource)
        denied = AccessDenied("the user denied the request")
        if may_redirect_errors(client, auth.redirect_uri, self._config.registration.cimd_trusted_domains):
            return Denied(error_redirect(self._issuer, auth.redirect_uri, denied, auth.state), None)
        # nobody vouches for this address: no redirect before sign-in (RFC 9700 §4.11.2)
        _log.info("authorize_error_not_redirected", client_id=client.client_id, error=denied.error)
        resource = self._policies.current.resource_for(auth.resource)
        return Denied(None, resource.name if resource else None)

    def sign_in_provider(self, provider_id: str) -> SignInProvider | None:
        return self._sign_in.get(provider_id)

    async def consent(self, loaded: Loaded, provider: SignInProvider) -> Consented:
        """The user approved and chose ``provider``: on to the password form or upstream."""
        flow_id, auth, client = loaded.flow_id, loaded.auth, loaded.client
        binding = secrets.token_urlsafe(24)
        flow = loaded.flow.approve(provider=provider.id, binding_hash=digest(binding), client_id=client.client_id)
        audit(
            "consent_granted",
            client_id=client.client_id,
            resource=auth.resource,
            scopes=auth.scopes,
            provider=provider.id,
            stage="before_login",
        )
        if self.password_provider(provider) is not None or not isinstance(provider, RedirectProvider):
            # The password form's CSRF token, minted now and kept with the approval (one write):
            # the browser brings it back as its cookie to the form (``login_form_csrf``).
            csrf = secrets.token_urlsafe(24)
            if not await self._store.update_flow(flow_id, flow.with_csrf(digest(csrf))):
                return Expired()
            return Redirect(f"{self._issuer}/login?flow={flow_id}", binding, csrf)
        upstream_state = secrets.token_urlsafe(32)
        try:
            url, flow_data = await provider.login_url(self.callback_url(provider), upstream_state)
        except ProviderError as exc:
            _log.warning("upstream_login_url_failed", provider=provider.id, error=str(exc))
            log_upstream_failure(provider.id, "login_url", exc)
            return Unavailable(exc.public)
        flow = flow.with_upstream(
            UpstreamLeg(state_hash=digest(upstream_state), data=self._grants.seal_flow_data(flow_id, flow_data))
        )
        if not await self._store.update_flow(flow_id, flow):
            return Expired()
        await self._store.save_upstream_pointer(upstream_state, flow_id, FLOW_TTL)
        return Redirect(url, binding)

    async def account_sign_in(self, provider: RedirectProvider, *, purpose: str = "account") -> Redirect | Unavailable:
        """Start an account-page sign-in upstream: a pending flow of purpose ``account`` (or
        ``delegation:<target id>``, renewing the upstream session kept for delegated access),
        approved (there is no client to consent to) and bound to this browser by the returned
        ``binding``."""
        flow_id = secrets.token_urlsafe(24)
        upstream_state = secrets.token_urlsafe(32)
        binding = secrets.token_urlsafe(24)
        try:
            url, data = await provider.login_url(self.callback_url(provider), upstream_state)
        except ProviderError as exc:
            log_upstream_failure(provider.id, "login_url", exc)
            return Unavailable(exc.public)
        await self._store.save_flow(
            flow_id,
            PendingFlow(
                purpose=purpose,
                approved=True,
                provider=provider.id,
                binding_hash=digest(binding),
                upstream=UpstreamLeg(data=self._grants.seal_flow_data(flow_id, data)),
            ),
            FLOW_TTL,
        )
        await self._store.save_upstream_pointer(upstream_state, flow_id, FLOW_TTL)
        return Redirect(url, binding)

    async def login_form_csrf(self, approved: Approved, cookie: str | None) -> tuple[str, bool] | None:
        """The password form's CSRF token and whether it is new (to be set as the cookie), or None
        if the flow expired meanwhile. The token minted on approval when the browser's CSRF cookie
        holds it (nothing written); else a fresh one, kept with the flow."""
        if cookie is not None and same_secret(cookie, approved.flow.csrf_hash):
            return cookie, False
        csrf = secrets.token_urlsafe(24)
        if not await self._store.update_flow(approved.flow_id, approved.flow.with_csrf(digest(csrf))):
            return None
        return csrf, True

    async def password(
        self, approved: Approved, provider: PasswordProvider, username: str, password: str, client_ip: str | None
    ) -> PasswordOutcome:
        client = approved.client
        outcome = await password_login(self._throttle, provider, username, password, client_ip)
        if outcome.identity is not None:  # groups from SCIM where the provider takes them from there
            try:
                outcome = LoginOutcome(identity=await self._grants.groups.apply(outcome.identity))
            except AccountDisabled as inactive:  # inactive in SCIM: refused as a disabled account
                outcome = LoginOutcome(error=inactive)
        if outcome.retry_after:
            audit(
                "login_failed",
                provider=provider.id,
                username=username[:256],
                client_id=client.client_id,
                outcome="Throttled",
                client_ip=client_ip,
            )
            return Throttled(max(1, (outcome.retry_after + 59) // 60))
        if outcome.error is not None:
            exc = outcome.error
            # One atomic count: parallel posts on one flow cannot each read the same number.
            attempts = await self._store.count_flow_attempt(approved.flow_id)
            audit(
                "login_failed",
                provider=provider.id,
                username=username[:256],
                client_id=client.client_id,
                outcome=type(exc).__name__,
                attempt=attempts,
                client_ip=client_ip,
            )
            if attempts == 0:  # the flow expired meanwhile
                return Expired()
            if attempts >= MAX_LOGIN_ATTEMPTS:
                await self._store.take_flow(approved.flow_id)
                return TooManyAttempts()
            return PasswordRefused(exc.public, 503 if isinstance(exc, UpstreamUnavailable) else 401)
        assert outcome.identity is not None
        return await self.finish(approved, outcome.identity)

    def callback_url(self, provider: Provider) -> str:
        return f"{self._issuer}/callback/{provider.id}"

    async def callback(self, provider_id: str, query: dict[str, str], binding: str | None) -> CallbackOutcome:
        """The upstream provider sent the browser back with ``query``; ``binding`` is the flow cookie."""
        upstream_state = query.get("state")
        if not upstream_state:
            return Expired()
        flow_id = await self._store.get_upstream_pointer(upstream_state)
        if flow_id is None:
            return Expired()
        pending = await self._store.get_flow(flow_id)
        # The browser that approved must be the one coming back; only then is the state spent,
        # so a replayed callback URL without the cookie cannot spoil the real sign-in.
        if pending is None or not same_secret(binding, pending.binding_hash):
            return Expired()
        if await self._store.take_upstream_pointer(upstream_state) is None:  # single use
            return Expired()
        if pending.purpose == "account" or (pending.purpose or "").startswith(DELEGATION_PURPOSE):
            return await self._account_callback(flow_id, pending, provider_id, query)
        approved = await self.approved(flow_id, binding)
        if approved is None:
            return Expired()
        provider, auth, client = approved.provider, approved.auth, approved.client
        if provider.id != provider_id or not isinstance(provider, RedirectProvider):
            return Expired()
        if "error" in query:
            await self._store.take_flow(flow_id)
            audit(
                "login_failed",
                provider=provider.id,
                client_id=client.client_id,
                outcome="UpstreamError",
                upstream_error=query.get("error", "")[:100],
            )
            # Not signed in: a way back only to an address someone vouches for (RFC 9700 §4.11.2).
            return UpstreamDeclined(
                error_redirect(
                    self._issuer,
                    auth.redirect_uri,
                    _access_denied("the sign-in was not completed upstream"),
                    auth.state,
                )
                if may_redirect_errors(client, auth.redirect_uri, self._config.registration.cimd_trusted_domains)
                else None
            )
        upstream = approved.flow.upstream
        try:
            identity = await self._exchange(provider, flow_id, upstream.data if upstream else None, query)
        except ProviderError as exc:
            await self._store.take_flow(flow_id)
            audit("login_failed", provider=provider.id, client_id=client.client_id, outcome=type(exc).__name__)
            _log.warning("upstream_callback_failed", provider=provider.id, error=str(exc))
            return _callback_failed(provider, exc)
        return await self.finish(approved, identity)

    async def _account_callback(
        self, flow_id: str, flow: PendingFlow, provider_id: str, query: dict[str, str]
    ) -> Expired | SignInFailed | AccountSignedIn | SessionRenewed:
        provider = self._providers.get(flow.provider or "")
        await self._store.take_flow(flow_id)
        if provider is None or provider_id != flow.provider or not isinstance(provider, RedirectProvider):
            return Expired()
        try:
            identity = await self._exchange(provider, flow_id, flow.upstream.data if flow.upstream else None, query)
        except ProviderError as exc:
            return _callback_failed(provider, exc)
        LOGINS.labels(provider.id, "success").inc()
        target_id = (flow.purpose or "").removeprefix(DELEGATION_PURPOSE)
        if target_id != flow.purpose:
            renewed = await self._renew_upstream_sessions(identity)
            audit(
                "login_succeeded",
                provider=provider.id,
                sub=identity.subject,
                purpose="delegation",
                target=target_id,
                grants_renewed=renewed,
            )
            return SessionRenewed(identity, target_id, renewed)
        return AccountSignedIn(identity)

    async def _renew_upstream_sessions(self, identity: Identity) -> int:
        """Keep the new sign-in's upstream session (its provider-private data) in the vault of each
        of the user's active grants with that provider; how many took it."""
        vault = Vault(self._store, self._grants.sealer)
        renewed = 0
        for grant_id in await self._store.user_grant_ids(identity.subject):
            grant = await self._store.get_grant(grant_id)
            if grant is None or not grant.active or grant.identity is None:
                continue
            if grant.identity.provider_id != identity.provider_id:
                continue
            held = identity_from(grant.identity, self._grants.sealer)
            renewed += await vault.keep(grant_id, held, identity.private, grant.expires_at - time.time())
        return renewed

    async def _exchange(
        self, provider: RedirectProvider, flow_id: str, sealed: dict[str, Any] | str | None, query: dict[str, str]
    ) -> Identity:
        """The one exchange of an upstream callback for an identity (authorization and account flows)."""
        with UPSTREAM_LATENCY.labels(provider.id, "callback").time():
            identity = await provider.handle_callback(
                self.callback_url(provider), query, self._grants.open_flow_data(flow_id, sealed)
            )
        return await self._grants.groups.apply(identity)  # SCIM's groups, or AccountDisabled if inactive there

    async def finish(self, loaded: Loaded, identity: Identity) -> Finished:
        """Signed in as ``identity``: spend the flow, apply the policy, issue a code or refuse."""
        auth, client = loaded.auth, loaded.client
        policy = self._policies.current
        resource = policy.resource_for(auth.resource)
        if resource is None:
            await self._store.take_flow(loaded.flow_id)
            return Expired()
        decision = policy.evaluate(resource, identity)
        scopes = sorted(policy.narrow(resource, decision, auth.scopes))
        if not scopes:  # nothing to issue: the flow is spent alone
            if await self._store.take_flow(loaded.flow_id) is None:  # single use, even if two tabs race
                return Expired()
            self._signed_in(identity, client)
            audit(
                "access_denied",
                sub=identity.subject,
                client_id=client.client_id,
                resource=resource.uri,
                requested=auth.scopes,
                policy_version=policy.version,
                denied_by=decision.denied_by or None,
            )
            return NoAccess(
                resource_name=resource.name,
                username=identity.username,
                groups=policy.hint_groups(resource, identity.provider_id),
                return_url=error_redirect(self._issuer, auth.redirect_uri, _access_denied(), auth.state),
            )
        grant_id, code, record = self._grants.new_code(
            client_id=client.client_id,
            redirect_uri=auth.redirect_uri,
            redirect_uri_given=auth.redirect_uri_given,
            code_challenge=auth.code_challenge,
            resource=resource.uri,
            scopes=scopes,
            identity=identity,
            openid=auth.openid,
            nonce=auth.nonce,
        )
        # One store call spends the flow (single use, even if two tabs race) and, only then, keeps
        # the code and remembers the consent.
        spent = await self._store.spend_flow(
            loaded.flow_id,
            grant_id=grant_id,
            code=record,
            code_ttl=self._grants.code_ttl,
            subject=identity.subject,
            consent=Consent(client.client_id, resource.uri, tuple(scopes), time.time()),
        )
        if not spent:
            return Expired()
        self._signed_in(identity, client)
        audit(
            "code_issued",
            grant_id=grant_id,
            client_id=client.client_id,
            sub=identity.subject,
            resource=resource.uri,
            scopes=scopes,
            granted_by={s: decision.granted_by.get(s, []) for s in scopes},
            policy_version=policy.version,
        )
        return Redirect(redirect_with(auth.redirect_uri, {"code": code, "state": auth.state, "iss": self._issuer}))

    @staticmethod
    def _signed_in(identity: Identity, client: Client) -> None:
        LOGINS.labels(identity.provider_id, "success").inc()
        audit(
            "login_succeeded",
            provider=identity.provider_id,
            sub=identity.subject,
            username=identity.username,
            client_id=client.client_id,
            groups=len(identity.groups),
        )


def _access_denied(description: str = "the user is not allowed to use this resource") -> OAuthError:
    return AccessDenied(description)


def _callback_failed(provider: Provider, exc: ProviderError) -> SignInFailed:
    LOGINS.labels(provider.id, type(exc).__name__).inc()
    log_upstream_failure(provider.id, "callback", exc)
    return SignInFailed(exc.public, 502 if isinstance(exc, UpstreamUnavailable) else 400)
