"""Reading form posts the way RFC 6749 wants them: each parameter at most once, bounded size."""

from __future__ import annotations

from fastapi import Request

from broker.oauth.errors import InvalidRequest

MAX_FORM_BYTES = 64 * 1024


async def read_form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("the request body must be application/x-www-form-urlencoded")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
        raise InvalidRequest("the request body is too large")
    try:
        form = await request.form(max_files=0, max_fields=100)
    except Exception:
        raise InvalidRequest("the request body is not a valid form") from None
    out: dict[str, str] = {}
    for key in form:
        values = form.getlist(key)
        if len(values) > 1:
            raise InvalidRequest(f"parameter {key} must appear at most once")
        value = values[0]
        if not isinstance(value, str):
            raise InvalidRequest(f"parameter {key} must be text")
        if value != "":  # RFC 6749 §3.1: a parameter sent without a value is treated as omitted
            out[key] = value
    return out
