"""MSAL wiring: confidential client applications, their HTTP session, and MSAL's outcomes
mapped onto the provider errors.

MSAL is synchronous; its calls run in a small pool of worker threads of the provider's own,
and every HTTP request MSAL makes is handed back to the event loop (``_LoopHttp``), where one
deadline per operation (``timeout``) bounds it, connecting and every byte of the answer
included. Waits for a thread or for a build under way are asyncio waits within that deadline.

* One ``ConfidentialClientApplication`` per authority, built lazily on first use: building one
  runs OpenID discovery over the network, so a broker started while Entra is unreachable still
  starts, and a failed build is simply retried by the next sign-in. A single-tenant provider
  has exactly one; with ``allowed_tenants`` sign-in goes through ``/organizations`` and each
  tenant gets its own application for app-only Microsoft Graph calls.
* MSAL's HTTP cache keeps a failed token request for 60 s (HTTP 400) or for ``Retry-After``
  (429/5xx), per application instance. With one long-lived instance that would turn one bad
  answer into a minute of refused refreshes, so the cache given to MSAL keeps successful
  answers only (discovery documents); every failure is seen by exactly one request.
* MSAL's token cache would keep every user's tokens in memory for the life of the process; the
  cache given to MSAL keeps app-only (client credentials) tokens only. User tokens are used
  once, during the callback, and dropped; with ``delegated_access`` the callback's tokens go
  into a token cache of that user alone (``SerializableTokenCache``), which the caller keeps
  (sealed, with the grant) and hands back for each delegated acquisition, run on an application
  built for that one call around it (discovery comes from the shared HTTP cache).
* The HTTP client trusts certifi's and the system's CAs plus the configured CA file
  (``providers.net.tls_context``), never the environment:
  ``trust_env`` is off so ``SSL_CERT_FILE`` and proxy variables cannot change where the
  broker sends its client secret or whom it trusts.
* Instance discovery is off: it asks ``login.microsoftonline.com`` whether the authority host
  is a Microsoft cloud, which is meaningless for a host the operator configured on purpose
  (sovereign clouds, tests) and an extra dependency on the public cloud.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import msal

from providers.base import ProviderError, UpstreamRejected, UpstreamUnavailable
from providers.entra.config import EntraProviderConfig
from providers.net import describe

# The broker's callback is a GET bound to a SameSite=Lax cookie, which a cross-site form_post
# would not carry; the code in the query is useless without the PKCE verifier and the client
# credential, both held here. MSAL warns about query mode on every sign-in: silence that one.
warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended", category=UserWarning)


class SignInExpired(UpstreamRejected):
    """Entra refused the authorization code: too old, already redeemed, or not ours."""

    public = "This sign-in took too long or was already completed. Return to the application and start again."


MSAL_CACHE = "msal_cache"  # the key of a redeemed code's answer holding the user's serialized token cache
WORKERS = 8  # MSAL operations of one provider at a time; more wait (on the event loop) for a slot
_GRACE = 2.0  # how long past its deadline a worker may take to hand back MSAL's own error
_T = TypeVar("_T")
# The event loop and deadline (in loop time) of the MSAL operation a worker thread is running.
_DEADLINE: contextvars.ContextVar[tuple[asyncio.AbstractEventLoop, float]] = contextvars.ContextVar("msal_deadline")


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _fields(values: Any) -> dict[str, Any] | None:
    """Form fields, query parameters or headers as requests would send them, which is what MSAL
    expects: None values left out, bytes (a client assertion) as text."""
    if values is None:
        return None
    fields: dict[str, Any] = {}
    for key, value in dict(values).items():
        items = value if isinstance(value, list | tuple) else [value]
        kept = [v.decode() if isinstance(v, bytes) else str(v) for v in items if v is not None]
        if kept:
            fields[key] = kept if isinstance(value, list | tuple) else kept[0]
    return fields


class _LoopHttp:
    """MSAL's ``http_client``: each request MSAL makes from its worker thread is sent by the
    provider's httpx client on the event loop, bounded by the operation's deadline. So an
    endpoint that accepts the connection and never answers, or dribbles its answer, cannot hold
    the thread past the deadline (a requests time-out is per read, and a drip never trips it).
    The httpx client trusts the configured CA file (or certifi) and ignores the environment."""

    def __init__(self, http: httpx.AsyncClient, seconds: float) -> None:
        self._http = http
        self.seconds = seconds

    def get(self, url: str, params: Any = None, headers: Any = None, **_: Any) -> httpx.Response:
        return self._request("GET", url, params=params, headers=headers)

    def post(self, url: str, params: Any = None, data: Any = None, headers: Any = None, **_: Any) -> httpx.Response:
        return self._request("POST", url, params=params, headers=headers, data=data)

    def close(self) -> None:
        """The httpx client belongs to the provider, which closes it."""

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        running = _DEADLINE.get(None)
        if running is None:
            raise UpstreamUnavailable(f"{method} {_where(url)}: MSAL called outside a deadline")
        loop, until = running
        future = asyncio.run_coroutine_threadsafe(self._send(method, url, until, **kwargs), loop)
        try:
            return future.result(timeout=self.seconds + _GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise UpstreamUnavailable(f"{method} {_where(url)} timed out after {self.seconds:g} s") from None

    async def _send(
        self, method: str, url: str, until: float, *, params: Any, headers: Any, data: Any = None
    ) -> httpx.Response:
        body: dict[str, Any] = {"content": data} if isinstance(data, str | bytes) else {"data": _fields(data)}
        try:
            async with asyncio.timeout_at(until):
                return await self._http.request(method, url, params=_fields(params), headers=_fields(headers), **body)
        except TimeoutError:
            raise UpstreamUnavailable(f"{method} {_where(url)} timed out after {self.seconds:g} s") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"{method} {_where(url)} unreachable: {describe(exc)}") from None


class _SuccessOnlyHttpCache(dict[str, Any]):
    """MSAL ``http_cache`` that stores successful responses only (see the module docstring)."""

    def __setitem__(self, key: str, value: Any) -> None:
        status = getattr(value, "status_code", None)
        if isinstance(status, int) and not 200 <= status < 300:
            return
        super().__setitem__(key, value)


class _AppTokensOnly(msal.TokenCache):  # type: ignore[misc]
    """MSAL token cache that remembers app-only tokens and forgets user tokens."""

    def add(self, event: dict[str, Any], now: Any = None) -> Any:
        if event.get("grant_type") != "client_credentials":
            return None
        return super().add(event, now=now)


def _first_line(text: object, limit: int = 300) -> str:
    line = str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""
    return line[:limit]


def _credential(config: EntraProviderConfig) -> str | dict[str, str]:
    if config.client_secret is not None:
        return config.client_secret.get_secret_value()
    assert config.client_certificate_file is not None  # the config model guarantees one of the two
    pem = Path(config.client_certificate_file).read_text()
    key = re.search(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----.+?-----END (?:[A-Z]+ )?PRIVATE KEY-----", pem, re.S)
    cert = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    if key is None or cert is None:
        raise UpstreamUnavailable(f"{config.client_certificate_file} must hold a PEM private key and certificate")
    credential = {"private_key": key.group(0), "public_certificate": cert.group(0)}
    if config.client_certificate_thumbprint:
        credential["thumbprint"] = config.client_certificate_thumbprint
    if config.client_certificate_password is not None:
        credential["passphrase"] = config.client_certificate_password.get_secret_value()
    return credential


def _transport_error(what: str, exc: Exception) -> ProviderError:
    """An exception raised inside MSAL, as a provider error with a log-worthy message."""
    if isinstance(exc, UpstreamUnavailable) and not str(exc).startswith(what):
        return UpstreamUnavailable(f"{what}: {exc}")  # a transport failure of ``_LoopHttp``
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, msal.exceptions.MsalServiceError):  # 5xx from the token endpoint
        return UpstreamUnavailable(f"{what}: Entra answered {_first_line(exc, 100)}")
    if isinstance(exc, json.JSONDecodeError):
        return UpstreamUnavailable(f"{what}: Entra answered something that is not JSON")
    return UpstreamUnavailable(f"{what}: {type(exc).__name__}: {_first_line(exc, 200)}")


def token_error(what: str, result: dict[str, Any], *, user_flow: bool) -> ProviderError:
    """An OAuth error answer from the token endpoint as a provider error.

    ``error_description`` holds an AADSTS code and trace ids, never a token or secret; only its
    first line is kept.
    """
    error = str(result.get("error", "unknown_error"))[:64]
    detail = f"{what}: Entra answered {error}: {_first_line(result.get('error_description'))}"
    if error in ("invalid_client", "unauthorized_client"):
        return UpstreamUnavailable(detail + " (check the client secret or certificate and the app registration)")
    if error in ("temporarily_unavailable", "server_error") or not user_flow:
        return UpstreamUnavailable(detail)
    if error == "invalid_grant":
        return SignInExpired(detail)
    return UpstreamRejected(detail)


class MsalApps:
    """The provider's confidential client applications, one per authority (tenant or
    ``organizations``), built on first use and kept for the life of the provider.

    Every operation (``start``, ``redeem``, ``app_token``) has one deadline, ``timeout``
    seconds, covering the wait for a worker thread, building the application (discovery) and
    MSAL's HTTP calls; when it passes the operation raises UpstreamUnavailable.
    """

    def __init__(self, config: EntraProviderConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self.authority_host = str(config.authority_host).rstrip("/")
        self.http_client = _LoopHttp(http, config.timeout)
        self._apps: dict[str, Any] = {}
        self._building = asyncio.Lock()
        self._slots = asyncio.Semaphore(WORKERS)
        self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix=f"msal-{config.id}")
        self._http_cache = _SuccessOnlyHttpCache()  # discovery documents, shared by every application

    async def app(self, tenant: str) -> Any:
        """The application for ``tenant`` (built now if need be, within ``timeout``)."""
        return await self._call(f"discovery of {self.authority_host}/{tenant}", tenant, lambda app: app)

    async def start(self, tenant: str, scopes: list[str], redirect_uri: str, state: str) -> dict[str, Any]:
        """Begin an authorization code flow with PKCE and nonce; the flow dict is JSON-serialisable."""

        def start(app: Any) -> dict[str, Any]:
            try:
                flow: dict[str, Any] = app.initiate_auth_code_flow(scopes, redirect_uri=redirect_uri, state=state)
            except Exception as exc:
                raise _transport_error("starting the sign-in", exc) from None
            return flow

        return await self._call("starting the sign-in", tenant, start)

    async def redeem(self, tenant: str, flow: dict[str, Any], response: dict[str, str]) -> dict[str, Any]:
        """Redeem the authorization code (MSAL checks state and the nonce; not the signature)."""

        def redeem(app: Any) -> dict[str, Any]:
            try:
                result: dict[str, Any] = app.acquire_token_by_auth_code_flow(dict(flow), dict(response))
            except RuntimeError:  # MSAL's nonce check; its message would repeat both values
                raise UpstreamRejected("ID token nonce does not match the sign-in request") from None
            except json.JSONDecodeError:
                raise UpstreamUnavailable("redeeming the code: Entra answered something that is not JSON") from None
            except ValueError as exc:  # state missing or different, scope mismatch
                reason = _first_line(exc, 200).split(":")[0]  # "state mismatch: a vs b" -> "state mismatch"
                raise UpstreamRejected(f"MSAL refused the callback: {reason}") from None
            except Exception as exc:
                raise _transport_error("redeeming the code", exc) from None
            if "error" in result:
                raise token_error("redeeming the code", result, user_flow=True)
            return result

        if self.config.delegated_access:  # the user's tokens go into a cache of their own, kept by the caller

            def redeem_keeping(_: Any) -> dict[str, Any]:
                cache = msal.SerializableTokenCache()
                result = redeem(self._build(tenant, cache))
                return {**result, MSAL_CACHE: cache.serialize()}

            return await self._call("redeeming the code", tenant, redeem_keeping)
        return await self._call("redeeming the code", tenant, redeem)

    async def delegated(
        self, tenant: str, serialized: str, scopes: list[str], *, assertion_scopes: list[str] | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """A token for ``scopes`` as the user whose token cache ``serialized`` is: silently from
        that cache (MSAL refreshes with its refresh token), or, with ``assertion_scopes``,
        on-behalf-of with a token for those scopes (the broker's exposed API) as the assertion.
        Returns MSAL's answer (an ``error`` key when Entra refused) and the cache, serialized
        again, when it changed."""
        what = f"delegated token for {' '.join(scopes)}"

        def acquire(_: Any) -> tuple[dict[str, Any], str | None]:
            cache = msal.SerializableTokenCache()
            try:
                cache.deserialize(serialized)
            except ValueError:
                return {"error": "interaction_required", "error_description": "the kept session is unreadable"}, None
            app = self._build(tenant, cache)
            try:
                accounts = app.get_accounts()
                if not accounts:
                    return {
                        "error": "interaction_required",
                        "error_description": "no account in the kept session",
                    }, None
                first = assertion_scopes or scopes
                result = app.acquire_token_silent_with_error(first, account=accounts[0])
                if result is None:
                    result = {"error": "interaction_required", "error_description": "no refresh token kept"}
                if assertion_scopes and "access_token" in result:
                    result = app.acquire_token_on_behalf_of(result["access_token"], scopes)
            except Exception as exc:
                raise _transport_error(what, exc) from None
            return dict(result), cache.serialize() if cache.has_state_changed else None

        return await self._call(what, tenant, acquire)

    async def app_token(self, tenant: str, scopes: list[str]) -> str:
        """An app-only access token (client credentials), from MSAL's cache while it is valid."""
        what = f"app-only token for tenant {tenant}"

        def app_token(app: Any) -> str:
            try:
                result: dict[str, Any] = app.acquire_token_for_client(scopes)
            except Exception as exc:
                raise _transport_error(what, exc) from None
            if "error" in result or not isinstance(result.get("access_token"), str):
                raise token_error(what, result, user_flow=False)
            token: str = result["access_token"]
            return token

        return await self._call(what, tenant, app_token)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- running MSAL ------------------------------------------------------------------------
    async def _call(self, what: str, tenant: str, operation: Callable[[Any], _T]) -> _T:
        loop = asyncio.get_running_loop()
        until = loop.time() + self.config.timeout
        try:
            app = self._apps.get(tenant)
            if app is None:
                async with asyncio.timeout_at(until):  # waits for a build under way count too
                    await self._building.acquire()
                try:
                    app = self._apps.get(tenant) or await self._in_thread(self._build, until, tenant)
                    self._apps[tenant] = app
                finally:
                    self._building.release()
            return await self._in_thread(operation, until, app)
        except TimeoutError:
            raise UpstreamUnavailable(f"{what}: timed out after {self.config.timeout:g} s") from None

    async def _in_thread(self, function: Callable[..., _T], until: float, *args: Any) -> _T:
        """``function(*args)`` in one of this provider's worker threads; its HTTP calls run on
        this event loop, bounded by ``until``. The wait for a free thread is an asyncio wait,
        so a queue of sign-ins holds no thread, and MSAL never holds the default executor's."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(until):
            await self._slots.acquire()
        context = contextvars.copy_context()
        context.run(_DEADLINE.set, (loop, until))
        future = loop.run_in_executor(self._executor, context.run, function, *args)
        future.add_done_callback(lambda _: self._slots.release())  # when the thread is really done
        async with asyncio.timeout_at(until + _GRACE):  # MSAL's own HTTP calls end by ``until``
            return await asyncio.shield(future)

    def _build(self, tenant: str, user_cache: msal.TokenCache | None = None) -> Any:
        """The shared application of ``tenant`` or, with ``user_cache``, one for a single user's call."""
        try:
            return msal.ConfidentialClientApplication(
                self.config.client_id,
                client_credential=_credential(self.config),
                authority=f"{self.authority_host}/{tenant}",
                http_client=self.http_client,
                http_cache=self._http_cache,
                token_cache=user_cache if user_cache is not None else _AppTokensOnly(),
                instance_discovery=False,
                # No upstream refresh token (the re-check uses app-only Graph) unless delegated
                # access keeps the user's session.
                exclude_scopes=[] if self.config.delegated_access else ["offline_access"],
            )
        except Exception as exc:  # discovery failed, unreadable certificate, ...
            raise _transport_error(f"discovery of {self.authority_host}/{tenant}", exc) from None
