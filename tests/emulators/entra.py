"""A Microsoft Entra ID emulator for tests: two tenants' v2.0 endpoints and the Microsoft Graph
calls the broker makes, over HTTPS on 127.0.0.1 with a throwaway CA (MSAL only accepts https
authorities). Typical use::

    entra = EntraEmulator()
    with entra.serve(tmp_path) as base:   # https://127.0.0.1:<port>
        entra.allow_redirect(callback_url)
        entra.next_user = "alice"          # who "signs in" at the next authorize request
        ...

Served, per tenant path segment (a tenant id, or ``organizations`` for multi-tenant apps):

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and ``/{tenant}/discovery/v2.0/keys``
  (RS256 keys with ``x5c``, like Entra's).
* ``GET /{tenant}/oauth2/v2.0/authorize``: checks client_id, the exact redirect_uri,
  response_type=code, a PKCE S256 challenge and the openid scope, then "signs in" the user named
  by ``login_hint`` or ``next_user`` without any page and 302s to the redirect URI with
  ``code``, ``state`` and ``session_state``. Errors Entra shows on its own page (unknown app,
  redirect URI mismatch, disabled user, user of another tenant) are a 400 page here too.
* ``POST /{tenant}/oauth2/v2.0/token``: ``authorization_code`` (single use, ten-minute codes,
  PKCE verifier, redirect_uri, client secret in the body or Basic, or a certificate
  ``client_assertion``) and ``client_credentials`` (``{graph}/.default``, app-only Graph token).
  Errors carry AADSTS codes in ``error_description`` like Entra's.
* ``POST .../token`` for delegated access (issue 14), with v2.0 semantics: ``refresh_token``
  (a refresh token from a code redeemed with ``offline_access``; the requested ``scope`` names
  one resource, for which it gives an access token and a new refresh token, the old one staying
  valid as Entra's do) and on-behalf-of (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``,
  ``requested_token_use=on_behalf_of``, ``assertion`` = a user's access token whose audience is
  the calling app's exposed API, ``api://<client id>``). A delegated permission the user has not
  consented to (at an interactive sign-in that asked for it) and the tenant's admin has not
  (``App.admin_consent``) is ``invalid_grant`` with ``suberror: consent_required`` (AADSTS65001);
  a user in ``require_interaction`` (conditional access, MFA) gets ``interaction_required``
  (AADSTS50076); a disabled or removed user ``invalid_grant``.
* Graph v1.0: ``GET /me`` (the signed-in user, for a delegated Graph token with ``User.Read``),
  ``/me/transitiveMemberOf``, ``/users/{id}/transitiveMemberOf``, ``/users/{id}``,
  ``/groups/{id}``, with ``$select``, ``$top`` and ``@odata.nextLink`` paging (pages capped at
  ``page_size`` entries). With only ``User.Read`` group entries carry id and type only, as Graph
  returns "limited information" for objects the token may not read.

ID tokens have Entra's v2.0 claim shapes (``aud``, ``iss``, ``iat``, ``nbf``, ``exp``, ``nonce``,
``oid``, ``tid``, pairwise ``sub``, ``preferred_username``, ``name``, ``email``, ``ver``,
``groups`` as GUIDs including nested groups, ``roles``); past 200 groups the token carries the
overage marker (``_claim_names`` / ``_claim_sources``) instead of ``groups``. Access tokens are
opaque here (clients must not read them anyway).

Controls for tests: ``next_user``, ``deny_next`` (redirect back with ``error=access_denied``),
``fail_next_token`` (status and body of the next token answer), ``graph_status`` (every Graph
call answers it), ``expire_codes()``, ``next_id_token`` (``"bad-signature"``, ``"unknown-kid"``,
``"nonce"``, ``"audience"``, ``"expired"``), ``issue_as_tenant`` (the next ID token names another
tenant), ``id_token_version`` (``"1.0"`` for v1 claims and issuer), ``rotate_keys()``, ``stall``
(endpoint kind -> ``"hang"`` or ``"drip"``: ``{"token": "drip"}`` turns the token endpoint into a
tarpit; kinds are ``discovery``, ``jwks``, ``token`` and ``graph``), ``require_interaction``
(usernames), ``revoke_sessions(username)``, ``App.admin_consent``. ``calls``
records ``"METHOD /path"`` of every request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import functools
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from broker.devstack.process import free_port
from tests.http import running
from tests.tls import make_ca

TENANT = "8f3c2a1e-4b5d-4c6e-9f70-0a1b2c3d4e5f"  # contoso.example
OTHER_TENANT = "1d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5"  # fabrikam.example
CLIENT_ID = "0b7e1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4"
CLIENT_SECRET = "entra-emulator-secret~" + "s" * 20
READERS = "5f0c8d4e-1a2b-4c3d-8e4f-000000000001"
WRITERS = "5f0c8d4e-1a2b-4c3d-8e4f-000000000002"
ALL_STAFF = "5f0c8d4e-1a2b-4c3d-8e4f-000000000003"  # mcp-readers is a member of all-staff
FILLER_GROUPS = 260
OVERAGE_LIMIT = 200  # groups in a JWT ID token before Entra switches to the overage marker
CODE_LIFETIME = 600.0
TOKEN_LIFETIME = 3600
REFRESH_LIFETIME = 90 * 24 * 3600
GRAPH_MAX_TOP = 999
DIRECTORY_ROLE = "9a8b7c6d-0000-4000-8000-00000000d1d1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass
class User:
    username: str  # what tests say: "alice"
    oid: str
    tid: str
    name: str
    upn: str
    email: str | None
    groups: set[str]  # direct memberships (group ids)
    roles: list[str] = field(default_factory=list)
    enabled: bool = True
    directory_roles: set[str] = field(default_factory=set)


@dataclass
class App:
    client_id: str
    home_tenant: str
    secret: str | None
    redirect_uris: set[str] = field(default_factory=set)
    certificates: list[x509.Certificate] = field(default_factory=list)
    multi_tenant: bool = False
    consented_tenants: set[str] = field(default_factory=set)  # where app-only tokens may be issued
    application_permissions: list[str] = field(default_factory=lambda: ["User.Read.All", "GroupMember.Read.All"])
    # Delegated permissions an admin consented to for every user, per resource ("graph" or an
    # application ID URI such as api://<client id>); a user consents to others at sign-in.
    admin_consent: dict[str, set[str]] = field(default_factory=lambda: {"graph": {"User.Read", "GroupMember.Read.All"}})
    exposed_scopes: set[str] = field(default_factory=lambda: {"access_as_user"})  # under api://<client id>


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    scopes: list[str]
    nonce: str | None
    challenge: str
    user: User
    issued_at: float
    used: bool = False


@dataclass
class _AccessToken:
    kind: str  # "delegated" or "app"
    tid: str
    oid: str | None
    permissions: set[str]
    expires_at: float
    audience: str = "graph"  # "graph" or an application ID URI (api://<client id>)


@dataclass
class _RefreshToken:
    client_id: str
    user: User
    expires_at: float


@dataclass
class _Key:
    kid: str
    private: rsa.RSAPrivateKey
    certificate: x509.Certificate


def _new_key() -> _Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.emulator.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(private, hashes.SHA256())
    )
    kid = b64url(cert.fingerprint(hashes.SHA1()))  # noqa: S303 - Entra's kid/x5t is the SHA-1 thumbprint
    return _Key(kid, private, cert)


@functools.cache
def _initial_keys() -> tuple[_Key, _Key]:
    """The first signing key and the rogue key, shared by every emulator of a test process
    (RSA key generation is the slow part of starting one; ``rotate_keys`` makes fresh ones)."""
    return _new_key(), _new_key()


def _oauth_error(status: int, error: str, aadsts: str, message: str) -> JSONResponse:
    trace = str(uuid.uuid4())
    return JSONResponse(
        {
            "error": error,
            "error_description": f"{aadsts}: {message}\r\nTrace ID: {trace}\r\nCorrelation ID: {uuid.uuid4()}\r\n"
            f"Timestamp: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%SZ}",
            "error_codes": [int(aadsts.removeprefix("AADSTS"))],
            "timestamp": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%SZ}",
            "trace_id": trace,
            "correlation_id": str(uuid.uuid4()),
        },
        status_code=status,
    )


def _graph_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "innerError": {"request-id": str(uuid.uuid4())}}},
        status_code=status,
    )


def _endpoint_kind(path: str) -> str:
    if path.endswith("/.well-known/openid-configuration"):
        return "discovery"
    if path.endswith("/discovery/v2.0/keys"):
        return "jwks"
    if path.endswith("/oauth2/v2.0/token"):
        return "token"
    return "graph" if path.startswith("/v1.0/") else "other"


async def _stall(mode: str, receive: Receive, send: Send, limit: float = 60) -> None:
    """A tarpit: ``hang`` answers nothing; ``drip`` sends the headers, then one byte of body every
    half second. Either way until the client goes away (or ``limit`` seconds)."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.ensure_future(watch())
    try:
        if mode == "drip":
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for _ in range(int(limit * 2)):
                if gone.is_set():
                    break
                await send({"type": "http.response.body", "body": b" ", "more_body": True})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), 0.5)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), limit)
    finally:
        watcher.cancel()


def _page(title: str, message: str, status: int = 400) -> PlainTextResponse:
    return PlainTextResponse(f"{title}\n{message}", status_code=status)


class EntraEmulator:
    """State of the emulated tenants, apps, users and groups, and the controls tests use."""

    def __init__(self) -> None:
        self.base = ""
        self.ca_file: Path | None = None
        self.tenant_names = {TENANT: "contoso.example", OTHER_TENANT: "fabrikam.example"}
        self.groups: dict[str, str] = {READERS: "mcp-readers", WRITERS: "mcp-writers", ALL_STAFF: "all-staff"}
        self.group_parents: dict[str, set[str]] = {READERS: {ALL_STAFF}}
        filler = [str(uuid.UUID(int=0x7E57_0000_0000_4000_8000_000000000000 + i)) for i in range(FILLER_GROUPS)]
        self.groups.update({gid: f"team-{i:03d}" for i, gid in enumerate(filler)})
        self.users: dict[str, User] = {}
        self.add_user("alice", groups={READERS, WRITERS}, roles=["Notes.Admin"], directory_roles={DIRECTORY_ROLE})
        self.add_user("bob", groups={READERS})
        self.add_user("carol", groups={READERS, *filler[:250]})  # overage: more than 200 groups
        self.add_user("dave", groups={READERS, WRITERS}, enabled=False)
        self.add_user("erin", tenant=OTHER_TENANT, groups={WRITERS})
        self.apps: dict[str, App] = {
            CLIENT_ID: App(CLIENT_ID, TENANT, CLIENT_SECRET, consented_tenants={TENANT, OTHER_TENANT})
        }
        self.keys = [_initial_keys()[0]]
        self.rogue_key = _initial_keys()[1]  # signs "bad-signature" and "unknown-kid" ID tokens
        # controls
        self.next_user: str | None = None
        self.deny_next = False
        self.fail_next_token: tuple[int, dict[str, Any]] | None = None
        self.graph_status: int | None = None
        self.code_lifetime = CODE_LIFETIME
        self.next_id_token: str | None = None
        self.issue_as_tenant: str | None = None
        self.id_token_version = "2.0"
        self.page_size = 100
        self.stall: dict[str, str] = {}
        self.require_interaction: set[str] = set()  # usernames conditional access sends back to sign in
        # records
        self.calls: list[str] = []
        self.issued: list[tuple[str, str, str]] = []  # (grant, username, scope) of delegated tokens
        self._codes: dict[str, _Code] = {}
        self._tokens: dict[str, _AccessToken] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self.user_consent: dict[tuple[str, str], dict[str, set[str]]] = {}  # (client, oid) -> resource -> perms

    # -- directory management ---------------------------------------------------------------
    def add_user(
        self,
        username: str,
        *,
        tenant: str = TENANT,
        groups: set[str] | None = None,
        roles: list[str] | None = None,
        enabled: bool = True,
        directory_roles: set[str] | None = None,
    ) -> User:
        domain = self.tenant_names[tenant]
        user = User(
            username=username,
            oid=str(uuid.uuid4()),
            tid=tenant,
            name=username.capitalize() + " Example",
            upn=f"{username}@{domain}",
            email=f"{username}@{domain}",
            groups=set(groups or ()),
            roles=list(roles or ()),
            enabled=enabled,
            directory_roles=set(directory_roles or ()),
        )
        self.users[username] = user
        return user

    def user(self, username: str) -> User:
        return self.users[username]

    def remove_user(self, username: str) -> None:
        del self.users[username]

    def transitive_groups(self, user: User) -> list[str]:
        seen: list[str] = []
        stack = sorted(user.groups)
        while stack:
            gid = stack.pop(0)
            if gid in seen or gid not in self.groups:
                continue
            seen.append(gid)
            stack.extend(sorted(self.group_parents.get(gid, ())))
        return seen

    @property
    def app(self) -> App:
        return self.apps[CLIENT_ID]

    def allow_redirect(self, uri: str, client_id: str = CLIENT_ID) -> None:
        self.apps[client_id].redirect_uris.add(uri)

    def issuer(self, tid: str) -> str:
        return f"{self.base}/{tid}/v2.0"

    # -- controls ---------------------------------------------------------------------------
    def expire_codes(self) -> None:
        """Make every outstanding authorization code older than its lifetime."""
        for code in self._codes.values():
            code.issued_at -= self.code_lifetime + 1

    def revoke_sessions(self, username: str) -> None:
        """Revoke the user's refresh tokens (the admin center's "Revoke sessions"): each then
        answers invalid_grant (AADSTS700082), and only a new interactive sign-in helps."""
        for token, record in list(self._refresh_tokens.items()):
            if record.user.username == username:
                del self._refresh_tokens[token]

    def rotate_keys(self) -> None:
        """Publish a new signing key and sign with it from now on (the old one stays published)."""
        self.keys.insert(0, _new_key())

    # -- serving ----------------------------------------------------------------------------
    @contextmanager
    def serve(self, directory: Path) -> Iterator[str]:
        ca = make_ca(directory / "entra-ca")
        cert, key = ca.issue(directory / "entra-ca", hosts=["127.0.0.1"], name="entra")
        self.ca_file = ca.cert_path
        port = free_port()
        self.base = f"https://127.0.0.1:{port}"
        with running(self.asgi(), port, ssl_certfile=cert, ssl_keyfile=key) as base:
            assert base == self.base
            yield base

    def asgi(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        routes = [
            Route("/common/discovery/instance", self._instance_discovery),
            Route("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery),
            Route("/{tenant}/discovery/v2.0/keys", self._jwks),
            Route("/{tenant}/oauth2/v2.0/authorize", self._authorize),
            Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
            Route("/v1.0/me", self._graph_me),
            Route("/v1.0/me/transitiveMemberOf", self._graph_me_members),
            Route("/v1.0/users/{user}/transitiveMemberOf", self._graph_user_members),
            Route("/v1.0/users/{user}", self._graph_user),
            Route("/v1.0/groups/{group}", self._graph_group),
        ]
        inner = Starlette(routes=routes)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                self.calls.append(f"{scope['method']} {scope['path']}")
                mode = self.stall.get(_endpoint_kind(scope["path"]))
                if mode is not None:
                    await _stall(mode, receive, send)
                    return
            await inner(scope, receive, send)

        return app

    # -- tenant endpoints -------------------------------------------------------------------
    def _tenant(self, segment: str) -> str | None:
        """The tenant id a path segment names, "organizations", or None when unknown."""
        if segment in ("organizations", "common"):
            return "organizations"
        segment = segment.lower()
        if segment in self.tenant_names:
            return segment
        for tid, domain in self.tenant_names.items():
            if segment in (domain, domain.split(".")[0] + ".onmicrosoft.com"):
                return tid
        return None

    async def _instance_discovery(self, request: Request) -> Response:
        return JSONResponse(
            {"error": "invalid_instance", "error_description": "AADSTS50049: Unknown or invalid instance."}, 400
        )

    async def _discovery(self, request: Request) -> Response:
        segment = request.path_params["tenant"]
        tid = self._tenant(segment)
        if tid is None:
            return _oauth_error(400, "invalid_tenant", "AADSTS90002", f"Tenant '{segment}' not found.")
        issuer = self.issuer("{tenantid}" if tid == "organizations" else tid)
        root = f"{self.base}/{segment}"
        return JSONResponse(
            {
                "token_endpoint": f"{root}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{root}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": issuer,
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{self.base}/oidc/userinfo",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "oid", "tid", "preferred_username"],
                "kerberos_endpoint": f"{root}/kerberos",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "emulator.test",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": urlsplit(self.base).netloc,
                "rbac_url": "https://pas.windows.net",
            }
        )

    async def _jwks(self, request: Request) -> Response:
        tid = self._tenant(request.path_params["tenant"])
        if tid is None:
            return _oauth_error(400, "invalid_tenant", "AADSTS90002", "Tenant not found.")
        issuer = self.issuer("{tenantid}" if tid == "organizations" else tid)
        keys = []
        for key in self.keys:
            numbers = key.private.public_key().public_numbers()
            keys.append(
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": key.kid,
                    "x5t": key.kid,
                    "n": _b64url_uint(numbers.n),
                    "e": _b64url_uint(numbers.e),
                    "x5c": [base64.b64encode(key.certificate.public_bytes(serialization.Encoding.DER)).decode()],
                    "cloud_instance_name": "emulator.test",
                    "issuer": issuer,
                }
            )
        return JSONResponse({"keys": keys})

    async def _authorize(self, request: Request) -> Response:
        q = request.query_params
        tid = self._tenant(request.path_params["tenant"])
        if tid is None:
            return _page("AADSTS90002", "Tenant not found.")
        app = self.apps.get(q.get("client_id", ""))
        if app is None:
            return _page("AADSTS700016", f"Application with identifier '{q.get('client_id')}' was not found.")
        redirect_uri = q.get("redirect_uri", "")
        if redirect_uri not in app.redirect_uris:
            return _page("AADSTS50011", "The redirect URI specified in the request does not match the app's.")
        if tid == "organizations" and not app.multi_tenant:
            return _page("AADSTS50194", "Application is not configured as a multi-tenant application.")

        def back(**params: str | None) -> Response:
            sep = "&" if "?" in redirect_uri else "?"
            query = urlencode({k: v for k, v in params.items() if v is not None})
            return RedirectResponse(f"{redirect_uri}{sep}{query}", status_code=302)

        state = q.get("state")
        if q.get("response_type") != "code":
            return back(error="unsupported_response_type", error_description="AADSTS700054", state=state)
        scopes = q.get("scope", "").split()
        if "openid" not in scopes:
            return back(error="invalid_request", error_description="AADSTS900144: scope openid missing", state=state)
        challenge = q.get("code_challenge", "")
        if q.get("code_challenge_method") != "S256" or not 43 <= len(challenge) <= 128:
            return back(
                error="invalid_request",
                error_description="AADSTS9002325: Proof Key for Code Exchange (S256) is required.",
                state=state,
            )
        if self.deny_next:
            self.deny_next = False
            return back(
                error="access_denied",
                error_description="AADSTS65004: User declined to consent to access the app.",
                state=state,
            )
        hint = q.get("login_hint") or self.next_user
        user = next((u for u in self.users.values() if hint in (u.username, u.upn)), None) if hint else None
        if user is None:
            return _page("AADSTS50034", f"The user account {hint!r} does not exist in the directory.")
        if tid != "organizations" and user.tid != tid:
            return _page("AADSTS50020", f"User account {user.upn} does not exist in tenant {tid}.")
        if user.tid != app.home_tenant and not app.multi_tenant:
            return _page("AADSTS50020", f"User account {user.upn} does not exist in the app's tenant.")
        if not user.enabled:
            return _page("AADSTS50057", "The user account is disabled.")
        code = "1.A" + secrets.token_urlsafe(96)
        self._codes[code] = _Code(app.client_id, redirect_uri, scopes, q.get("nonce"), challenge, user, time.time())
        return back(code=code, state=state, session_state=str(uuid.uuid4()))

    def _client(self, form: dict[str, str], request: Request, token_endpoint: str) -> App | JSONResponse:
        """Authenticate the client (secret in body or Basic, or a certificate assertion)."""
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        app = self.apps.get(client_id)
        if app is None:
            return _oauth_error(400, "unauthorized_client", "AADSTS700016", f"Application '{client_id}' not found.")
        assertion = form.get("client_assertion")
        if assertion is not None:
            if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                return _oauth_error(400, "invalid_client", "AADSTS50027", "Invalid client_assertion_type.")
            return (
                app
                if self._assertion_ok(app, assertion, token_endpoint)
                else _oauth_error(
                    401, "invalid_client", "AADSTS700027", "Client assertion failed signature validation."
                )
            )
        if secret is None:
            return _oauth_error(
                401,
                "invalid_client",
                "AADSTS7000218",
                "The request body must contain client_secret or client_assertion.",
            )
        if app.secret is None or not hmac.compare_digest(secret, app.secret):
            return _oauth_error(401, "invalid_client", "AADSTS7000215", "Invalid client secret provided.")
        return app

    @staticmethod
    def _assertion_ok(app: App, assertion: str, token_endpoint: str) -> bool:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return False
        for cert in app.certificates:
            thumbprints = {
                ("x5t#S256", b64url(cert.fingerprint(hashes.SHA256()))),
                ("x5t", b64url(cert.fingerprint(hashes.SHA1()))),  # noqa: S303 - legacy x5t
            }
            if not any(str(header.get(name, "")).rstrip("=") == value for name, value in thumbprints):
                continue
            try:
                claims = jwt.decode(
                    assertion,
                    cert.public_key(),  # type: ignore[arg-type]
                    algorithms=["PS256", "RS256"],
                    audience=token_endpoint,
                    options={"require": ["exp", "iss", "sub", "aud"]},
                )
            except jwt.PyJWTError:
                return False
            return bool(claims["iss"] == claims["sub"] == app.client_id)
        return False

    async def _token(self, request: Request) -> Response:
        segment = request.path_params["tenant"]
        tid = self._tenant(segment)
        if tid is None:
            return _oauth_error(400, "invalid_request", "AADSTS90002", f"Tenant '{segment}' not found.")
        form = {k: str(v) for k, v in (await request.form()).items()}
        if self.fail_next_token is not None:
            status, body = self.fail_next_token
            self.fail_next_token = None
            return JSONResponse(body, status_code=status)
        client = self._client(form, request, f"{self.base}/{segment}/oauth2/v2.0/token")
        if isinstance(client, JSONResponse):
            return client
        grant = form.get("grant_type")
        if grant == "authorization_code":
            return self._redeem(client, form)
        if grant == "client_credentials":
            return self._client_credentials(client, tid, form)
        if grant == "refresh_token":
            return self._refresh(client, form)
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer" and form.get("requested_token_use") == "on_behalf_of":
            return self._on_behalf_of(client, form)
        return _oauth_error(400, "unsupported_grant_type", "AADSTS70003", f"grant_type {grant!r} not supported.")

    def _redeem(self, app: App, form: dict[str, str]) -> Response:
        code = self._codes.get(form.get("code", ""))
        if code is None:
            return _oauth_error(400, "invalid_grant", "AADSTS9002313", "Invalid request. Malformed or invalid code.")
        if code.used:
            return _oauth_error(400, "invalid_grant", "AADSTS54005", "OAuth2 Authorization code was already redeemed.")
        code.used = True
        if time.time() - code.issued_at > self.code_lifetime:
            return _oauth_error(400, "invalid_grant", "AADSTS70008", "The provided authorization code has expired.")
        if code.client_id != app.client_id:
            return _oauth_error(400, "invalid_grant", "AADSTS70002", "The code was issued to another client.")
        if form.get("redirect_uri") != code.redirect_uri:
            return _oauth_error(400, "invalid_grant", "AADSTS500112", "The reply URL does not match the request's.")
        verifier = form.get("code_verifier", "")
        if not hmac.compare_digest(b64url(hashlib.sha256(verifier.encode()).digest()), code.challenge):
            return _oauth_error(
                400,
                "invalid_grant",
                "AADSTS501481",
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            )
        user = code.user
        resource_scopes = [s for s in code.scopes if s.startswith(self.base + "/")]
        permissions = {s.removeprefix(self.base + "/") for s in resource_scopes}
        consented = self.user_consent.setdefault((app.client_id, user.oid), {})
        consented.setdefault("graph", set()).update(permissions)  # the user consented at sign-in
        access = secrets.token_urlsafe(48)
        self._tokens[access] = _AccessToken("delegated", user.tid, user.oid, permissions, time.time() + TOKEN_LIFETIME)
        client_info = b64url(json.dumps({"uid": user.oid, "utid": user.tid}).encode())
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(resource_scopes + [s for s in code.scopes if s in ("openid", "profile", "email")]),
            "expires_in": TOKEN_LIFETIME,
            "ext_expires_in": TOKEN_LIFETIME,
            "access_token": access,
            "id_token": self._id_token(app, user, code.nonce),
            "client_info": client_info,
        }
        if "offline_access" in code.scopes:
            body["refresh_token"] = self._new_refresh(app, user)
        return JSONResponse(body)

    # -- delegated access: refresh tokens and on-behalf-of ----------------------------------
    def _new_refresh(self, app: App, user: User) -> str:
        token = "0.A" + secrets.token_urlsafe(64)
        self._refresh_tokens[token] = _RefreshToken(app.client_id, user, time.time() + REFRESH_LIFETIME)
        return token

    def _resource_of(self, scope: str) -> tuple[str, str] | None:
        """(resource, permission) of a delegated scope: Graph's or an app's exposed API."""
        if scope.startswith(self.base + "/"):
            return "graph", scope.removeprefix(self.base + "/")
        if scope.startswith("api://") and "/" in scope.removeprefix("api://"):
            resource, _, permission = scope.rpartition("/")
            return resource, permission
        return None

    def _delegated(self, app: App, user: User, form: dict[str, str], what: str) -> Response:
        """A delegated access token (and refresh token) for the one resource ``scope`` names."""
        if not user.enabled:
            return _oauth_error(400, "invalid_grant", "AADSTS50057", "The user account is disabled.")
        if user.username in self.require_interaction:
            return _oauth_error(
                400,
                "interaction_required",
                "AADSTS50076",
                "Due to a configuration change made by your administrator, or because you moved to a new "
                "location, you must use multi-factor authentication to access the resource.",
            )
        scopes = form.get("scope", "").split()
        parsed = [self._resource_of(s) for s in scopes if s not in ("openid", "profile", "email", "offline_access")]
        if not parsed or any(p is None for p in parsed) or len({p[0] for p in parsed if p}) != 1:
            return _oauth_error(
                400, "invalid_scope", "AADSTS28000", "The scope must name exactly one resource's delegated permissions."
            )
        resource = parsed[0][0] if parsed[0] else ""
        wanted = {p[1] for p in parsed if p}
        if resource != "graph":
            owner = next((a for a in self.apps.values() if resource == f"api://{a.client_id}"), None)
            if owner is None:
                return _oauth_error(400, "invalid_resource", "AADSTS500011", f"The resource {resource} was not found.")
            unknown = wanted - owner.exposed_scopes - {".default"}
            if unknown:
                return _oauth_error(400, "invalid_scope", "AADSTS70011", f"Scopes {sorted(unknown)} are not exposed.")
        consented = app.admin_consent.get(resource, set()) | self.user_consent.get((app.client_id, user.oid), {}).get(
            resource, set()
        )
        granted = set(consented) if wanted == {".default"} else wanted
        if not granted or not granted <= consented:
            refused = _oauth_error(
                400,
                "invalid_grant",
                "AADSTS65001",
                f"The user or administrator has not consented to use the application with ID '{app.client_id}'. "
                "Send an interactive authorization request for this user and resource.",
            )
            payload = json.loads(bytes(refused.body))
            payload["suberror"] = "consent_required"
            return JSONResponse(payload, status_code=400)
        access = secrets.token_urlsafe(48)
        self._tokens[access] = _AccessToken(
            "delegated", user.tid, user.oid, granted, time.time() + TOKEN_LIFETIME, audience=resource
        )
        prefix = f"{self.base}/" if resource == "graph" else f"{resource}/"
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(prefix + p for p in sorted(granted)),
            "expires_in": TOKEN_LIFETIME,
            "ext_expires_in": TOKEN_LIFETIME,
            "access_token": access,
            "client_info": b64url(json.dumps({"uid": user.oid, "utid": user.tid}).encode()),
        }
        if "openid" in scopes:
            body["id_token"] = self._id_token(app, user, None)
        if "offline_access" in scopes:
            body["refresh_token"] = self._new_refresh(app, user)
        self.issued.append((what, user.username, body["scope"]))
        return JSONResponse(body)

    def _refresh(self, app: App, form: dict[str, str]) -> Response:
        record = self._refresh_tokens.get(form.get("refresh_token", ""))
        if record is None or record.expires_at < time.time():
            return _oauth_error(
                400, "invalid_grant", "AADSTS700082", "The refresh token has expired or is invalid. Sign in again."
            )
        if record.client_id != app.client_id:
            return _oauth_error(400, "invalid_grant", "AADSTS700003", "The refresh token was issued to another client.")
        user = self.users.get(record.user.username)
        if user is None or user.oid != record.user.oid:
            return _oauth_error(400, "invalid_grant", "AADSTS50173", "The user no longer exists; sign in again.")
        return self._delegated(app, user, form, "refresh_token")

    def _on_behalf_of(self, app: App, form: dict[str, str]) -> Response:
        assertion = self._tokens.get(form.get("assertion", ""))
        if assertion is None or assertion.kind != "delegated" or assertion.expires_at < time.time():
            return _oauth_error(400, "invalid_grant", "AADSTS50013", "Assertion is not valid or has expired.")
        if assertion.audience != f"api://{app.client_id}":
            return _oauth_error(
                400, "invalid_grant", "AADSTS50013", "Assertion audience does not match the client app presenting it."
            )
        user = next((u for u in self.users.values() if u.oid == assertion.oid), None)
        if user is None:
            return _oauth_error(400, "invalid_grant", "AADSTS50173", "The user no longer exists.")
        return self._delegated(app, user, form, "on_behalf_of")

    def _client_credentials(self, app: App, tid: str, form: dict[str, str]) -> Response:
        if tid == "organizations":
            return _oauth_error(
                400, "invalid_request", "AADSTS90009", "Use a tenant-specific endpoint for client credentials."
            )
        if tid not in app.consented_tenants:
            return _oauth_error(400, "invalid_client", "AADSTS700016", f"Application not found in the directory {tid}.")
        scope = form.get("scope", "")
        if scope != f"{self.base}/.default":
            return _oauth_error(
                400, "invalid_scope", "AADSTS1002012", f"The provided value for scope {scope} is not valid."
            )
        access = secrets.token_urlsafe(48)
        permissions = set(app.application_permissions)
        self._tokens[access] = _AccessToken("app", tid, None, permissions, time.time() + TOKEN_LIFETIME)
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME,
                "ext_expires_in": TOKEN_LIFETIME,
                "access_token": access,
            }
        )

    def _id_token(self, app: App, user: User, nonce: str | None) -> str:
        now = int(time.time())
        tid = self.issue_as_tenant or user.tid
        self.issue_as_tenant = None
        tamper, self.next_id_token = self.next_id_token, None
        claims: dict[str, Any] = {
            "aud": app.client_id,
            "iss": self.issuer(tid),
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME,
            "aio": secrets.token_urlsafe(40),
            "name": user.name,
            "oid": user.oid,
            "preferred_username": user.upn,
            "rh": "0.A" + secrets.token_urlsafe(30),
            "sid": str(uuid.uuid4()),
            "sub": b64url(hashlib.sha256(f"{user.oid}:{app.client_id}".encode()).digest()),
            "tid": tid,
            "uti": secrets.token_urlsafe(16),
            "ver": "2.0",
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if user.email:
            claims["email"] = user.email
        groups = self.transitive_groups(user)
        if len(groups) > OVERAGE_LIMIT:
            claims["_claim_names"] = {"groups": "src1"}
            claims["_claim_sources"] = {
                "src1": {"endpoint": f"https://graph.windows.net/{tid}/users/{user.oid}/getMemberObjects"}
            }
        else:
            claims["groups"] = groups
        if user.roles:
            claims["roles"] = list(user.roles)
        if self.id_token_version == "1.0":
            claims.update(iss=f"https://sts.windows.net/{tid}/", ver="1.0", upn=user.upn, unique_name=user.upn)
            del claims["preferred_username"]
        key, kid = self.keys[0].private, self.keys[0].kid
        if tamper == "bad-signature":
            key = self.rogue_key.private
        elif tamper == "unknown-kid":
            key, kid = self.rogue_key.private, self.rogue_key.kid
        elif tamper == "nonce":
            claims["nonce"] = hashlib.sha256(b"someone else's nonce").hexdigest()
        elif tamper == "audience":
            claims["aud"] = str(uuid.uuid4())
        elif tamper == "expired":
            claims.update(iat=now - 7200, nbf=now - 7200, exp=now - 3600)
        elif tamper is not None:
            raise ValueError(f"unknown ID token tampering {tamper!r}")
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "x5t": kid})

    # -- Microsoft Graph --------------------------------------------------------------------
    def _bearer(self, request: Request) -> _AccessToken | Response:
        if self.graph_status is not None:
            return _graph_error(self.graph_status, "generalException", "An error occurred (emulated outage).")
        header = request.headers.get("authorization", "")
        token = self._tokens.get(header[7:]) if header.lower().startswith("bearer ") else None
        if token is None or token.expires_at < time.time():
            return _graph_error(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
        if token.audience != "graph":
            return _graph_error(401, "InvalidAuthenticationToken", "Invalid audience.")
        return token

    def _find_user(self, token: _AccessToken, key: str) -> User | None:
        for user in self.users.values():
            if user.tid == token.tid and key.lower() in (user.oid, user.upn.lower()):
                return user
        return None

    async def _graph_me(self, request: Request) -> Response:
        token = self._bearer(request)
        if isinstance(token, Response):
            return token
        if token.kind != "delegated":
            return _graph_error(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
        if not token.permissions & {"User.Read", "User.ReadBasic.All", "User.Read.All", "Directory.Read.All"}:
            return _graph_error(
                403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )
        user = self._find_user(token, token.oid or "")
        if user is None:
            return _graph_error(404, "Request_ResourceNotFound", "The signed-in user no longer exists.")
        return JSONResponse(
            {
                "@odata.context": f"{self.base}/v1.0/$metadata#users/$entity",
                "id": user.oid,
                "displayName": user.name,
                "userPrincipalName": user.upn,
                "mail": user.email,
            }
        )

    async def _graph_me_members(self, request: Request) -> Response:
        token = self._bearer(request)
        if isinstance(token, Response):
            return token
        if token.kind != "delegated":
            return _graph_error(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
        user = self._find_user(token, token.oid or "")
        if user is None:
            return _graph_error(404, "Request_ResourceNotFound", "The signed-in user no longer exists.")
        return self._members(request, token, user, "/v1.0/me/transitiveMemberOf")

    async def _graph_user_members(self, request: Request) -> Response:
        token = self._bearer(request)
        if isinstance(token, Response):
            return token
        if not token.permissions & {"GroupMember.Read.All", "Directory.Read.All", "User.Read"}:
            return _graph_error(
                403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )
        key = request.path_params["user"]
        user = self._find_user(token, key)
        if user is None:
            return _graph_error(404, "Request_ResourceNotFound", f"Resource '{key}' does not exist.")
        if token.kind == "delegated" and token.oid != user.oid and "GroupMember.Read.All" not in token.permissions:
            return _graph_error(
                403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )
        return self._members(request, token, user, f"/v1.0/users/{key}/transitiveMemberOf")

    def _members(self, request: Request, token: _AccessToken, user: User, path: str) -> Response:
        q = request.query_params
        try:
            top = int(q.get("$top", "100"))
            skip = q.get("$skiptoken", "")
            offset = int(base64.urlsafe_b64decode(skip + "=" * (-len(skip) % 4)).decode() or 0)
        except ValueError:
            return _graph_error(400, "Request_BadRequest", "Invalid paging parameters.")
        if not 1 <= top <= GRAPH_MAX_TOP:
            return _graph_error(400, "Request_BadRequest", f"Invalid page size specified: '{top}'.")
        select = [s for s in q.get("$select", "").split(",") if s]
        may_read_groups = bool(token.permissions & {"GroupMember.Read.All", "Directory.Read.All", "Group.Read.All"})
        entries: list[dict[str, Any]] = []
        for gid in self.transitive_groups(user):
            entry: dict[str, Any] = {"@odata.type": "#microsoft.graph.group", "id": gid}
            if may_read_groups:  # otherwise "limited information": type and id only
                full = {"displayName": self.groups[gid], "securityEnabled": True, "mailEnabled": False}
                entry.update({k: v for k, v in full.items() if not select or k in select})
            entries.append(entry)
        for rid in sorted(user.directory_roles):
            entries.append({"@odata.type": "#microsoft.graph.directoryRole", "id": rid})
        size = min(top, self.page_size)
        page: dict[str, Any] = {
            "@odata.context": f"{self.base}/v1.0/$metadata#directoryObjects",
            "value": entries[offset : offset + size],
        }
        if offset + size < len(entries):
            params = {"$top": str(top), "$skiptoken": b64url(str(offset + size).encode())}
            if select:
                params["$select"] = ",".join(select)
            page["@odata.nextLink"] = f"{self.base}{path}?{urlencode(params)}"
        return JSONResponse(page)

    async def _graph_user(self, request: Request) -> Response:
        token = self._bearer(request)
        if isinstance(token, Response):
            return token
        key = request.path_params["user"]
        if token.kind == "app" and not token.permissions & {"User.Read.All", "Directory.Read.All"}:
            return _graph_error(
                403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )
        user = self._find_user(token, key)
        if user is None:
            return _graph_error(404, "Request_ResourceNotFound", f"Resource '{key}' does not exist.")
        if token.kind == "delegated" and token.oid != user.oid:
            return _graph_error(
                403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )
        full = {
            "id": user.oid,
            "accountEnabled": user.enabled,
            "displayName": user.name,
            "userPrincipalName": user.upn,
            "mail": user.email,
        }
        select = [s for s in request.query_params.get("$select", "").split(",") if s]
        default = ["id", "displayName", "userPrincipalName", "mail"]  # accountEnabled only when selected
        body = {k: v for k, v in full.items() if k in (select or default)}
        return JSONResponse({"@odata.context": f"{self.base}/v1.0/$metadata#users/$entity", **body})

    async def _graph_group(self, request: Request) -> Response:
        token = self._bearer(request)
        if isinstance(token, Response):
            return token
        gid = request.path_params["group"]
        if gid not in self.groups:
            return _graph_error(404, "Request_ResourceNotFound", f"Resource '{gid}' does not exist.")
        if not token.permissions & {"GroupMember.Read.All", "Directory.Read.All", "Group.Read.All"}:
            return _graph_error(
                403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )
        return JSONResponse({"id": gid, "displayName": self.groups[gid]})
