"""The few Microsoft Graph v1.0 calls the provider makes, with a delegated or an app-only token.

* ``GET /me/transitiveMemberOf`` or ``/users/{id}/transitiveMemberOf``: the groups a user is a
  member of, directly or through nested groups, following ``@odata.nextLink`` paging. Only
  ``#microsoft.graph.group`` entries are kept (directory roles and administrative units are
  returned too). With only ``User.Read`` Graph may leave ``displayName`` out.
* ``GET /users/{id}?$select=id,accountEnabled``: does the user still exist, may they sign in.

A ``nextLink`` must stay on the Graph origin: the bearer token is never sent anywhere else.
Errors become provider errors whose text names the call and Graph's error code, never a token.
Each request (each page) has one overall deadline, ``timeout``, connection and answer included.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from providers.base import UpstreamUnavailable
from providers.net import deadline, describe

GROUP_TYPE = "#microsoft.graph.group"
PAGE_SIZE = 999
MAX_PAGES = 100


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _graph_error(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return f"{str(error.get('code'))[:64]}: {str(error.get('message', ''))[:160]}"
    except (ValueError, AttributeError):
        return "(no Graph error body)"


class Graph:
    """Microsoft Graph at ``base_url`` (``https://graph.microsoft.com`` or a national cloud)."""

    def __init__(self, base_url: str, http: httpx.AsyncClient, *, timeout: float = 10.0) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self._http = http

    async def _get(self, url: str, token: str, what: str, params: dict[str, str] | None = None) -> httpx.Response:
        """One Graph request, answered in full within ``timeout`` seconds overall."""
        try:
            async with deadline(self.timeout, f"Graph {what}"):
                return await self._http.get(
                    url, params=params, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
                )
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"Graph {what}: unreachable: {describe(exc)}") from None

    @staticmethod
    def _fail(response: httpx.Response, what: str) -> UpstreamUnavailable:
        hint = ""
        if response.status_code in (401, 403):
            hint = " (check the app registration's Graph permissions and admin consent)"
        return UpstreamUnavailable(f"Graph {what}: HTTP {response.status_code} {_graph_error(response)}{hint}")

    async def member_groups(self, token: str, user: str = "me") -> dict[str, str | None]:
        """Group id -> display name (None when Graph did not say) of every group ``user`` is in."""
        path = "/v1.0/me" if user == "me" else f"/v1.0/users/{quote(user, safe='')}"
        what = f"{'me' if user == 'me' else 'users/' + user[:64]}/transitiveMemberOf"
        url: str | None = f"{self.base}{path}/transitiveMemberOf"
        params: dict[str, str] | None = {"$select": "id,displayName", "$top": str(PAGE_SIZE)}
        groups: dict[str, str | None] = {}
        for _ in range(MAX_PAGES):
            if url is None:
                return groups
            response = await self._get(url, token, what, params)
            if response.status_code != 200:
                raise self._fail(response, what)
            try:
                page: dict[str, Any] = response.json()
                values = page["value"]
            except (ValueError, KeyError, TypeError):
                raise UpstreamUnavailable(f"Graph {what}: answer is not a collection") from None
            for item in values:
                if isinstance(item, dict) and item.get("@odata.type") == GROUP_TYPE and isinstance(item.get("id"), str):
                    name = item.get("displayName")
                    groups[item["id"]] = name if isinstance(name, str) else None
            link = page.get("@odata.nextLink")
            if link is not None and (not isinstance(link, str) or _origin(link) != _origin(self.base)):
                raise UpstreamUnavailable(f"Graph {what}: nextLink leaves {self.base}; refused")
            url, params = link, None  # the nextLink carries every query parameter
        raise UpstreamUnavailable(f"Graph {what}: more than {MAX_PAGES} pages; refused")

    async def user(self, token: str, user_id: str) -> dict[str, Any] | None:
        """The user's ``id`` and ``accountEnabled``, or None when Graph says there is no such user."""
        what = f"users/{user_id[:64]}"
        response = await self._get(
            f"{self.base}/v1.0/users/{quote(user_id, safe='')}", token, what, {"$select": "id,accountEnabled"}
        )
        if response.status_code == 404 and _graph_error(response).startswith("Request_ResourceNotFound:"):
            return None  # only Graph's own "no such object": a 404 from a wrong URL must not revoke anyone
        if response.status_code != 200:
            raise self._fail(response, what)
        try:
            found = response.json()
        except ValueError:
            raise UpstreamUnavailable(f"Graph {what}: answer is not JSON") from None
        if not isinstance(found, dict):
            raise UpstreamUnavailable(f"Graph {what}: answer is not an object")
        return found
