"""The sign-in pages in real headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from tests.broker.conftest import BrokerFactory
from tests.broker.flows import REDIRECT, Broker, authorize_params, pkce_pair, register

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SECOND_LDAP = """
  - id: partner-ldap
    type: ldap
    display_name: Partner directory
    urls: ["{url}"]
    bind_dn: "{dn}"
    bind_password: "{password}"
    user_base_dn: ou=people,dc=demo,dc=local
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


def open_authorize(broker: Broker, browser: Browser) -> tuple[Page, list[str]]:
    client = register(broker)
    _, challenge = pkce_pair()
    page = browser.new_page()
    landed: list[str] = []

    def catch(route: Route) -> None:  # stands in for the MCP client's loopback listener
        landed.append(route.request.url)
        route.fulfill(status=200, content_type="text/html", body="<p>Signed in. You can close this window.</p>")

    page.route(f"{REDIRECT.rsplit('/', 1)[0]}/**", catch)
    query = "&".join(f"{k}={v}" for k, v in authorize_params(client["client_id"], challenge, state="st1").items())
    page.goto(f"{broker.base}/authorize?{query}")
    return page, landed


def test_ldap_sign_in_with_wrong_password_then_success(broker: Broker, browser: Browser, tmp_path: Path) -> None:
    page, landed = open_authorize(broker, browser)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Allow Test MCP client to access Team notes?")
    expect(page.get_by_text("unverified, dynamically registered application")).to_be_visible()
    page.screenshot(path=str(tmp_path / "consent.png"), full_page=True)
    page.get_by_role("button", name="Allow and continue").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to Demo directory")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not-her-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("The username or password is incorrect.")
    expect(page.get_by_label("Username")).to_have_value("alice")  # nothing typed is lost but the password
    expect(page.get_by_label("Password")).to_be_focused()
    page.screenshot(path=str(tmp_path / "login-error.png"), full_page=True)

    page.get_by_label("Password").fill("demo-alice")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Signed in.")).to_be_visible()
    query = parse_qs(urlsplit(landed[-1]).query)
    assert query["state"] == ["st1"]
    assert query["iss"] == [broker.base]
    assert query["code"][0].startswith("ac.")
    page.close()


def test_deny_returns_to_the_client_with_access_denied(broker: Broker, browser: Browser) -> None:
    page, landed = open_authorize(broker, browser)
    page.get_by_role("button", name="Deny").click()
    expect(page.get_by_text("Signed in.")).to_be_visible()
    assert parse_qs(urlsplit(landed[-1]).query)["error"] == ["access_denied"]
    page.close()


def test_carol_sees_the_no_access_page(broker: Broker, browser: Browser) -> None:
    page, _ = open_authorize(broker, browser)
    page.get_by_role("button", name="Allow and continue").click()
    page.get_by_label("Username").fill("carol")
    page.get_by_label("Password").fill("demo-carol")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You have no access to Team notes")
    expect(page.get_by_text("mcp-readers")).to_be_visible()
    page.close()


def test_provider_choice(broker_factory: BrokerFactory, browser: Browser, slapd: object) -> None:
    from broker.devstack import Slapd

    assert isinstance(slapd, Slapd)
    second = SECOND_LDAP.format(url=slapd.url, dn=slapd.service_dn, password=slapd.service_password)
    with broker_factory(providers=second) as broker:
        page, _ = open_authorize(broker, browser)
        group = page.get_by_role("group", name="Sign in with")
        expect(group.get_by_role("radio", name="Demo directory")).to_be_checked()
        group.get_by_role("radio", name="Partner directory").check()
        page.get_by_role("button", name="Allow and continue").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to Partner directory")
        page.close()


def test_the_page_cannot_be_framed(broker: Broker, browser: Browser) -> None:
    page, _ = open_authorize(broker, browser)
    consent_url = page.url
    framing = browser.new_page()
    framing.route(
        "http://attacker.test/",
        lambda route: route.fulfill(
            status=200, content_type="text/html", body=f'<iframe id="f" src="{consent_url}"></iframe>'
        ),
    )
    framing.goto("http://attacker.test/")
    frame = framing.frame_locator("#f")
    expect(frame.get_by_role("button", name="Allow and continue")).to_have_count(0)
    framing.close()
    page.close()


def test_redirect_provider_sign_in_through_entra(
    broker_factory: BrokerFactory, browser: Browser, tmp_path: Path
) -> None:
    """Provider choice, then a real redirect round trip through the Entra emulator (HTTPS)."""
    from tests.emulators.entra import EntraEmulator
    from tests.providers.entra.test_broker_flows import MAPPINGS, provider_yaml

    entra = EntraEmulator()
    with entra.serve(tmp_path), broker_factory(providers=provider_yaml(entra), mappings=MAPPINGS) as broker:
        entra.allow_redirect(f"{broker.base}/callback/entra")
        entra.next_user = "alice"
        context = browser.new_context(ignore_https_errors=True)  # the emulator's throwaway CA
        page = context.new_page()
        landed: list[str] = []
        page.route(
            f"{REDIRECT.rsplit('/', 1)[0]}/**",
            lambda route: (landed.append(route.request.url), route.fulfill(status=200, body="Signed in."))[1],
        )
        client = register(broker)
        _, challenge = pkce_pair()
        query = "&".join(f"{k}={v}" for k, v in authorize_params(client["client_id"], challenge, state="e1").items())
        page.goto(f"{broker.base}/authorize?{query}")
        page.get_by_role("group", name="Sign in with").get_by_role("radio", name="Contoso (Microsoft Entra ID)").check()
        page.get_by_role("button", name="Allow and continue").click()
        expect(page.get_by_text("Signed in.")).to_be_visible()
        query_back = parse_qs(urlsplit(landed[-1]).query)
        assert query_back["state"] == ["e1"]
        assert query_back["code"][0].startswith("ac.")
        context.close()
