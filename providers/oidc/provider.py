"""The OpenID Connect authorization code flow (OIDC Core 1.0 §3.1) with PKCE (RFC 7636, S256) and
a nonce, over authlib's httpx client; optionally an upstream refresh at every broker refresh.

``OidcProvider(config)`` is a ``RedirectProvider``. With ``use_upstream_refresh`` it is a
``RefreshingOidcProvider``, which is also a ``RefreshProvider``: the broker checks capabilities
with ``isinstance`` against runtime protocols, so ``refresh`` exists only on instances that can
honour it; without it the broker re-applies its policy to the groups stored at sign-in.

Every call to the OP (discovery, token, JWKS, userinfo) has one overall deadline,
``http_timeout``, connection and every byte of the answer included: an OP that accepts the
connection and never answers, or dribbles its answer, is ``UpstreamUnavailable`` ("token endpoint
... timed out after 10 s") when the time is up.

Delegated access (``RefreshingOidcProvider.delegated_token``, issue 14): from the upstream refresh
token kept for the grant, a refresh_token grant with the target's ``scope`` and, given an
audience, its ``resource`` (RFC 8707); or, where the OP's metadata lists
``urn:ietf:params:oauth:grant-type:token-exchange`` in ``grant_types_supported``, a refresh for
the user's own access token exchanged (RFC 8693) for one with the target's ``audience`` and
``scope``. A refused refresh token (``invalid_grant``: expired, revoked, the user gone) is
InteractionNeeded: the user must sign in again. A rotated refresh token comes back in the
answer's ``state`` for the broker to keep; each call spends the refresh token, so the broker runs
one call per grant at a time, under the grant's upstream lock.

Outcomes: the OP unreachable or answering 5xx is ``UpstreamUnavailable``; an answer that cannot
be trusted (discovery issuer, ID token signature or claims, a refused code) is
``UpstreamRejected``; at refresh, an OP that refuses the refresh token (``invalid_grant``: the
user or their session is gone) is ``InvalidCredentials``. Exception texts never carry tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import httpx2
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from providers.base import (
    DelegatedAccess,
    EmailDomainHints,
    FormOrigins,
    Identity,
    InteractionNeeded,
    InvalidCredentials,
    Lifecycle,
    ProviderError,
    RedirectProvider,
    RefreshProvider,
    UpstreamRejected,
    UpstreamToken,
    UpstreamUnavailable,
    qualified_subject,
)
from providers.net import deadline, describe, tls_context
from providers.oidc.config import OidcProviderConfig
from providers.oidc.discovery import ProviderMetadata, discovery_url, origin, parse_metadata
from providers.oidc.id_token import IdTokenVerifier, KeySet
from providers.oidc.logout_token import LogoutToken, LogoutTokenVerifier

DISCOVERY_MAX_AGE = 3600.0
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - RFC 8693 §2.1
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - RFC 8693 §3
_TEXT = 200  # longest piece of upstream text quoted in a log message


class OidcProvider(RedirectProvider, Lifecycle, FormOrigins, EmailDomainHints):
    """``RedirectProvider`` for any OpenID Connect OP found by discovery."""

    def __new__(cls, config: OidcProviderConfig, *, clock: Callable[[], float] = time.monotonic) -> OidcProvider:
        kind: type[OidcProvider] = cls
        if cls is OidcProvider and config.use_upstream_refresh:
            kind = RefreshingOidcProvider
        return object.__new__(kind)

    def __init__(self, config: OidcProviderConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.id = config.id
        self.display_name = config.display_name
        self.issuer = config.issuer
        self._clock = clock
        self._oauth: AsyncOAuth2Client | None = None
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._metadata_lock = asyncio.Lock()
        self.keys = KeySet(self._fetch_jwks, clock=clock, timeout=config.http_timeout)
        self._verifier = IdTokenVerifier(config.issuer, config.client_id, self.keys)
        self._logout_verifier = LogoutTokenVerifier(config.issuer, config.client_id, self.keys)

    # -- what the broker reads ---------------------------------------------------------------
    @property
    def origins(self) -> tuple[str, ...]:
        """Where the login URL may point (the consent page's CSP ``form-action``)."""
        found = [origin(self.issuer)]
        if self._metadata is not None:
            found.append(origin(self._metadata.authorization_endpoint))
        return tuple(dict.fromkeys(found))

    @property
    def email_domains(self) -> tuple[str, ...]:
        return tuple(self.config.email_domains)

    async def prepare(self) -> None:
        """Read the discovery document before the first sign-in, so ``origins`` names the
        authorization endpoint from the start; an OP that is down now is tried again at sign-in."""
        with contextlib.suppress(ProviderError):
            await self.metadata()

    async def aclose(self) -> None:
        oauth, self._oauth = self._oauth, None
        if oauth is not None:
            await oauth.aclose()

    # -- the protocol ------------------------------------------------------------------------
    async def login_url(self, callback_url: str, state: str) -> tuple[str, Mapping[str, Any]]:
        metadata = await self.metadata()
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters, RFC 7636 §4.1
        url, _ = self._client().create_authorization_url(
            metadata.authorization_endpoint,
            state=state,
            code_verifier=verifier,
            nonce=nonce,
            redirect_uri=callback_url,
            scope=" ".join(self.config.scopes),
            **self.config.authorize_params,
        )
        flow = {"state": state, "nonce": nonce, "code_verifier": verifier, "redirect_uri": callback_url}
        return str(url), flow

    async def handle_callback(self, callback_url: str, params: Mapping[str, str], flow: Mapping[str, Any]) -> Identity:
        if "error" in params:
            raise UpstreamRejected(f"the OP answered error {params['error'][:_TEXT]!r}")
        if not _same(params.get("state"), flow.get("state")):
            raise UpstreamRejected("callback state does not belong to this sign-in")
        if flow.get("redirect_uri") != callback_url:
            raise UpstreamRejected("callback URL differs from the one the sign-in started with")
        verifier, nonce = flow.get("code_verifier"), flow.get("nonce")
        if not isinstance(verifier, str) or not isinstance(nonce, str):
            raise UpstreamRejected("the stored sign-in has no PKCE verifier or nonce")
        metadata = await self.metadata()
        iss = params.get("iss")
        if iss is not None and iss != metadata.issuer:  # RFC 9207 §2.4: mix-up defence
            raise UpstreamRejected(f"authorization response from issuer {iss[:_TEXT]!r}")
        if iss is None and metadata.iss_parameter_supported:
            raise UpstreamRejected("the OP announces RFC 9207 but the authorization response has no iss")
        code = params.get("code")
        if not code:
            raise UpstreamRejected("callback without an authorization code")
        try:
            token = await self._token_request(
                metadata,
                "authorization_code",
                code=code,
                redirect_uri=callback_url,
                code_verifier=verifier,
            )
        except OAuthError as exc:
            raise UpstreamRejected(f"the OP refused the authorization code: {str(exc.error)[:_TEXT]}") from None
        raw = token.get("id_token")
        if not isinstance(raw, str):
            raise UpstreamRejected("the token response has no ID token (is openid among the scopes?)")
        access_token = token.get("access_token")
        claims = await self._verifier.verify(
            raw,
            algorithms=metadata.id_token_algorithms,
            nonce=nonce,
            access_token=access_token if isinstance(access_token, str) else None,
        )
        private: dict[str, Any] = {"sub": claims["sub"], "id_token": raw}
        if self.config.use_upstream_refresh:
            refresh_token = token.get("refresh_token")
            if not isinstance(refresh_token, str) or not refresh_token:
                raise UpstreamRejected(
                    "use_upstream_refresh is set but the OP issued no refresh token: request offline_access "
                    "in scopes (most OPs also want prompt: consent in authorize_params, OIDC Core §11)"
                )
            private["refresh_token"] = refresh_token
        return await self._identity(metadata, claims, token, private)

    async def verify_logout_token(self, raw: str) -> LogoutToken:
        """A back-channel logout token from this OP, verified (Back-Channel Logout 1.0 §2.6),
        with the algorithms the OP announces for ID tokens; UpstreamRejected otherwise."""
        metadata = await self.metadata()
        return await self._logout_verifier.verify(raw, algorithms=metadata.id_token_algorithms)

    async def logout_url(self, id_token_hint: str | None, post_logout_redirect_uri: str | None) -> str | None:
        """The OP's RP-initiated logout URL (OIDC RP-Initiated Logout 1.0 §2), or None if it has none."""
        metadata = await self.metadata()
        if metadata.end_session_endpoint is None:
            return None
        query: dict[str, str] = {"client_id": self.config.client_id}
        if id_token_hint:
            query["id_token_hint"] = id_token_hint
        if post_logout_redirect_uri:
            query["post_logout_redirect_uri"] = post_logout_redirect_uri
        separator = "&" if "?" in metadata.end_session_endpoint else "?"
        return f"{metadata.end_session_endpoint}{separator}{urlencode(query)}"

    # -- discovery ---------------------------------------------------------------------------
    async def metadata(self) -> ProviderMetadata:
        """The OP's discovery document, cached for an hour; a stale copy serves while the OP is down."""
        current = self._metadata
        if current is not None and self._clock() - self._metadata_at < DISCOVERY_MAX_AGE:
            return current
        url = discovery_url(self.issuer)
        try:
            # One deadline covers the wait for a fetch already under way and this one.
            async with deadline(self.config.http_timeout, f"discovery document {url}"), self._metadata_lock:
                if self._metadata is not None and self._clock() - self._metadata_at < DISCOVERY_MAX_AGE:
                    return self._metadata
                document = await self._get_json(url, what="discovery document")
                self._metadata = parse_metadata(document, self.issuer)
                self._metadata_at = self._clock()
                return self._metadata
        except UpstreamUnavailable:
            if self._metadata is None:
                raise
            return self._metadata

    async def _fetch_jwks(self) -> object:
        metadata = await self.metadata()
        return await self._get_json(metadata.jwks_uri, what="JWKS")

    # -- HTTP --------------------------------------------------------------------------------
    def _client(self) -> AsyncOAuth2Client:
        # Created on first use, inside the event loop that serves requests.
        if self._oauth is None:
            context = tls_context(self.config.ca_file)
            secret = self.config.client_secret
            self._oauth = AsyncOAuth2Client(
                client_id=self.config.client_id,
                client_secret=secret.get_secret_value() if secret else None,
                code_challenge_method="S256",
                timeout=self.config.http_timeout,
                verify=context,
                follow_redirects=False,
                headers={"User-Agent": "mcp-broker"},
            )
        return self._oauth

    async def _get_json(self, url: str, *, what: str, bearer: str | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        try:
            async with deadline(self.config.http_timeout, f"{what} {url}"):
                response = await self._client().request("GET", url, headers=headers, withhold_token=True)
        except httpx2.HTTPError as exc:
            raise UpstreamUnavailable(f"{what} {url} unreachable: {describe(exc)}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise UpstreamUnavailable(f"{what}: HTTP {response.status_code} from {url}")
        if response.status_code != 200:
            raise UpstreamRejected(f"{what}: HTTP {response.status_code} from {url}")
        if response.headers.get("content-type", "").split(";")[0].strip().lower() == "application/jwt":
            raise UpstreamRejected(f"{what}: signed (application/jwt) responses are not supported")
        try:
            return response.json()
        except ValueError:
            raise UpstreamRejected(f"{what}: the answer from {url} is not JSON") from None

    async def _token_request(self, metadata: ProviderMetadata, grant_type: str, **params: str) -> dict[str, Any]:
        """A token endpoint call; OAuth errors come back as ``OAuthError`` for the caller to judge."""
        oauth = self._client()
        auth = oauth.client_auth(metadata.client_auth_method(self.config.client_secret is not None))
        try:
            async with deadline(self.config.http_timeout, f"token endpoint {metadata.token_endpoint}"):
                if grant_type == "refresh_token":
                    token = await oauth.refresh_token(metadata.token_endpoint, auth=auth, **params)
                else:
                    token = await oauth.fetch_token(metadata.token_endpoint, grant_type=grant_type, auth=auth, **params)
        except OAuthError:
            raise
        except httpx2.HTTPStatusError as exc:
            status = exc.response.status_code
            if status >= 500 or status == 429:
                raise UpstreamUnavailable(f"token endpoint {metadata.token_endpoint}: HTTP {status}") from None
            raise UpstreamRejected(f"token endpoint: HTTP {status} without an OAuth error") from None
        except httpx2.HTTPError as exc:
            raise UpstreamUnavailable(
                f"token endpoint {metadata.token_endpoint} unreachable: {describe(exc)}"
            ) from None
        except ValueError:
            raise UpstreamRejected("token endpoint: the answer is not a JSON object") from None
        finally:
            oauth.token = None  # authlib keeps the last response on the client; nothing here needs it
        return dict(token)

    # -- claims to identity ------------------------------------------------------------------
    async def _identity(
        self,
        metadata: ProviderMetadata,
        claims: Mapping[str, Any],
        token: Mapping[str, Any],
        private: dict[str, Any],
        userinfo: Mapping[str, Any] | None = None,
    ) -> Identity:
        source: Mapping[str, Any] = claims
        if self.config.groups_from_userinfo:
            if userinfo is None:
                userinfo = await self._userinfo(metadata, token, str(claims["sub"]))
            source = userinfo
            claims = {**userinfo, **claims}  # the ID token wins; userinfo fills what it lacks
        sub = str(claims["sub"])
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        verified_email = email if claims.get("email_verified") is True else None
        claimed = _string(lookup(claims, self.config.username_claim))
        username = claimed or verified_email or sub
        groups = _groups(lookup(source, self.config.groups_claim), self.config.groups_claim)
        return Identity(
            provider_id=self.id,
            subject=qualified_subject(self.id, sub),
            username=username,
            email=email if claims.get("email_verified") is not False else None,
            display_name=_string(claims.get("name")),
            groups=frozenset(groups),
            private=private,
            username_is_unique=self.config.unique_usernames if claimed else username == sub,
            upstream_session=_string(claims.get("sid")),  # for back-channel logout by sid
        )

    async def _userinfo(self, metadata: ProviderMetadata, token: Mapping[str, Any], sub: str) -> dict[str, Any]:
        if metadata.userinfo_endpoint is None:
            raise UpstreamRejected("groups_from_userinfo is set but the OP has no userinfo_endpoint")
        access_token = token.get("access_token")
        token_type = token.get("token_type")
        if not isinstance(access_token, str) or (token_type is not None and str(token_type).lower() != "bearer"):
            raise UpstreamRejected("the token response has no bearer access token for userinfo")
        userinfo = await self._get_json(metadata.userinfo_endpoint, what="userinfo", bearer=access_token)
        if not isinstance(userinfo, dict):
            raise UpstreamRejected("userinfo is not a JSON object")
        if userinfo.get("sub") != sub:  # OIDC Core §5.3.2: MUST match the ID token
            raise UpstreamRejected("userinfo sub differs from the ID token's")
        return userinfo


class RefreshingOidcProvider(OidcProvider, RefreshProvider, DelegatedAccess):
    """``RedirectProvider``, ``RefreshProvider`` and ``DelegatedAccess``: each broker refresh
    refreshes upstream too, and the kept refresh token gets tokens for other APIs."""

    refresh_spends_upstream_token = True  # the broker serialises re-checks of one grant
    delegated_spends_upstream_token = True  # ... and delegated calls with them

    async def delegated_token(
        self,
        state: Mapping[str, Any],
        scopes: Sequence[str],
        *,
        audience: str | None = None,
        on_behalf_of: bool = False,
    ) -> UpstreamToken:
        refresh_token = state.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            raise InteractionNeeded("no upstream refresh token kept for this grant", scopes)
        metadata = await self.metadata()
        exchange = TOKEN_EXCHANGE in metadata.grant_types
        params: dict[str, str] = {"refresh_token": refresh_token}
        if not exchange:
            params["scope"] = " ".join(scopes)
            if audience:
                params["resource"] = audience
        try:
            token = await self._token_request(metadata, "refresh_token", **params)
        except OAuthError as exc:
            if exc.error == "invalid_grant":
                raise InteractionNeeded(
                    f"the OP refused the refresh token for {' '.join(scopes)} (invalid_grant)", scopes
                ) from None
            raise UpstreamRejected(
                f"upstream refresh for {' '.join(scopes)} failed: {str(exc.error)[:_TEXT]}: "
                f"{str(exc.description or '')[:_TEXT]}"
            ) from None
        rotated = token.get("refresh_token")
        new_state = (
            {**state, "refresh_token": rotated}
            if isinstance(rotated, str) and rotated and rotated != refresh_token
            else None
        )
        if exchange:
            subject = token.get("access_token")
            if not isinstance(subject, str):
                raise UpstreamRejected("the refresh answer has no access token to exchange")
            extra = {"audience": audience} if audience else {}
            try:
                token = await self._token_request(
                    metadata,
                    TOKEN_EXCHANGE,
                    subject_token=subject,
                    subject_token_type=ACCESS_TOKEN_TYPE,
                    requested_token_type=ACCESS_TOKEN_TYPE,
                    scope=" ".join(scopes),
                    **extra,
                )
            except OAuthError as exc:
                raise UpstreamRejected(f"upstream token exchange failed: {str(exc.error)[:_TEXT]}") from None
        access_token = token.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise UpstreamRejected("the upstream answer has no access token")
        granted = token.get("scope")
        expires_in = token.get("expires_in")
        return UpstreamToken(
            access_token=access_token,
            expires_in=int(expires_in) if isinstance(expires_in, int | float) else 300,
            scopes=frozenset(granted.split() if isinstance(granted, str) and granted else scopes),
            state=new_state,
        )

    async def refresh(self, identity: Identity) -> Identity:
        refresh_token = identity.private.get("refresh_token")
        sub = identity.private.get("sub")
        if not isinstance(refresh_token, str) or not isinstance(sub, str):
            # Private data is kept only when the broker can encrypt it (signing.key_encryption_key).
            raise InvalidCredentials("no upstream refresh token stored for this grant; the user must sign in again")
        metadata = await self.metadata()
        try:
            token = await self._token_request(metadata, "refresh_token", refresh_token=refresh_token)
        except OAuthError as exc:
            if exc.error == "invalid_grant":
                raise InvalidCredentials(
                    f"the OP refused the refresh token of {identity.username!r} (invalid_grant)"
                ) from None
            raise UpstreamRejected(f"upstream refresh failed: {str(exc.error)[:_TEXT]}") from None
        raw = token.get("id_token")
        userinfo: dict[str, Any] | None = None
        if isinstance(raw, str):
            access_token = token.get("access_token")
            claims = await self._verifier.verify(
                raw,
                algorithms=metadata.id_token_algorithms,
                nonce=None,  # §12.2: a refreshed ID token carries the login's nonce, if any
                access_token=access_token if isinstance(access_token, str) else None,
            )
            if claims["sub"] != sub:  # §12.2: MUST be the same subject
                raise InvalidCredentials(f"the OP now names another subject for {identity.username!r}")
        else:  # §12.2: the OP may answer a refresh without a new ID token; userinfo then
            claims = userinfo = await self._userinfo(metadata, token, sub)
        rotated = token.get("refresh_token")
        private = {
            "sub": sub,
            "id_token": raw if isinstance(raw, str) else identity.private.get("id_token"),
            "refresh_token": rotated if isinstance(rotated, str) and rotated else refresh_token,
        }
        return await self._identity(metadata, claims, token, private, userinfo)


def lookup(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, else by dotted path into nested objects (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _groups(value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, str | int) and not isinstance(v, bool) and str(v)]
    raise UpstreamRejected(f"the groups claim {path!r} is a {type(value).__name__}, not a list of strings")


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _same(presented: object, expected: object) -> bool:
    return isinstance(presented, str) and isinstance(expected, str) and hmac.compare_digest(presented, expected)
