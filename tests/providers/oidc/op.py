"""The test OpenID provider (``tests/oidc-op/server.mjs``, node-oidc-provider) and a browser for it.

``start_op`` installs the npm packages when needed (``npm ci``, under a file lock so parallel
test workers do not install over each other) and starts one OP on loopback ports it picks
itself; ``TestOP`` drives its admin hooks; ``sign_in`` plays the user at its login and consent
pages until the OP redirects back to the relying party.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from broker.devstack.process import ChildProcess, wait_until
from tests.node import ensure_npm_packages

OP_DIR = Path(__file__).resolve().parents[2] / "oidc-op"
START_TIMEOUT = 30
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}


def ensure_packages() -> None:
    ensure_npm_packages(OP_DIR, "the OIDC tests")


@dataclass
class TestOP:
    """A running test OP: its issuer and the admin hooks of server.mjs."""

    __test__ = False  # not a test class, whatever its name

    issuer: str
    admin: str
    child: ChildProcess

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.admin}{path}", json=body, timeout=10)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def put_client(
        self,
        client_id: str,
        *,
        redirect_uris: list[str],
        client_secret: str | None = None,
        post_logout_redirect_uris: list[str] | None = None,
        **metadata: Any,
    ) -> None:
        """Register or replace a client; ``metadata`` adds other client metadata
        (``backchannel_logout_uri``...)."""
        body: dict[str, Any] = {"redirect_uris": redirect_uris, **metadata}
        if client_secret is not None:
            body["client_secret"] = client_secret
        if post_logout_redirect_uris:
            body["post_logout_redirect_uris"] = post_logout_redirect_uris
        self._call("PUT", f"/test/clients/{client_id}", body)

    def set_groups(self, user: str, groups: list[str]) -> None:
        self._call("POST", f"/test/users/{user}/groups", {"groups": groups})

    def delete_user(self, user: str) -> None:
        self._call("DELETE", f"/test/users/{user}")

    def rotate_keys(self) -> list[str]:
        return list(self._call("POST", "/test/keys/rotate")["kids"])

    def tamper(self, mode: str | None) -> None:
        """Alter the ID token of the next token response (see server.mjs for the modes)."""
        self._call("POST", "/test/tamper", {"id_token": mode})

    def outage(self, status: int, paths: list[str] | None = None) -> None:
        """Answer ``status`` on ``paths`` (every OP path when None); status 0 ends the outage."""
        self._call("POST", "/test/outage", {"status": status, "paths": paths})

    def rotate_refresh_tokens(self, on: bool) -> None:
        self._call("POST", "/test/settings", {"rotateRefreshToken": on})

    def reset(self) -> None:
        self._call("POST", "/test/reset")

    def hits(self, path: str) -> int:
        return int(self._call("GET", "/test/stats").get(path, 0))

    def stop(self) -> None:
        self.child.stop()


def start_op(state: Path) -> TestOP:
    ensure_packages()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: the OIDC tests need Node.js 20+")
    state.mkdir(parents=True, exist_ok=True)
    config, ready = state / "op-config.json", state / "op-ready.json"
    config.write_text(json.dumps({"clients": []}))
    ready.unlink(missing_ok=True)
    child = ChildProcess("test OP", [node, str(OP_DIR / "server.mjs"), str(config), str(ready)], state / "op.log")
    child.start()
    wait_until(ready.exists, START_TIMEOUT, "the test OP", child)
    info = json.loads(ready.read_text())
    op = TestOP(issuer=info["issuer"], admin=info["admin"], child=child)

    def discovery_served() -> bool:
        url = f"{op.issuer}/.well-known/openid-configuration"
        return bool(httpx.get(url, timeout=2).json().get("issuer") == op.issuer)

    wait_until(discovery_served, START_TIMEOUT, "the test OP's discovery document", child)
    return op


_FORM = r'<form id="{}" method="post" action="([^"]+)"'


def sign_in(
    browser: httpx.Client,
    url: str,
    *,
    until: str,
    username: str = "alice",
    password: str | None = None,
    cancel: bool = False,
) -> str:
    """Open ``url`` (an authorization request) and sign in at the OP (or cancel there) until the OP
    redirects to a URL starting with ``until``; return that URL. ``browser`` keeps the cookies."""
    response = browser.get(url)
    for _ in range(16):
        if response.is_redirect:
            location = str(response.url.join(response.headers["location"]))
            if location.startswith(until):
                return location
            response = browser.get(location)
            continue
        assert response.status_code == 200, f"{response.url}: {response.status_code} {response.text[:500]}"
        page = response.text
        if cancel:
            form, data = "abort", {}
        elif 'id="login"' in page:
            form, data = "login", {"login": username, "password": password or PASSWORDS.get(username, "")}
        else:
            form, data = "consent", {}
        action = re.search(_FORM.format(form), page)
        assert action is not None, f"no {form} form at {response.url}: {page[:500]}"
        response = browser.post(response.url.join(action.group(1)), data=data)
    raise AssertionError(f"the OP never redirected to {until}")


def query_of(url: str) -> dict[str, str]:
    return dict(httpx.URL(url).params)


class FakeClock:
    """A monotonic clock the test moves by hand (discovery and JWKS caching, refetch limits)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
