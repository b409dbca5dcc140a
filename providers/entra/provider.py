"""Microsoft Entra ID sign-in: MSAL's authorization code flow (PKCE, nonce), ID token checks,
groups from the token or Microsoft Graph, and a refresh-time re-check with app-only Graph.

What the identity holds:

* ``subject`` is ``{provider id}:{tid}:{oid}`` (``qualified_subject``): ``{tid}:{oid}`` is
  Microsoft's recommended key for a user (the object id is stable and never reassigned; the
  tenant id keeps users of different allowed tenants apart and keeps subjects unchanged if
  ``allowed_tenants`` is added later), and the provider id keeps two providers apart.
* ``username`` is ``preferred_username`` (the UPN, usually), ``email`` the optional ``email``
  claim, ``display_name`` ``name``.
* ``groups`` are group object ids (GUIDs): the ``groups`` claim, or Microsoft Graph
  ``transitiveMemberOf`` when Entra signals overage (``_claim_names.groups`` instead of
  ``groups``, past 200 groups), when ``groups_from_graph: always``, or when
  ``resolve_group_names`` is on (then ``group_names`` maps id -> displayName so mappings may
  name groups). App roles (the ``roles`` claim) are added as ``role:<value>`` so a mapping can
  say ``groups: ["role:Notes.Write"]``.
* ``private`` keeps ``tid``, ``oid`` and the roles for the refresh-time re-check; no upstream
  token is kept anywhere (MSAL's cache keeps app-only tokens only), unless ``delegated_access``
  is on: then ``private["msal_cache"]`` is the user's own MSAL token cache from sign-in (refresh
  token included; the broker keeps private data sealed), from which ``delegated_token`` gets
  tokens for other APIs as the user (``DelegatedAccess``).

Delegated access (``delegated_token``): MSAL's ``acquire_token_silent`` for the account of that
cache and the target's scopes, or with ``on_behalf_of`` first a token for the broker's own exposed
API (``api://<client id>/access_as_user``) and then ``acquire_token_on_behalf_of`` with it. Entra
answering ``interaction_required``, ``consent_required`` (as ``invalid_grant`` with that
suberror) or ``invalid_grant`` (the refresh token expired or was revoked) is InteractionNeeded:
the user must sign in again, or consent, with those scopes.

Every upstream call (MSAL's discovery and token requests, the JWKS, each Graph page) has one
overall deadline, ``timeout``: Entra or Graph accepting the connection and then answering
nothing, or a byte at a time, is UpstreamUnavailable ("... timed out after 10 s") at the
deadline, and the user sees the "try again later" page.

At refresh (``refresh_check: graph``, the default) the user is looked up with an app-only token
(client credentials in the user's tenant; application permissions ``User.Read.All`` and
``GroupMember.Read.All``): a deleted user raises InvalidCredentials, a disabled one
AccountDisabled, and the groups are read again so a user removed from a group loses its scopes.
App roles cannot be re-read that cheaply (Graph has no transitive app-role lookup): the roles of
sign-in time are kept until the next sign-in, bounded by the refresh token's absolute lifetime.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from providers.base import (
    AccountDisabled,
    DelegatedAccess,
    EmailDomainHints,
    FormOrigins,
    Identity,
    InteractionNeeded,
    InvalidCredentials,
    Lifecycle,
    RedirectProvider,
    RefreshProvider,
    UpstreamRejected,
    UpstreamToken,
    UpstreamUnavailable,
    qualified_subject,
)
from providers.entra.config import EntraProviderConfig
from providers.entra.graph import Graph
from providers.entra.idtoken import IdTokenVerifier, JwksCache
from providers.entra.msal_apps import MSAL_CACHE, MsalApps
from providers.net import tls_context

ROLE_PREFIX = "role:"
# Answers of Entra's token endpoint that a new interactive sign-in (or a consent) resolves.
_INTERACTION = {"interaction_required", "consent_required", "login_required", "invalid_grant"}
_CALLBACK_KEYS = ("code", "state", "session_state", "client_info", "error", "error_description", "error_uri")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


class EntraProvider(RedirectProvider, RefreshProvider, DelegatedAccess, Lifecycle, FormOrigins, EmailDomainHints):
    """``RedirectProvider``, ``RefreshProvider`` and ``DelegatedAccess`` for Microsoft Entra ID."""

    refresh_spends_upstream_token = False  # the re-check uses an app-only Graph token
    delegated_spends_upstream_token = False  # Entra's refresh tokens stay valid when used

    def __init__(self, config: EntraProviderConfig) -> None:
        self.config = config
        self.id = config.id
        self.display_name = config.display_name
        # One HTTP client for MSAL (see ``MsalApps``), Graph and the JWKS; each call has its own
        # overall deadline, ``timeout``, on top of httpx's per-read one.
        self._http = httpx.AsyncClient(
            verify=tls_context(config.ca_file),
            trust_env=False,
            timeout=config.timeout,
            proxy=str(config.proxy) if config.proxy else None,
            follow_redirects=False,
        )
        self._msal = MsalApps(config, self._http)
        host = self._msal.authority_host
        self._origins = (_origin(host),)
        # Multi-tenant sign-in goes through /organizations; the tenant check is on the ID token.
        self._signin_authority = "organizations" if config.allowed_tenants else config.tenant_id
        self._graph_base = str(config.graph_url).rstrip("/")
        self._scopes = ["email", *(self._graph_scope(s) for s in config.graph_scopes)]
        self._graph = Graph(self._graph_base, self._http, timeout=config.timeout)
        self._verifier = IdTokenVerifier(
            client_id=config.client_id,
            authority_host=host,
            tenants=config.tenants,
            jwks=JwksCache(f"{host}/{self._signin_authority}/discovery/v2.0/keys", self._http, timeout=config.timeout),
            v1_issuer_host=str(config.v1_issuer_host) if config.accept_v1_issuer else None,
        )

    @property
    def origins(self) -> tuple[str, ...]:
        """Where the login URL points: the authority host."""
        return self._origins

    @property
    def email_domains(self) -> tuple[str, ...]:
        return tuple(self.config.email_domains)

    def _graph_scope(self, scope: str) -> str:
        return scope if "://" in scope else f"{self._graph_base}/{scope}"

    # -- RedirectProvider ------------------------------------------------------------------
    async def login_url(self, callback_url: str, state: str) -> tuple[str, Mapping[str, Any]]:
        flow = await self._msal.start(self._signin_authority, self._scopes, callback_url, state)
        if flow.get("state") != state or not isinstance(flow.get("auth_uri"), str):
            raise UpstreamRejected("MSAL did not use the broker's state for the sign-in request")
        return flow["auth_uri"], flow

    async def handle_callback(self, callback_url: str, params: Mapping[str, str], flow: Mapping[str, Any]) -> Identity:
        if not hmac.compare_digest(str(params.get("state", "")), str(flow.get("state", ""))):
            raise UpstreamRejected("callback state differs from the sign-in request's")
        if flow.get("redirect_uri") != callback_url:
            raise UpstreamRejected("callback URL differs from the sign-in request's redirect_uri")
        if params.get("error"):
            raise UpstreamRejected(
                f"Entra returned {str(params['error'])[:64]}: {str(params.get('error_description', ''))[:200]}"
            )
        if not params.get("code"):
            raise UpstreamRejected("callback carries neither a code nor an error")
        response = {k: str(params[k]) for k in _CALLBACK_KEYS if k in params}
        result = await self._msal.redeem(self._signin_authority, dict(flow), response)
        id_token = result.get("id_token")
        if not isinstance(id_token, str):
            raise UpstreamRejected("token response has no ID token")
        claims = await self._verifier.verify(id_token, nonce=str(flow.get("nonce", "")))
        delegated = result.get("access_token") if self.config.graph_scopes else None
        groups, names = await self._groups(claims, delegated if isinstance(delegated, str) else None)
        identity = self._identity(claims, groups, names)
        kept = result.get(MSAL_CACHE)
        if isinstance(kept, str):
            identity = replace(identity, private={**identity.private, MSAL_CACHE: kept})
        return identity

    # -- DelegatedAccess -------------------------------------------------------------------
    async def delegated_token(
        self,
        state: Mapping[str, Any],
        scopes: Sequence[str],
        *,
        audience: str | None = None,
        on_behalf_of: bool = False,
    ) -> UpstreamToken:
        wanted = [self._graph_scope(s) if "/" not in s else s for s in scopes]
        cache = state.get(MSAL_CACHE)
        if not isinstance(cache, str):
            raise InteractionNeeded(
                "no Entra session kept for this grant (delegated_access off at sign-in, or no key encryption key)",
                wanted,
            )
        assertion = [f"api://{self.config.client_id}/access_as_user"] if on_behalf_of else None
        result, changed = await self._msal.delegated(self._signin_authority, cache, wanted, assertion_scopes=assertion)
        if "error" in result or not isinstance(result.get("access_token"), str):
            error = str(result.get("error", "no_token"))[:64]
            suberror = str(result.get("suberror", ""))[:64]
            detail = (
                f"Entra answered {error}{f' ({suberror})' if suberror else ''} for {' '.join(wanted)}: "
                + str(result.get("error_description", "")).strip().split("\n")[0][:200]
            )
            if error in _INTERACTION or suberror in _INTERACTION:
                raise InteractionNeeded(detail, wanted)
            if error in ("invalid_client", "unauthorized_client"):  # the broker's credential or registration
                raise UpstreamUnavailable(detail + " (check the client secret or certificate and the app registration)")
            if error in ("temporarily_unavailable", "server_error", "no_token"):
                raise UpstreamUnavailable(detail)
            raise UpstreamRejected(detail)
        granted = str(result.get("scope", "")).split() or wanted
        expires_in = result.get("expires_in")  # MSAL gives seconds left, for a cached token too
        return UpstreamToken(
            access_token=result["access_token"],
            expires_in=int(expires_in) if isinstance(expires_in, int | float) else 300,
            scopes=frozenset(granted),
            state={**state, MSAL_CACHE: changed} if changed is not None else None,
        )

    # -- RefreshProvider -------------------------------------------------------------------
    async def refresh(self, identity: Identity) -> Identity:
        if self.config.refresh_check == "none":
            return identity
        tid, oid = identity.private.get("tid"), identity.private.get("oid")
        if not isinstance(tid, str) or not isinstance(oid, str):  # no private data kept: read the subject
            tid, _, oid = identity.subject.removeprefix(f"{self.id}:").partition(":")
        if tid.lower() not in self.config.tenants:
            raise InvalidCredentials(f"tenant {tid} of {identity.username!r} is no longer allowed")
        token = await self._app_token(tid)
        user = await self._graph.user(token, oid)
        if user is None:
            raise InvalidCredentials(f"user {identity.username!r} ({tid}:{oid}) no longer exists in Entra")
        if user.get("accountEnabled") is False:
            raise AccountDisabled(f"user {identity.username!r} ({tid}:{oid}) is disabled in Entra")
        members = await self._graph.member_groups(token, oid)
        roles = _strings(identity.private.get("roles"))
        return replace(
            identity,
            groups=frozenset(members) | {ROLE_PREFIX + r for r in roles},
            group_names=self._names(members),
        )

    async def aclose(self) -> None:
        self._msal.close()
        await self._http.aclose()

    # -- helpers ---------------------------------------------------------------------------
    async def _app_token(self, tid: str) -> str:
        return await self._msal.app_token(tid, [f"{self._graph_base}/.default"])

    def _names(self, members: Mapping[str, str | None]) -> dict[str, str]:
        if not self.config.resolve_group_names:
            return {}
        return {gid: name for gid, name in members.items() if name}

    async def _groups(self, claims: Mapping[str, Any], delegated: str | None) -> tuple[set[str], dict[str, str]]:
        names = claims.get("_claim_names")
        overage = "groups" not in claims and isinstance(names, dict) and "groups" in names
        if not (overage or self.config.groups_from_graph == "always" or self.config.resolve_group_names):
            return set(_strings(claims.get("groups"))), {}
        if delegated is not None:
            members = await self._graph.member_groups(delegated, "me")
        else:
            members = await self._graph.member_groups(await self._app_token(str(claims["tid"])), str(claims["oid"]))
        return set(members), self._names(members)

    def _identity(self, claims: Mapping[str, Any], groups: set[str], names: dict[str, str]) -> Identity:
        tid, oid = str(claims["tid"]), str(claims["oid"])
        roles = _strings(claims.get("roles"))

        def text(*keys: str) -> str | None:
            for key in keys:
                value = claims.get(key)
                if isinstance(value, str) and value:
                    return value
            return None

        upn, email = text("preferred_username", "upn", "unique_name"), text("email")
        return Identity(
            provider_id=self.id,
            subject=qualified_subject(self.id, f"{tid}:{oid}"),
            username=upn or email or oid,
            # A UPN is unique (its domain is verified by one tenant); the email claim is not verified.
            username_is_unique=upn is not None or email is None,
            email=email,
            display_name=text("name"),
            groups=frozenset(groups | {ROLE_PREFIX + r for r in roles}),
            group_names=names,
            private={"tid": tid, "oid": oid, "roles": roles},
        )
