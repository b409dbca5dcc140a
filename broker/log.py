"""Structured logging: JSON lines to stdout, one event per security-relevant action.

Every event passes through :func:`redact`, which blanks values under secret-looking keys and
anything shaped like a bearer token or a JWT, wherever it sits in the event. Audit events
are ordinary events with ``audit=True`` and an ``event`` name from :mod:`broker.audit`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

REDACTED = "[redacted]"

_SECRET_KEYS = re.compile(
    r"(^|[_-])(password|passwd|pwd|secret|token|code|code_verifier|assertion|authorization|cookie|"
    r"private_key|key_encryption_key|api_key|credential|credentials|session)$",
    re.IGNORECASE,
)
_NOT_SECRET = frozenset(
    {
        "status_code",
        "error_code",
        "token_type",
        "grant_type",
        "response_type",
        "code_challenge_method",
        "token_endpoint_auth_method",
        "http_status_code",
    }
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_QUERY_SECRET = re.compile(
    r"(?i)\b(code|access_token|refresh_token|id_token|client_secret|password|code_verifier|token)=[^&\s\"']+"
)


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@functools.lru_cache(maxsize=4096)  # every key of every log line passes here; the keys are few
def _is_secret_key(key: str) -> bool:
    snake = _CAMEL.sub("_", key).lower()  # clientSecret, refreshToken: the same as their snake_case
    return snake not in _NOT_SECRET and bool(_SECRET_KEYS.search(snake))


# Each pattern runs only on a text holding what every match of it holds: "eyJ"; "b" or "B" and then
# "be" or "ba" once lower-cased (under ``(?i)`` only b and B match b, only e/E and a/A match e and
# a, and ``str.lower`` maps each of those to its small letter); an "=" just after code, token,
# secret, password or verifier in any case (the ends of every key _QUERY_SECRET names), found by a
# search for "=" that looks back only where one stands. Most log values (paths, ids, scopes, DNs)
# hold none, and a substring test or that search costs a fifth of the pattern's own search.
_QUERY_HINT = re.compile(
    r"=(?:(?<=(?i:code)=)|(?<=(?i:token)=)|(?<=(?i:secret)=)|(?<=(?i:password)=)|(?<=(?i:verifier)=))"
)
_PLAIN = frozenset({int, float, bool, type(None)})  # carry no text: nothing to scrub


def _scrub_text(text: str) -> str:
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if ("b" in text or "B" in text) and ("be" in (low := text.lower()) or "ba" in low):
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if "=" in text and _QUERY_HINT.search(text) is not None:
        text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    return text


def redact_value(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return _scrub_text(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, MutableMapping | dict):
        return {
            k: (REDACTED if isinstance(k, str) and _is_secret_key(k) and v not in (None, "") else redact_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    if type(value).__name__ in ("SecretStr", "SecretBytes"):
        return REDACTED
    if isinstance(value, int | float | logging.LogRecord):
        # IntEnum and the like: the same JSON number either way; a LogRecord is ProcessorFormatter's
        # own ``_record``, needed as it is and removed before rendering.
        return value
    # Anything else (a UUID, an Enum, bytes, a datetime, an exception): the text the JSON encoder
    # would write for it, ``__structlog__()`` or ``repr``, made here and so scrubbed like the rest.
    shown = _fallback(value)
    return _scrub_text(shown) if isinstance(shown, str) else redact_value(shown)


_SECRET_TOP_KEYS: dict[str, bool] = {}  # redact's memo: is a top-level key secret ("event" never)


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: nothing secret leaves the process in a log line."""
    known = _SECRET_TOP_KEYS
    for key, value in event.items():  # values replaced in place: the keys stay as they are
        secret = known.get(key)  # a dict look-up: half the cost of the lru_cache call
        if secret is None:
            secret = key != "event" and _is_secret_key(key)
            if len(known) < 4096:  # keys are few; a flood of new ones is only not memoised
                known[key] = secret
        if secret and value not in (None, ""):
            event[key] = REDACTED
        elif type(value) is str:  # most values: redact_value's first case, without its call
            event[key] = _scrub_text(value)
        elif type(value) not in _PLAIN:
            event[key] = redact_value(value)
    return event


_LEVELS = {"warn": "warning", "exception": "error"}  # structlog's map_method_name
_stamped: list[tuple[int, str]] = [(-1, "")]  # the last whole second stamped, and its text


def _stamp(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog's ``add_log_level``, ``add_logger_name`` and ``TimeStamper(fmt="iso", utc=True)``
    in one step, for our own events (not stdlib records): the same keys in the same order with the
    same text (``2026-01-02T03:04:05.123456Z``), the date and time of day formatted once a second."""
    event["level"] = _LEVELS.get(method, method)
    event["logger"] = logger.name
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)  # whole integers: no float rounding
    stamped, text = _stamped[0]  # one tuple: a thread never pairs one second with another's text
    if second != stamped:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamped[0] = (second, text)
    event["timestamp"] = f"{text}.{micro:06d}Z" if micro else f"{text}Z"
    return event


def _fallback(value: Any) -> Any:
    """structlog's JSON fallback: ``__structlog__()`` where a value has it, else ``repr``."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


# The standard library's encoder, built once, for what orjson refuses (an integer beyond 64 bits, a
# lone surrogate, a key that is not a string) and for lines with non-ASCII text, which it writes
# escaped as before: every line on stdout stays ASCII whatever stdout's encoding.
_encode = json.JSONEncoder(default=_fallback, separators=(",", ":")).encode
# What is left for orjson to write natively and json would not: redact_value has already turned
# every other kind into text; these two options keep a datetime or dataclass a nested default's.
_ORJSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _dumps(event: Any, **_: Any) -> str:
    """One compact JSON object, by orjson (a fifteenth of json's time for a log line)."""
    try:
        line = orjson.dumps(event, default=_fallback, option=_ORJSON)
    except orjson.JSONEncodeError:
        return _encode(event)
    return line.decode("ascii") if line.isascii() else _encode(event)


_merge_contextvars = structlog.contextvars.merge_contextvars
_format_exc_info = structlog.processors.format_exc_info


def _json_line(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    """Our own events' processors in one step, the same ones in the same order: context variables
    merged, a traceback formatted, everything redacted, stamped, rendered as one JSON object."""
    event = _merge_contextvars(logger, method, event)
    if "exc_info" in event:  # format_exc_info does nothing to an event without one
        event = _format_exc_info(logger, method, event)
    return _dumps(_stamp(logger, method, redact(logger, method, event)))


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's line writer to stdout, with a ``name`` for ``add_logger_name``."""

    def __init__(self, name: str = "mcp_broker", *_: Any) -> None:
        super().__init__(sys.stdout)
        self.name = name


class _FdLineWriter(_NamedWriteLogger):
    """Each JSON line written to stdout's file descriptor by one ``os.write``: no buffer to lose
    on exit or when the process is killed, and none of the text layer's write and flush."""

    def __init__(self, name: str, fd: int) -> None:
        super().__init__(name)
        self._fd = fd

    def msg(self, message: str) -> None:
        line = (message + "\n").encode("ascii")  # _dumps writes ASCII only
        with self._lock:  # a write cut short by a signal goes on, not interleaved with another
            while line:
                line = line[os.write(self._fd, line) :]

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _json_line_writer(name: str = "mcp_broker", *_: Any) -> _NamedWriteLogger:
    """The writer for JSON lines: by file descriptor where stdout has one (served, or a file or
    pipe), else through the stream (pytest's capsys, a StringIO)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return _NamedWriteLogger(name)
    sys.stdout.flush()  # what went through the stream before stays before
    return _FdLineWriter(name, fd)


def configure_logging(level: str = "info", fmt: str = "json", *, cache: bool = True) -> None:
    """Route structlog and the standard library (uvicorn, httpx, ...) through one pipeline."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.format_exc_info,  # before redact: a traceback's text is scrubbed too
        redact,
        # After redact: the level, logger name and time are ours and carry nothing to scrub.
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        if use_console
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    # Our own events: the three stamping processors as one (a refresh writes two lines), and in
    # JSON the whole chain as one call (_json_line).
    direct = [*shared[:3], _stamp]
    # Our own events take structlog's direct path (no stdlib logging on the hot path: a filtered
    # level costs nothing, a kept one is rendered once and written); other libraries' stdlib
    # records are rendered by the same processors through ProcessorFormatter below.
    structlog.configure(
        processors=[*direct, renderer] if use_console else [_json_line],
        logger_factory=_NamedWriteLogger if use_console else _json_line_writer,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        cache_logger_on_first_use=cache,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Request lines come from our middleware (path only, never the query string with codes).
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
