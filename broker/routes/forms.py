"""Reading form posts the way RFC 6749 wants them: each parameter at most once, bounded size."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import HTMLResponse

from broker.oauth.errors import InvalidRequest, OAuthError
from broker.web.pages import Pages

MAX_FORM_BYTES = 64 * 1024


async def read_body(request: Request, limit: int, too_large: OAuthError) -> bytes:
    """The request body, refused with ``too_large`` as soon as it passes ``limit`` bytes: by its
    Content-Length before reading, else while streaming (nothing larger is ever held in memory)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # bounded even without a Content-Length
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("the request body must be application/x-www-form-urlencoded")
    body = await read_body(request, MAX_FORM_BYTES, InvalidRequest("the request body is too large"))
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the request body is not a valid form") from None
    out: dict[str, str] = {}
    seen: set[str] = set()
    for key, value in pairs:
        if key in seen:
            raise InvalidRequest(f"parameter {key} must appear at most once")
        seen.add(key)
        if value != "":  # RFC 6749 §3.1: a parameter sent without a value is treated as omitted
            out[key] = value
    return out


async def read_page_form(request: Request, pages: Pages) -> dict[str, str] | HTMLResponse:
    """``read_form`` for the browser pages: a bad form is a readable page, not JSON."""
    try:
        return await read_form(request)
    except OAuthError as exc:
        return pages.error(request, "Invalid request", exc.description)
