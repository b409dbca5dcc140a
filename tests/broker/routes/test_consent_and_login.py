"""The consent and login pages: confused-deputy rules, CSRF, framing, and clear outcomes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from broker.devstack import Slapd
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker, approve, authorize_params, hidden_inputs, pkce_pair, register


def start(broker: Broker, browser: httpx.Client, **over: str) -> httpx.Response:
    client = register(broker, **over)
    _, challenge = pkce_pair()
    page = browser.get("/authorize", params=authorize_params(client["client_id"], challenge))
    assert page.status_code == 200, page.text
    return page


def test_consent_page_names_client_redirect_resource_and_scopes(broker: Broker) -> None:
    with broker.client() as browser:
        page = start(broker, browser, client_name="Cursor <script>")
    assert "Cursor &lt;script&gt;" in page.text  # escaped
    assert "unverified, dynamically registered application" in page.text
    assert "127.0.0.1" in page.text
    assert "Team notes" in page.text
    assert "notes:read" in page.text
    assert "notes:write" in page.text


def test_pages_cannot_be_framed_and_are_not_cached(broker: Broker) -> None:
    with broker.client() as browser:
        page = start(broker, browser)
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp
    assert "form-action 'self' http://127.0.0.1:33418" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"


def test_no_flow_cookie_before_approval(broker: Broker) -> None:
    with broker.client() as browser:
        page = start(broker, browser)
        cookies = page.headers.get_list("set-cookie")
        assert len(cookies) == 1
        assert cookies[0].startswith("mcpb_csrf=")
        assert "HttpOnly" in cookies[0]
        assert "SameSite=strict" in cookies[0]
        approved = browser.post("/consent", data={**hidden_inputs(page.text), "decision": "approve"})
        flow_cookie = [c for c in approved.headers.get_list("set-cookie") if c.startswith("mcpb_flow=")]
        assert flow_cookie
        assert "SameSite=lax" in flow_cookie[0]


def test_consent_post_without_the_csrf_cookie_is_refused(broker: Broker) -> None:
    with broker.client() as browser:
        page = start(broker, browser)
    # A cross-site auto-submitted form: right hidden fields, but no cookie.
    forged = httpx.post(f"{broker.base}/consent", data={**hidden_inputs(page.text), "decision": "approve"})
    assert forged.status_code == 403
    assert "not submitted from this site" in forged.text


def test_consent_post_with_a_wrong_csrf_token_is_refused(broker: Broker) -> None:
    with broker.client() as browser:
        page = start(broker, browser)
        fields = {**hidden_inputs(page.text), "csrf": "wrong", "decision": "approve"}
        assert browser.post("/consent", data=fields).status_code == 403


def test_login_page_needs_the_approving_browser(broker: Broker) -> None:
    with broker.client() as browser:
        page = start(broker, browser)
        approved = browser.post("/consent", data={**hidden_inputs(page.text), "decision": "approve"})
        login_url = approved.headers["location"]
    stranger = httpx.get(login_url)
    assert stranger.status_code == 400
    assert "Sign-in expired" in stranger.text


def test_wrong_password_and_unknown_user_read_the_same(broker: Broker) -> None:
    messages = []
    for username, password in (("alice", "not-her-password"), ("mallory", "whatever")):
        with broker.client() as browser:
            fields = approve(browser, start(broker, browser))
            failed = browser.post("/login", data={**fields, "username": username, "password": password})
        assert failed.status_code == 401
        messages.append(failed.text.split('id="login-error">')[1].split("<")[0])
    assert messages[0] == messages[1] == "The username or password is incorrect."


def test_injection_and_empty_password_are_plain_failures(broker: Broker) -> None:
    for username, password in (("*)(uid=*", "x"), ("admin)(|(a=*", "x"), ("alice", "")):
        with broker.client() as browser:
            fields = approve(browser, start(broker, browser))
            failed = browser.post("/login", data={**fields, "username": username, "password": password})
        assert failed.status_code == 401, (username, failed.text)


def test_five_failures_end_the_sign_in(broker: Broker) -> None:
    with broker.client() as browser:
        fields = approve(browser, start(broker, browser))
        statuses = [
            browser.post("/login", data={**fields, "username": "alice", "password": f"bad{i}"}).status_code
            for i in range(5)
        ]
        after = browser.post("/login", data={**fields, "username": "alice", "password": "demo-alice"})
    assert statuses == [401, 401, 401, 401, 429]
    assert after.status_code == 400  # the flow is gone; the right password no longer helps


def test_parallel_failures_on_one_flow_are_each_counted(broker_factory: BrokerFactory) -> None:
    """Five wrong passwords posted at once on one sign-in page: five attempts, so the flow ends."""
    with broker_factory(extra="login_protection: {max_failures_per_user: 100}") as b, b.client() as browser:
        fields = approve(browser, start(b, browser))
        browsers = [httpx.Client(base_url=b.base, cookies=browser.cookies, timeout=10) for _ in range(5)]
        try:
            with ThreadPoolExecutor(5) as pool:
                statuses = list(
                    pool.map(
                        lambda i: (
                            browsers[i]
                            .post("/login", data={**fields, "username": "alice", "password": f"bad{i}"})
                            .status_code
                        ),
                        range(5),
                    )
                )
        finally:
            for each in browsers:
                each.close()
        after = browser.post("/login", data={**fields, "username": "alice", "password": "demo-alice"})
    assert sorted(statuses) == [401, 401, 401, 401, 429]
    assert after.status_code == 400  # the flow is gone


def test_the_password_form_has_its_own_csrf_token_from_the_approval(broker: Broker) -> None:
    """Approving sets the password form's CSRF cookie (not the consent form's token); the form
    carries it without setting another. Without that cookie the form mints a fresh one, and a
    post must carry the token of the cookie it is sent with."""
    with broker.client() as browser:
        page = start(broker, browser)
        consent_token = hidden_inputs(page.text)["csrf"]
        approved = browser.post("/consent", data={**hidden_inputs(page.text), "decision": "approve"})
        set_csrf = [c for c in approved.headers.get_list("set-cookie") if c.startswith("mcpb_csrf=")]
        assert len(set_csrf) == 1
        assert "SameSite=strict" in set_csrf[0]
        token = browser.cookies["mcpb_csrf"]
        assert token != consent_token
        form_page = browser.get(approved.headers["location"])
        assert form_page.status_code == 200
        assert hidden_inputs(form_page.text)["csrf"] == token
        assert not any(c.startswith("mcpb_csrf=") for c in form_page.headers.get_list("set-cookie"))

        browser.cookies.delete("mcpb_csrf")
        fresh_page = browser.get(approved.headers["location"])
        fresh = hidden_inputs(fresh_page.text)["csrf"]
        assert fresh != token
        assert browser.cookies["mcpb_csrf"] == fresh
        stale = browser.post("/login", data={**hidden_inputs(form_page.text), "username": "alice", "password": "x"})
        assert stale.status_code == 403  # the older token is no longer the flow's
        done = browser.post(
            "/login", data={**hidden_inputs(fresh_page.text), "username": "alice", "password": "demo-alice"}
        )
        assert done.status_code == 303


def test_flows_are_single_use(broker: Broker) -> None:
    with broker.client() as browser:
        page = start(broker, browser)
        fields = hidden_inputs(page.text)
        assert browser.post("/consent", data={**fields, "decision": "approve"}).status_code == 303
        again = browser.post("/consent", data={**fields, "decision": "approve"})
    assert again.status_code == 400


def test_bad_form_input_gets_a_page_not_a_500(broker: Broker) -> None:
    response = httpx.post(f"{broker.base}/consent", content=b"\xff\xfe", headers={"content-type": "text/plain"})
    assert response.status_code == 400
    assert "text/html" in response.headers["content-type"]
    assert httpx.post(f"{broker.base}/login", data={"flow": "x" * 5000}).status_code == 400
    assert httpx.get(f"{broker.base}/authorize").status_code == 400
    assert httpx.get(f"{broker.base}/callback/demo-ldap?state=nope").status_code == 400


def test_login_hint_email_domain_preselects_its_provider(broker_factory: BrokerFactory, slapd: Slapd) -> None:
    partner = f"""
  - id: partner-ldap
    type: ldap
    display_name: Partner directory
    email_domains: [partner.example]
    urls: ["{slapd.url}"]
    bind_dn: "{slapd.service_dn}"
    bind_password: "{slapd.service_password}"
    user_base_dn: ou=people,dc=demo,dc=local
"""
    with broker_factory(providers=partner) as broker, broker.client() as browser:
        client = register(broker)
        _, challenge = pkce_pair()
        plain = browser.get("/authorize", params=authorize_params(client["client_id"], challenge))
        assert 'value="demo-ldap" checked' in plain.text
        hinted = browser.get(
            "/authorize", params=authorize_params(client["client_id"], challenge, login_hint="ann@Partner.example")
        )
        assert 'value="partner-ldap" checked' in hinted.text
        assert 'value="demo-ldap" checked' not in hinted.text
