"""Client authentication at the token, revocation and introspection endpoints (RFC 6749 §2.3)."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote

from fastapi import Request

from broker.oauth.client_assertion import CLIENT_ASSERTION_TYPE, unverified_issuer
from broker.oauth.clients import Client, ClientRegistry, authenticate
from broker.oauth.errors import InvalidClient, InvalidRequest


async def authenticate_client(clients: ClientRegistry, request: Request, form: dict[str, str]) -> Client:
    if "client_assertion_type" in form or "client_assertion" in form:
        return await _by_assertion(clients, request, form)
    header = request.headers.get("authorization")
    secret: str | None
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            # Only a scheme name is quoted: a header without one is the credential itself.
            named = scheme if scheme.isalpha() and len(scheme) <= 20 and value else "(none)"
            raise InvalidClient(detail=f"unsupported client authentication scheme {named!r}")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidClient(detail="malformed Basic credentials") from None
        raw_id, sep, raw_secret = decoded.partition(":")
        if not sep:
            raise InvalidClient(detail="malformed Basic credentials")
        client_id, secret, method = unquote(raw_id), unquote(raw_secret), "client_secret_basic"
        if "client_secret" in form:
            raise InvalidRequest("use one client authentication method, not two")
        if form.get("client_id", client_id) != client_id:
            raise InvalidRequest("client_id differs from the authenticated client")
    elif "client_secret" in form:
        client_id, secret, method = form.get("client_id", ""), form["client_secret"], "client_secret_post"
    else:
        client_id, secret, method = form.get("client_id", ""), None, "none"
    if not client_id:
        raise InvalidClient(detail="no client_id")
    client = await clients.get(client_id)
    if client is None:
        raise InvalidClient(detail=f"unknown client {client_id[:100]!r}")
    authenticate(client, method, secret)
    return client


async def _by_assertion(clients: ClientRegistry, request: Request, form: dict[str, str]) -> Client:
    """``private_key_jwt`` (RFC 7523 §2.2): the client's signed assertion, no other credential."""
    if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
        raise InvalidClient(detail="unsupported client_assertion_type")
    assertion = form.get("client_assertion")
    if not assertion:
        raise InvalidRequest("client_assertion is required with client_assertion_type")
    if request.headers.get("authorization") is not None or "client_secret" in form:
        raise InvalidRequest("use one client authentication method, not two")
    client_id = form.get("client_id") or unverified_issuer(assertion)
    if not client_id:
        raise InvalidClient(detail="no client_id and no iss in the client assertion")
    client = await clients.get(client_id)
    if client is None:
        raise InvalidClient(detail=f"unknown client {client_id[:100]!r}")
    endpoint = request.url.path.rstrip("/").rsplit("/", 1)[-1]  # token, revoke, introspect
    await clients.authenticate_assertion(client, assertion, endpoint)
    return client
