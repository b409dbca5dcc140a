"""Client ID metadata documents (draft-ietf-oauth-client-id-metadata-document; MCP client registration).

A ``client_id`` that is an https URL names a JSON document, published by the client, that holds
its metadata. :class:`MetadataDocuments` fetches, checks and caches these documents:

* URL: https, a host, a path other than "/", no fragment, no userinfo, no dot segments, printable
  ASCII, at most 2000 characters; when ``cimd_trusted_domains`` is set, the host must be one of them
  or a subdomain of one.
* SSRF: the host is resolved once. If any address is not global (private, loopback, link-local,
  multicast, reserved, unspecified) and outside ``cimd_allow_private_addresses``, nothing is fetched.
  The request then goes to a checked address itself (an IP URL with the ``Host`` header, SNI and
  certificate verification all for the hostname), so DNS cannot rebind between check and connect.
  Proxies from the environment are ignored, redirects are not followed (a 3xx is a refusal), and
  connections are not kept alive (a pooled connection, verified for one hostname, could otherwise
  carry a request for another hostname on the same address).
* Fetch: ``cimd_timeout`` bounds the whole of it (resolution included); at most 64 KiB, counted
  while streaming; identity encoding only (no decompression bombs); the body must be a JSON object.
* Document: ``client_id`` equal to the URL; ``client_name`` and ``redirect_uris`` present; redirect
  URIs checked as for registration (``application_type`` honoured, or inferred), and so are the
  readable strings (no control or formatting characters) and the page URLs (``client_uri``,
  ``logo_uri``, ``policy_uri``, ``tos_uri``: https, or http on loopback). Public clients only:
  ``token_endpoint_auth_method`` must be "none" (the default) and no client secret may appear.
  ``grant_types`` defaults to authorization_code and refresh_token, which MCP clients expect,
  rather than RFC 7591's authorization_code alone.
* Cache: ``Cache-Control: max-age`` clamped to 60 s .. 24 h, 5 min without it; ``no-store``,
  ``no-cache`` or ``max-age=0`` mean not cached at all. A failure is remembered for 30 s.
  Concurrent lookups of one URL share one fetch.

Any failure makes the client unknown (None) and logs a warning with the URL and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import certifi
import httpx
import structlog

from broker.config.models import RegistrationConfig
from broker.oauth.clients import GRANT_TYPES, Client, validate_metadata
from broker.oauth.errors import OAuthError

_log = structlog.get_logger("mcp_broker.cimd")

MAX_URL_LENGTH = 2000
MAX_BYTES = 64 * 1024
MIN_TTL, MAX_TTL, DEFAULT_TTL, FAILURE_TTL = 60.0, 86400.0, 300.0, 30.0
MAX_ENTRIES = 1000  # cached documents (and failures); a flood of distinct URLs cannot grow memory

_PRINTABLE = re.compile(r"[!-~]+")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Refused(Exception):
    """Why a document was not accepted: logged, never raised to the caller."""


def _monotonic() -> float:  # a seam for tests that move the clock
    return time.monotonic()


def url_problem(url: str, trusted_domains: Sequence[str] = ()) -> str | None:
    """None if ``url`` may be fetched as a client ID metadata document, else why not."""
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    if not _PRINTABLE.fullmatch(url) or "\\" in url:
        return "not a printable ASCII URL"
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "not a valid URL"
    if not url.startswith("https://"):
        return "not an https URL"
    if not parts.hostname:
        return "no host"
    if "@" in parts.netloc:
        return "userinfo is not allowed"
    if "#" in url:
        return "a fragment is not allowed"
    if parts.path in ("", "/"):
        return "a path is required"
    if {".", ".."} & set(unquote(parts.path).split("/")):
        return "dot segments are not allowed"
    host = parts.hostname.rstrip(".")
    domains = [d.lower().strip(".") for d in trusted_domains]
    if domains and not any(host == d or host.endswith("." + d) for d in domains):
        return f"host {host!r} is not in the trusted domains"
    return None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: the IPv4 address is the last 32 bits
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: operator-chosen layouts, so never trusted


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a translated or tunnelled IPv6 address reaches: IPv4-mapped, NAT64, 6to4,
    Teredo (its server, where the packets go first)."""
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[0]
    return None


def is_public_address(address: Address) -> bool:
    """Globally routable unicast: not private, loopback, link-local, multicast, reserved or unspecified,
    nor an IPv6 address that leads to an IPv4 address that is one (NAT64 to 169.254.169.254, say)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64:
            return False
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public_address(inner)
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def cache_ttl(cache_control: str | None) -> float:
    """Seconds to keep a document, from its Cache-Control header (0: do not keep it)."""
    directives: dict[str, str] = {}
    for item in (cache_control or "").lower().split(","):
        name, _, value = item.partition("=")
        directives[name.strip()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    try:
        max_age = int(directives["max-age"])
    except (KeyError, ValueError):
        return DEFAULT_TTL
    return 0.0 if max_age <= 0 else min(max(float(max_age), MIN_TTL), MAX_TTL)


class MetadataDocuments:
    def __init__(self, config: RegistrationConfig) -> None:
        self.config = config
        self._allowed = [ipaddress.ip_network(c, strict=False) for c in config.cimd_allow_private_addresses]
        self._cache: dict[str, tuple[float, Client | None]] = {}  # url -> (expiry, client or failure)
        self._inflight: dict[str, asyncio.Task[Client | None]] = {}
        self._http: httpx.AsyncClient | None = None

    async def get(self, client_id: str) -> Client | None:
        """The client a metadata document URL describes, or None (refused, logged)."""
        cached = self._cache.get(client_id)
        if cached is not None and cached[0] > _monotonic():
            return cached[1]
        task = self._inflight.get(client_id)
        if task is None:
            task = asyncio.create_task(self._load(client_id))
            self._inflight[client_id] = task
            task.add_done_callback(lambda _: self._inflight.pop(client_id, None))
        # shield: one caller giving up must not cancel the fetch the others are waiting for
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _load(self, url: str) -> Client | None:
        try:
            client, ttl = await self._fetch(url)
        except _Refused as exc:
            reason = str(exc)
        except TimeoutError:
            reason = f"timed out after {self.config.cimd_timeout} s"
        except Exception as exc:  # network, TLS, anything: the client is unknown, the caller never sees it
            reason = f"{type(exc).__name__}: {exc}"
        else:
            self._remember(url, client, ttl)
            return client
        _log.warning("cimd_refused", url=url, reason=reason)
        self._remember(url, None, FAILURE_TTL)
        return None

    def _remember(self, url: str, client: Client | None, ttl: float) -> None:
        self._cache.pop(url, None)
        if ttl <= 0:
            return
        now = _monotonic()
        if len(self._cache) >= MAX_ENTRIES:
            for key in [k for k, (expiry, _) in self._cache.items() if expiry <= now]:
                del self._cache[key]
        while len(self._cache) >= MAX_ENTRIES:
            del self._cache[next(iter(self._cache))]  # the oldest entry
        self._cache[url] = (now + ttl, client)

    async def _fetch(self, url: str) -> tuple[Client, float]:
        problem = url_problem(url, self.config.cimd_trusted_domains)
        if problem:
            raise _Refused(problem)
        parts = urlsplit(url)
        http = self._http_client()  # built on first use (loads CA bundles: not counted in the time-out)
        async with asyncio.timeout(self.config.cimd_timeout):
            addresses = await self._resolve(parts)
            cache_control, body = await _download(http, parts, addresses)
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _Refused("the document is not JSON") from exc
        return _to_client(url, document), cache_ttl(cache_control)

    async def _resolve(self, parts: SplitResult) -> list[Address]:
        host = parts.hostname or ""
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        if not addresses:
            raise _Refused(f"{host} has no address")
        for address in addresses:
            if not self._permitted(address):
                raise _Refused(f"{host} resolves to {address}, which is not a public address")
        return addresses

    def _permitted(self, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return is_public_address(address) or any(address in network for network in self._allowed)

    def _http_client(self) -> httpx.AsyncClient:
        if self._http is None:
            context = ssl.create_default_context(cafile=certifi.where())
            context.load_default_certs()
            if self.config.cimd_ca_file:
                context.load_verify_locations(self.config.cimd_ca_file)
            self._http = httpx.AsyncClient(
                verify=context,
                timeout=self.config.cimd_timeout,
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=0),
                headers={"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": "mcp-broker"},
            )
        return self._http


async def _download(http: httpx.AsyncClient, parts: SplitResult, addresses: list[Address]) -> tuple[str | None, bytes]:
    """GET the document from the first checked address that accepts a connection."""
    failure: Exception | None = None
    for address in addresses:
        netloc = f"[{address}]" if address.version == 6 else str(address)
        target = urlunsplit(("https", f"{netloc}:{parts.port or 443}", parts.path, parts.query, ""))
        request = http.build_request(
            "GET", target, headers={"Host": parts.netloc}, extensions={"sni_hostname": parts.hostname}
        )
        try:
            response = await http.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
            continue
        try:
            return response.headers.get("cache-control"), await _read(response)
        finally:
            await response.aclose()
    raise _Refused(f"could not connect: {failure}")


async def _read(response: httpx.Response) -> bytes:
    if 300 <= response.status_code < 400:
        raise _Refused(f"HTTP {response.status_code}: redirects are not followed")
    if response.status_code != 200:
        raise _Refused(f"HTTP {response.status_code}")
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        raise _Refused("a content-encoded document was sent")
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_BYTES:
            raise _Refused(f"the document is larger than {MAX_BYTES // 1024} KiB")
    return bytes(body)


def _to_client(url: str, document: Any) -> Client:
    """Check a fetched document against its URL; build the client it describes."""
    if not isinstance(document, dict):
        raise _Refused("the document is not a JSON object")
    if document.get("client_id") != url:
        raise _Refused(f"the document's client_id {document.get('client_id')!r} is not its URL")
    for field in ("client_name", "redirect_uris"):
        if field not in document:
            raise _Refused(f"{field} is missing")
    if "client_secret" in document or "client_secret_expires_at" in document:
        raise _Refused("a metadata document must not carry a client secret")
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise _Refused(f"token_endpoint_auth_method {method!r} is not supported (public clients only)")
    try:
        uris, application_type, _, grants, name = validate_metadata(
            {"grant_types": list(GRANT_TYPES), **document, "token_endpoint_auth_method": "none"}
        )
    except OAuthError as exc:
        raise _Refused(exc.detail) from exc
    client_uri = document.get("client_uri")
    return Client(
        client_id=url,
        client_name=name,
        redirect_uris=tuple(uris),
        application_type=application_type,
        grant_types=grants,
        kind="metadata_document",
        client_uri=client_uri if isinstance(client_uri, str) else None,
        created_at=int(time.time()),
    )
