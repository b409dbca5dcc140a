"""Delegated access for an MCP server: exchange the user's access token of this request for a token
of a downstream API the broker knows as a *target* (RFC 8693 token exchange at the broker), so the
server calls that API as the user without passing the client's token through.

::

    from mcp_broker_verifier.delegation import TokenExchanger

    exchanger = TokenExchanger(
        token_endpoint="https://broker.example.com/token",
        client_id="notes-server",  # a confidential client of the broker with `mcp_server: notes`
        client_secret=os.environ["NOTES_CLIENT_SECRET"],
        http=httpx.AsyncClient(),
    )

    @server.tool()
    async def my_tickets() -> str:
        token = await exchanger.exchange_current("https://tickets.example.com", scope="tickets:read")
        ...  # Authorization: Bearer <token> to the tickets API

Answers are kept in memory per (subject token, target, scope) until ``margin`` seconds before
they expire. Errors: :class:`InteractionRequired` (the user must complete a step at the broker:
show ``url``, e.g. by MCP URL-mode elicitation, then call again), :class:`ExchangeRefused` (the
broker said no: ``error`` is its OAuth error code), :class:`ExchangeUnavailable` (the broker or
the upstream did not answer; try again later). All are :class:`ExchangeError`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import httpx

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105  (a URN)
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105  (a URN)


class ExchangeError(Exception):
    """The exchange gave no token."""


class ExchangeRefused(ExchangeError):
    """The broker refused: ``error`` is the OAuth error code (``invalid_grant``: the user's token
    is expired or revoked; ``invalid_target``: this server may not obtain that target;
    ``invalid_scope``: the user holds none of the scopes asked for there; ``invalid_client``,
    ``unauthorized_client``: this server's registration)."""

    def __init__(self, error: str, description: str | None, status: int) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


class InteractionRequired(ExchangeRefused):
    """The upstream needs the user: send them to ``url`` (a broker page), then exchange again."""

    def __init__(self, url: str, description: str | None, status: int) -> None:
        super().__init__("interaction_required", description, status)
        self.url = url


class ExchangeUnavailable(ExchangeError):
    """The broker or the upstream behind the target did not answer (network, 5xx, 429)."""


@dataclass(frozen=True)
class _Kept:
    token: str
    reuse_until: float


class TokenExchanger:
    def __init__(
        self,
        *,
        token_endpoint: str,
        client_id: str,
        client_secret: str,
        http: httpx.AsyncClient,
        margin: float = 30.0,
        cache_size: int = 10_000,
        timeout: float = 10.0,
    ) -> None:
        self.token_endpoint = token_endpoint
        self._auth = (client_id, client_secret)
        self.http = http
        self.margin = margin
        self.cache_size = cache_size
        self.timeout = timeout
        self._cache: dict[bytes, _Kept] = {}

    async def exchange(self, subject_token: str, target: str, scope: str | None = None) -> str:
        """A token for ``target`` (its audience, as configured at the broker) as the user of
        ``subject_token`` (the access token this server received), with ``scope`` (space-separated;
        None: all the broker's rules give)."""
        key = hashlib.sha256("\n".join((subject_token, target, scope or "")).encode()).digest()
        now = time.time()
        kept = self._cache.get(key)
        if kept is not None and kept.reuse_until > now:
            return kept.token
        data = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "audience": target,
        }
        if scope:
            data["scope"] = scope
        try:
            response = await self.http.post(self.token_endpoint, data=data, auth=self._auth, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise ExchangeUnavailable(f"token endpoint unreachable: {type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ExchangeUnavailable(f"token endpoint answered {response.status_code} without a JSON body")
        if response.status_code != 200:
            error, description = str(body.get("error", "")), body.get("error_description")
            description = description if isinstance(description, str) else None
            if response.status_code >= 500 or response.status_code == 429 or error == "temporarily_unavailable":
                raise ExchangeUnavailable(f"{response.status_code} {error}: {description}")
            if error == "interaction_required" and isinstance(body.get("interaction_uri"), str):
                raise InteractionRequired(body["interaction_uri"], description, response.status_code)
            raise ExchangeRefused(error or "invalid_response", description, response.status_code)
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token:
            raise ExchangeUnavailable("token endpoint answered 200 without an access_token")
        if isinstance(expires_in, int) and expires_in > self.margin:
            if len(self._cache) >= self.cache_size:
                self._prune(now)
            self._cache[key] = _Kept(token, now + expires_in - self.margin)
        return token

    async def exchange_current(self, target: str, scope: str | None = None) -> str:
        """:meth:`exchange` for the access token of the request being served (inside a tool)."""
        from mcp.server.auth.middleware.auth_context import get_access_token

        access = get_access_token()
        if access is None:
            raise ExchangeRefused("invalid_request", "no authenticated request in progress", 0)
        return await self.exchange(access.token, target, scope)

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self._cache.items() if v.reuse_until <= now]:
            del self._cache[key]
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
