"""Nothing secret leaves the process in a log line."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.log import REDACTED, configure_logging, redact

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def run(**event: object) -> dict[str, object]:
    return dict(redact(None, "info", {"event": "x", **event}))


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "client_secret",
        "refresh_token",
        "access_token",
        "code",
        "code_verifier",
        "authorization",
        "bind_password",
        "Cookie",
        "key_encryption_key",
        "id_token",
        "assertion",
        "clientSecret",
        "refreshToken",
        "bindPassword",
    ],
)
def test_secret_keys_are_blanked(key: str) -> None:
    assert run(**{key: "hunter2"})[key] == REDACTED


@pytest.mark.parametrize("key", ["status_code", "token_type", "grant_type", "client_id", "scope", "kid", "error_code"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert run(**{key: "value"})[key] == "value"


def test_tokens_inside_text_and_nested_values() -> None:
    event = run(
        detail=f"got {JWT} from client",
        header="Bearer abcdefghijklmnop",
        url="/callback?code=SplxlOBeZQQYbYS6WxSbIA&state=xyz",
        nested={"form": {"password": "p", "username": "alice"}, "list": [JWT]},
    )
    assert JWT not in json.dumps(event)
    assert event["header"] == f"Bearer {REDACTED}"
    assert event["url"] == f"/callback?code={REDACTED}&state=xyz"
    assert event["nested"] == {"form": {"password": REDACTED, "username": "alice"}, "list": [REDACTED]}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_to_stdout_with_stdlib_loggers_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json", cache=False)
    structlog.get_logger("t").info("token_issued", client_id="c1", refresh_token="secret-rt")
    logging.getLogger("uvicorn.error").warning("upstream said password=hunter2")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["event"] == "token_issued"
    assert lines[0]["refresh_token"] == REDACTED
    assert lines[0]["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", str(lines[0]["timestamp"]))
    assert lines[1]["event"] == f"upstream said password={REDACTED}"


@pytest.mark.usefixtures("restore_logging")
def test_a_tracebacks_text_is_scrubbed_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json", cache=False)
    try:
        raise ValueError(f"refresh_token=rt.abc.def {JWT} password=hunter2")
    except ValueError:
        structlog.get_logger("t").exception("failed")
        logging.getLogger("uvicorn.error").exception("stdlib failed")
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["event"] for line in lines] == ["failed", "stdlib failed"]
    assert all("Traceback" in line["exception"] for line in lines)
    for secret in ("rt.abc.def", JWT, "hunter2"):
        assert secret not in out


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("BEARER abcdefghijklmnop", "BEARER"),
        ("basic dXNlcjpwYXNzd29yZA==", "basic"),
        (f"x{JWT}", "x"),
        ("state=1&client_secret=s3cr3t", "state=1&client_secret="),
    ],
)
def test_the_quick_check_before_scrubbing_misses_no_pattern(text: str, kept: str) -> None:
    # Only texts holding a hint of a secret (eyJ, =, bearer, basic) go through the patterns.
    scrubbed = run(detail=text)["detail"]
    assert REDACTED in str(scrubbed)
    assert str(scrubbed).startswith(kept)


def test_plain_values_and_ordinary_text_pass_unchanged() -> None:
    event = run(path="/token", status=200, ratio=0.5, flag=True, nothing=None, scope="notes:read notes:write")
    assert event == {
        "event": "x",
        "path": "/token",
        "status": 200,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "scope": "notes:read notes:write",
    }


def _scrubbed_by_every_pattern(text: str) -> str:
    """What a text becomes through all three patterns, with no quick check before them."""
    from broker.log import _BEARER, _JWT, _QUERY_SECRET

    text = _JWT.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


_PIECES = [
    "eyJ",
    "eyJhbGciOi.eyJzdWIi.c2ln",
    "=",
    "&",
    " ",
    "\t",
    "bearer ",
    "BaSiC ",
    "ba\u017fic ",
    "Bearer",
    "token=",
    "code=",
    "refresh_token=",
    "access_token=",
    "\u017f",  # long s: (?i) matches it as s
    "\u212a",  # Kelvin sign
    "\u0130",
    "abcdefgh",
    "dXNlcjpwYXNz",
    ".",
    "-",
    "_",
    "uid=",
    "bE",
    "BA",
    "bb",
    "ab",
    "Basic",
    "beARER ",
    "\u0131",  # dotless i
    "CODE=",
    "Token=",
    "client_Secret=",
    "PASSWORD=",
    "code_verifier=",
    "\u212aen=",  # Kelvin sign: (?i) matches it as k in token
    "pa\u017f\u017fword=",
    "id_token",
    "secret",
    "=code=",
]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES) | st.text(max_size=6), max_size=8).map("".join))
def test_the_quick_checks_scrub_exactly_as_every_pattern_would(text: str) -> None:
    from broker.log import _scrub_text

    assert _scrub_text(text) == _scrubbed_by_every_pattern(text)


def test_the_bearer_quick_check_sees_every_case_of_its_letters() -> None:
    # The check looks for "b"/"B", then "be"/"ba" lower-cased: sound only while (?i) matches no
    # other character for b, e and a, and str.lower maps each one it matches to the small letter.
    import sys

    for letter in "bea":
        pattern = re.compile(f"(?i){letter}")
        matched = [chr(c) for c in range(sys.maxunicode + 1) if pattern.match(chr(c))]
        assert sorted(matched) == sorted({letter, letter.upper()})
        assert {m.lower() for m in matched} == {letter}


@pytest.mark.usefixtures("restore_logging")
def test_every_line_is_ascii_json_whatever_its_values(capsys: pytest.CaptureFixture[str]) -> None:
    import datetime
    import enum
    import uuid

    class Colour(enum.Enum):
        RED = 1

    class Opaque:
        def __repr__(self) -> str:
            return f"Opaque({JWT})"

    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    configure_logging("info", "json", cache=False)
    log = structlog.get_logger("t")
    log.info("x", name="Zoë \u2603", ident=ident, colour=Colour.RED, when=when, nested={"at": [when]})
    log.info("y", big=2**70, odd="\udc80", raw=b"Bearer abcdefghijkl", thing=Opaque(), keys={1: "one"})
    out = capsys.readouterr().out
    assert out.isascii()
    first, second = (json.loads(line) for line in out.splitlines())
    # What the standard library's encoder wrote before: the text, a UUID's or an Enum's repr.
    assert first["name"] == "Zoë \u2603"
    assert first["ident"] == repr(ident)
    assert first["colour"] == repr(Colour.RED)
    assert first["when"] == repr(when)
    assert first["nested"] == {"at": [repr(when)]}
    assert second["big"] == 2**70
    assert second["odd"] == "\udc80"
    assert second["raw"] == f"b'Bearer {REDACTED}'"
    assert second["thing"] == f"Opaque({REDACTED})"
    assert second["keys"] == {"1": "one"}


def test_a_line_is_out_before_the_process_dies_without_flushing() -> None:
    # Served, stdout is a pipe or a file: each line is one write to its descriptor, nothing kept
    # in a buffer for an exit to flush; what was printed before still comes first.
    import subprocess
    import sys

    program = (
        "import os, structlog\n"
        "from broker.log import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "print('printed first')\n"
        "structlog.get_logger('t').info('token_issued', refresh_token='rt-secret', note='caf\\u00e9')\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, check=True).stdout
    first, line = out.decode("ascii").splitlines()
    assert first == "printed first"
    event = json.loads(line)
    assert (event["event"], event["refresh_token"], event["note"]) == ("token_issued", REDACTED, "caf\u00e9")
