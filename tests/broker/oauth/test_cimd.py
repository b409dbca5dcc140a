"""Client ID metadata documents, served by a real HTTPS server on 127.0.0.1 with a throwaway CA."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from structlog.testing import capture_logs

from broker.config.models import RegistrationConfig
from broker.devstack import free_port
from broker.oauth import cimd
from broker.oauth.cimd import MetadataDocuments, cache_ttl, is_public_address, url_problem
from tests.http import running
from tests.tls import CA, make_ca

_REMOVE = object()


@dataclass
class Reply:
    body: Any  # a dict goes out as JSON, bytes as they are, a list of bytes as a chunked stream
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class DocServer:
    port: int
    replies: dict[str, Reply] = field(default_factory=dict)
    hits: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)

    def url(self, path: str = "/client.json", host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"

    def publish(self, path: str = "/client.json", body: Any = None, **reply: Any) -> str:
        url = self.url(path)
        self.replies[path] = Reply(document(url) if body is None else body, **reply)
        return url

    def paths(self) -> list[str]:
        return [path for path, _ in self.hits]


def document(url: str, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "client_id": url,
        "client_name": "Example Agent",
        "client_uri": "https://agent.example/",
        "redirect_uris": ["http://127.0.0.1/callback", "http://localhost:33418/callback"],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not _REMOVE}


async def _serve(request: Request) -> Response:
    state: DocServer = request.app.state.docs
    state.hits.append((request.url.path, request.headers.get("host", "")))
    reply = state.replies.get(request.url.path)
    if reply is None:
        return Response(status_code=404)
    await asyncio.sleep(reply.delay)
    if isinstance(reply.body, list):
        return StreamingResponse(iter(reply.body), status_code=reply.status, media_type="application/json")
    content = json.dumps(reply.body).encode() if isinstance(reply.body, dict) else reply.body
    return Response(content, status_code=reply.status, headers=reply.headers, media_type="application/json")


def _app(state: DocServer) -> Starlette:
    app = Starlette(routes=[Route("/{path:path}", _serve)])
    app.state.docs = state
    return app


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def doc_server(ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocServer]:
    cert, key = ca.issue(tmp_path_factory.mktemp("tls"), hosts=["localhost", "127.0.0.1"])
    state = DocServer(port=free_port())
    with running(_app(state), state.port, ssl_certfile=cert, ssl_keyfile=key):
        yield state


@pytest.fixture
def server(doc_server: DocServer) -> DocServer:
    doc_server.replies.clear()
    doc_server.hits.clear()
    return doc_server


def settings(ca: CA, **overrides: Any) -> RegistrationConfig:
    values: dict[str, Any] = {"cimd_allow_private_addresses": ["127.0.0.0/8"], "cimd_ca_file": str(ca.cert_path)}
    return RegistrationConfig(**{**values, **overrides})


@pytest.fixture
async def make_docs(ca: CA) -> AsyncIterator[Callable[..., MetadataDocuments]]:
    made: list[MetadataDocuments] = []

    def make(**overrides: Any) -> MetadataDocuments:
        made.append(MetadataDocuments(settings(ca, **overrides)))
        return made[-1]

    yield make
    for documents in made:
        await documents.aclose()


@pytest.fixture
def docs(make_docs: Callable[..., MetadataDocuments]) -> MetadataDocuments:
    return make_docs()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [time.monotonic()]
    monkeypatch.setattr(cimd, "_monotonic", lambda: now[0])
    return now


async def refused(documents: MetadataDocuments, url: str) -> str:
    """Assert that ``url`` is refused, and return the logged reason."""
    with capture_logs() as logs:
        assert await documents.get(url) is None
    [entry] = [e for e in logs if e["event"] == "cimd_refused"]
    assert entry["log_level"] == "warning"
    assert entry["url"] == url
    return str(entry["reason"])


async def test_valid_document(server: DocServer, docs: MetadataDocuments) -> None:
    url = server.publish()
    client = await docs.get(url)
    assert client is not None
    assert client.client_id == url
    assert client.kind == "metadata_document"
    assert client.client_name == "Example Agent"
    assert client.redirect_uris == ("http://127.0.0.1/callback", "http://localhost:33418/callback")
    assert client.application_type == "native"
    assert client.token_endpoint_auth_method == "none"
    assert client.is_public
    assert client.grant_types == ("authorization_code", "refresh_token")
    assert client.client_uri == "https://agent.example/"
    assert client.verified_domain == "localhost"
    # Connected to the checked address, but asked for (and verified) the hostname.
    assert server.hits == [("/client.json", f"localhost:{server.port}")]


async def test_web_client_with_explicit_metadata(server: DocServer, docs: MetadataDocuments) -> None:
    url = server.url()
    server.publish(
        body=document(
            url,
            redirect_uris=["https://agent.example/oauth/callback"],
            grant_types=["authorization_code"],
            token_endpoint_auth_method="none",
            response_types=["code"],
        )
    )
    client = await docs.get(url)
    assert client is not None
    assert client.application_type == "web"
    assert client.grant_types == ("authorization_code",)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"client_id": "https://other.example/client.json"}, "is not its URL"),
        ({"client_id": _REMOVE}, "is not its URL"),
        ({"client_name": _REMOVE}, "client_name is missing"),
        ({"client_name": "  "}, "client_name must be"),
        ({"redirect_uris": _REMOVE}, "redirect_uris is missing"),
        ({"redirect_uris": []}, "non-empty list"),
        ({"redirect_uris": ["http://agent.example/callback"]}, "plain http"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "not allowed"),
        ({"redirect_uris": ["https://agent.example/cb#x"]}, "fragment"),
        ({"application_type": "web"}, "loopback redirects are for native clients"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "not supported"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "not supported"),
        ({"client_secret": "s3cret"}, "client secret"),
        ({"grant_types": ["client_credentials"]}, "grant_types"),
        ({"response_types": ["token"]}, "response_types"),
        ({"client_name": "\u202eedoC oidutS lausiV"}, "client_name must not contain control, invisible or bidi"),
        ({"client_name": "Example\u200bAgent"}, "(U+200B)"),
        ({"client_name": "Example Agent\x00"}, "(U+0000)"),
        ({"software_version": "1.0\u2066"}, "software_version must not contain"),
        ({"client_uri": "javascript:alert(document.domain)"}, "client_uri must be an https URL"),
        ({"logo_uri": "http://agent.example/logo.png"}, "logo_uri must be an https URL"),
        ({"policy_uri": "data:text/html,<script>alert(1)</script>"}, "policy_uri must be an https URL"),
        ({"tos_uri": "javascript:alert(1)"}, "tos_uri must be an https URL"),
    ],
)
async def test_invalid_document(
    server: DocServer, docs: MetadataDocuments, changes: dict[str, Any], reason: str
) -> None:
    url = server.url()
    server.publish(body=document(url, **changes))
    assert reason in await refused(docs, url)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(b"<html>hello</html>"), "not JSON"),
        (Reply(b"[]"), "not a JSON object"),
        (Reply(b"\xff\xfe"), "not JSON"),
        (Reply(b"[" * 60000), "not JSON"),
        (Reply(b" " * (64 * 1024 + 1)), "larger than 64 KiB"),
        (Reply([b" " * 8192] * 9), "larger than 64 KiB"),  # chunked: no Content-Length to trust
        (Reply(b"{}", status=404), "HTTP 404"),
        (Reply(b"{}", headers={"Content-Encoding": "gzip"}), "content-encoded"),
    ],
)
async def test_bad_response(server: DocServer, docs: MetadataDocuments, reply: Reply, reason: str) -> None:
    server.replies["/client.json"] = reply
    assert reason in await refused(docs, server.url())


async def test_redirect_is_not_followed(server: DocServer, docs: MetadataDocuments) -> None:
    server.publish()
    moved = server.publish("/moved", body=b"", status=302, headers={"Location": server.url()})
    assert "redirects are not followed" in await refused(docs, moved)
    assert server.paths() == ["/moved"]


async def test_private_address_refused_before_any_fetch(
    server: DocServer, make_docs: Callable[..., MetadataDocuments]
) -> None:
    url = server.publish()
    reason = await refused(make_docs(cimd_allow_private_addresses=[]), url)
    assert "127.0.0.1, which is not a public address" in reason
    other_range = make_docs(cimd_allow_private_addresses=["10.0.0.0/8", "::1/128"])
    assert "not a public address" in await refused(other_range, server.url(host="127.0.0.1"))
    assert server.hits == []


async def test_trusted_domains(server: DocServer, make_docs: Callable[..., MetadataDocuments]) -> None:
    url = server.publish()
    untrusted = make_docs(cimd_trusted_domains=["example.com"])
    assert "not in the trusted domains" in await refused(untrusted, url)
    assert server.hits == []
    assert await make_docs(cimd_trusted_domains=["example.com", "localhost"]).get(url) is not None


async def test_http_url_refused_without_fetch(server: DocServer, docs: MetadataDocuments) -> None:
    server.publish()
    assert "not an https URL" in await refused(docs, f"http://localhost:{server.port}/client.json")
    assert server.hits == []


async def test_certificate_must_be_trusted(server: DocServer, make_docs: Callable[..., MetadataDocuments]) -> None:
    url = server.publish()
    assert "CERTIFICATE_VERIFY_FAILED" in await refused(make_docs(cimd_ca_file=None), url)
    assert server.hits == []


async def test_certificate_is_checked_for_the_hostname_not_the_address(
    ca: CA, tmp_path: Any, docs: MetadataDocuments
) -> None:
    cert, key = ca.issue(tmp_path, hosts=["localhost"])  # no 127.0.0.1 in this one
    state = DocServer(port=free_port())
    by_name, by_address = state.url(), state.url(host="127.0.0.1")
    state.replies["/client.json"] = Reply(document(by_name))
    with running(_app(state), state.port, ssl_certfile=cert, ssl_keyfile=key):
        assert await docs.get(by_name) is not None
        assert "CERTIFICATE_VERIFY_FAILED" in await refused(docs, by_address)
    assert state.paths() == ["/client.json"]


@pytest.mark.parametrize(
    ("url", "trusted", "problem"),
    [
        ("https://agent.example/client.json", [], None),
        ("https://agent.example:8443/clients/a.json?v=2", [], None),
        ("https://app.example.com/c", ["example.com"], None),
        ("https://example.com/c", ["Example.COM"], None),
        ("https://badexample.com/c", ["example.com"], "not in the trusted domains"),
        ("https://example.com.evil.net/c", ["example.com"], "not in the trusted domains"),
        ("http://agent.example/client.json", [], "not an https URL"),
        ("HTTPS://agent.example/client.json", [], "not an https URL"),
        ("https:///client.json", [], "no host"),
        ("https://agent.example", [], "a path is required"),
        ("https://agent.example/", [], "a path is required"),
        ("https://agent.example/client.json#x", [], "fragment"),
        ("https://user:pw@agent.example/client.json", [], "userinfo"),
        ("https://user@agent.example/client.json", [], "userinfo"),
        ("https://agent.example/a/../client.json", [], "dot segments"),
        ("https://agent.example/./client.json", [], "dot segments"),
        ("https://agent.example/a/%2E%2e/client.json", [], "dot segments"),
        ("https://agent.example:99999/client.json", [], "not a valid URL"),
        ("https://agent.example/client .json", [], "printable ASCII"),
        ("https://agent.exam\tple/client.json", [], "printable ASCII"),
        ("https://agent.example\\@evil.net/client.json", [], "printable ASCII"),
        ("https://agént.example/client.json", [], "printable ASCII"),
        ("https://agent.example/" + "a" * 2000, [], "longer than 2000"),
    ],
)
def test_url_rules(url: str, trusted: list[str], problem: str | None) -> None:
    found = url_problem(url, trusted)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("169.254.169.254", False),  # cloud metadata
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:93.184.215.14", True),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 to 169.254.169.254
        ("64:ff9b::5db8:d70e", True),  # NAT64 to a public address
        ("64:ff9b:1:5db8:d7:e00::", False),  # local-use NAT64 prefix: whatever it embeds
        ("2002:a9fe:a9fe::1", False),  # 6to4 from 169.254.169.254
        ("2002:5db8:d70e::1", True),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        (None, 300),
        ("public", 300),
        ("max-age=3600", 3600),
        ('private, max-age="120"', 120),
        ("max-age=10", 60),
        ("max-age=9999999", 86400),
        ("max-age=0", 0),
        ("max-age=-5", 0),
        ("no-store", 0),
        ("public, no-cache", 0),
        ("max-age=3600, no-store", 0),
        ("max-age=soon", 300),
    ],
)
def test_cache_ttl(header: str | None, ttl: float) -> None:
    assert cache_ttl(header) == ttl


async def test_cache_follows_max_age(server: DocServer, docs: MetadataDocuments, clock: list[float]) -> None:
    url = server.publish(headers={"Cache-Control": "max-age=3600"})
    first = await docs.get(url)
    assert first is not None
    assert await docs.get(url) is first
    clock[0] += 3599
    assert await docs.get(url) is first
    assert len(server.hits) == 1
    clock[0] += 2
    again = await docs.get(url)
    assert again is not None
    assert again is not first  # fetched anew
    assert (again.client_id, again.redirect_uris) == (first.client_id, first.redirect_uris)
    assert len(server.hits) == 2


async def test_default_cache_is_five_minutes(server: DocServer, docs: MetadataDocuments, clock: list[float]) -> None:
    url = server.publish()
    await docs.get(url)
    clock[0] += 299
    await docs.get(url)
    assert len(server.hits) == 1
    clock[0] += 2
    await docs.get(url)
    assert len(server.hits) == 2


@pytest.mark.parametrize("cache_control", ["max-age=0", "no-store", "no-cache"])
async def test_uncacheable_document_is_fetched_each_time(
    server: DocServer, docs: MetadataDocuments, cache_control: str
) -> None:
    url = server.publish(headers={"Cache-Control": cache_control})
    assert await docs.get(url) is not None
    assert await docs.get(url) is not None
    assert len(server.hits) == 2


async def test_failure_is_cached_for_30_seconds(server: DocServer, docs: MetadataDocuments, clock: list[float]) -> None:
    url = server.url()
    server.publish(body=b"not json")
    assert await docs.get(url) is None
    server.publish()
    clock[0] += 29
    assert await docs.get(url) is None
    assert len(server.hits) == 1
    clock[0] += 2
    assert await docs.get(url) is not None
    assert len(server.hits) == 2


async def test_concurrent_gets_fetch_once(server: DocServer, docs: MetadataDocuments) -> None:
    url = server.publish(headers={"Cache-Control": "no-store"}, delay=0.3)
    clients = await asyncio.gather(*(docs.get(url) for _ in range(50)))
    assert clients[0] is not None
    assert all(c is clients[0] for c in clients)
    assert len(server.hits) == 1


async def test_cancelled_caller_does_not_cancel_the_shared_fetch(server: DocServer, docs: MetadataDocuments) -> None:
    url = server.publish(delay=0.3)
    impatient = asyncio.create_task(docs.get(url))
    patient = asyncio.create_task(docs.get(url))
    await asyncio.sleep(0.1)
    impatient.cancel()
    assert await patient is not None
    assert len(server.hits) == 1


async def test_timeout(server: DocServer, make_docs: Callable[..., MetadataDocuments]) -> None:
    url = server.publish(delay=2)
    started = time.monotonic()
    assert "timed out" in await refused(make_docs(cimd_timeout=0.3), url)
    assert time.monotonic() - started < 1.5  # did not wait for the slow answer


async def test_cache_is_bounded(server: DocServer, docs: MetadataDocuments, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cimd, "MAX_ENTRIES", 2)
    first, second, third = (server.publish(f"/{name}.json") for name in ("a", "b", "c"))
    for url in (first, second, first, third, first):
        assert await docs.get(url) is not None
    assert server.paths() == ["/a.json", "/b.json", "/c.json", "/a.json"]  # the oldest entry made room


async def test_usable_after_aclose(server: DocServer, docs: MetadataDocuments) -> None:
    url = server.publish(headers={"Cache-Control": "no-store"})
    assert await docs.get(url) is not None
    await docs.aclose()
    assert await docs.get(url) is not None
    assert len(server.hits) == 2
