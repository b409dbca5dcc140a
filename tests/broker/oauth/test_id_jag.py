"""The jwt-bearer grant with ID-JAGs (RFC 7523, draft-ietf-oauth-identity-assertion-authz-grant,
MCP Enterprise-Managed Authorization): the broker as an MCP server's authorization server redeems
an enterprise IdP's assertions, and refuses every forged, stale, replayed or misaddressed one.

The IdP (``jag_issuer``) signs with real ES256 and RS256 keys served over loopback HTTP; the
broker runs on real Redis and the session's slapd."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from structlog.testing import capture_logs

from broker.app import create_app
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from broker.oauth.id_jag import ID_JAG_PROFILE, JWT_BEARER, TYP
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import INTROSPECTOR_SECRET, RESOURCE, Broker, broker_yaml, register
from tests.broker.oauth.jag_issuer import JagIssuer, b64url, jag_issuer
from tests.broker.oauth.test_refresh_paths import directory_user, leave_group
from tests.http import running

CLIENT = "notes-server"  # the tests' static confidential client (it may introspect `notes` too)
OTHER_RESOURCE = "http://127.0.0.1:8002/mcp"
ADMIN = "admin-token-" + "a" * 32


def trust(idp: JagIssuer) -> str:
    """Three trusted issuers of the test IdP: users looked up in LDAP by username (discovery),
    groups taken from the assertion (explicit jwks_uri, RS256 only), users looked up by email."""
    return f"""
admin:
  token: "{ADMIN}"
identity_assertion:
  trusted_issuers:
    - issuer: {idp.issuer("corp")}
      provider: demo-ldap
      resources: [notes]
    - issuer: {idp.issuer("groups")}
      jwks_uri: {idp.issuer("groups")}/jwks
      algorithms: [RS256]
      provider: demo-ldap
      groups_claim: groups
      resources: [notes, other]
    - issuer: {idp.issuer("mail")}
      provider: mail-ldap
      subject_claim: email
      resources: [notes]
"""


def mail_provider(slapd: Slapd) -> str:
    return f"""
  - id: mail-ldap
    type: ldap
    display_name: Directory by email
    urls: ["{slapd.url}"]
    bind_dn: "{slapd.service_dn}"
    bind_password: "{slapd.service_password}"
    user_base_dn: ou=people,dc=demo,dc=local
    group_base_dn: ou=groups,dc=demo,dc=local
    user_filter: "(&(objectClass=inetOrgPerson)(|(uid={{username}})(mail={{username}})))"
"""


MAIL_MAPPING = """
  - id: mail-readers
    resource: notes
    provider: mail-ldap
    groups: [mcp-readers]
    scopes: [notes:read]
"""


@pytest.fixture
def idp() -> Iterator[JagIssuer]:
    with jag_issuer() as issuer:
        yield issuer


@pytest.fixture
def jag_broker(broker_factory: BrokerFactory, idp: JagIssuer, slapd: Slapd) -> Iterator[Broker]:
    with broker_factory(extra=trust(idp), providers=mail_provider(slapd), mappings=MAIL_MAPPING) as running_broker:
        yield running_broker


def redeem(
    base: str,
    assertion: str | None,
    *,
    client_id: str = CLIENT,
    secret: str | None = INTROSPECTOR_SECRET,
    method: str = "client_secret_post",
    **form: str | None,
) -> httpx.Response:
    """A token request as the MCP SDK's IdentityAssertionOAuthProvider sends it: client_id in the
    body, the secret in the body or in Basic credentials; ``form`` adds or removes (None) fields."""
    data: dict[str, str | None] = {
        "grant_type": JWT_BEARER,
        "assertion": assertion,
        "client_id": client_id,
        "resource": RESOURCE,
        **form,
    }
    headers = {}
    if method == "client_secret_basic" and secret is not None:
        pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    elif secret is not None:
        data["client_secret"] = secret
    body = {k: v for k, v in data.items() if v is not None}
    return httpx.post(f"{base}/token", data=body, headers=headers, timeout=10)


def jag(idp: JagIssuer, broker: Broker, **over: Any) -> dict[str, Any]:
    return idp.claims(broker.base, CLIENT, RESOURCE, **over)


def refused(response: httpx.Response, error: str = "invalid_grant", status: int = 400) -> str:
    assert response.status_code == status, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    assert body["error_description"]
    return str(body["error_description"])


def verified(broker: Broker, token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(httpx.get(f"{broker.base}/jwks.json").json())
    decoded = jwt.decode(token, keys, algorithms=["ES256"])
    assert decoded.header["typ"] == "at+jwt"
    return dict(decoded.claims)


# -- metadata -------------------------------------------------------------------------------------
def test_metadata_lists_the_grant_and_the_profile_with_trusted_issuers(jag_broker: Broker) -> None:
    doc = httpx.get(f"{jag_broker.base}/.well-known/oauth-authorization-server").json()
    assert JWT_BEARER in doc["grant_types_supported"]
    assert doc["authorization_grant_profiles_supported"] == [ID_JAG_PROFILE]


def test_without_trusted_issuers_the_grant_is_not_offered(broker: Broker, idp: JagIssuer) -> None:
    doc = httpx.get(f"{broker.base}/.well-known/oauth-authorization-server").json()
    assert JWT_BEARER not in doc["grant_types_supported"]
    assert "authorization_grant_profiles_supported" not in doc
    response = redeem(broker.base, idp.sign(jag(idp, broker)))
    refused(response, "unsupported_grant_type")


# -- redeemed ---------------------------------------------------------------------------------------
def test_an_id_jag_is_redeemed_for_an_access_token_bound_to_its_resource(jag_broker: Broker, idp: JagIssuer) -> None:
    with capture_logs() as logs:
        response = redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, scope="notes:read")))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "notes:read"  # alice may write too, but the IdP granted read only
    assert "refresh_token" not in body  # the client presents a new ID-JAG instead
    claims = verified(jag_broker, body["access_token"])
    assert claims["aud"] == RESOURCE
    assert claims["iss"] == jag_broker.base
    assert claims["client_id"] == CLIENT
    assert claims["sub"].startswith("demo-ldap:")  # alice's LDAP subject, as after a browser sign-in
    assert claims["sub"] != "demo-ldap:alice"
    redeemed = [e for e in logs if e["event"] == "assertion_redeemed"]
    assert len(redeemed) == 1
    assert redeemed[0]["issuer"] == idp.issuer()
    assert redeemed[0]["client_id"] == CLIENT
    assert redeemed[0]["assertion_sub"] == "alice"
    assert redeemed[0]["sub"] == claims["sub"]
    assert redeemed[0]["resource"] == RESOURCE
    assert redeemed[0]["scope"] == "notes:read"


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
def test_both_ways_the_sdk_client_authenticates(jag_broker: Broker, idp: JagIssuer, method: str) -> None:
    response = redeem(jag_broker.base, idp.sign(jag(idp, jag_broker)), method=method)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "notes:read notes:write"


@pytest.mark.parametrize(
    ("user", "assertion_scope", "requested", "granted"),
    [
        ("alice", "notes:read notes:write", None, "notes:read notes:write"),
        ("bob", "notes:read notes:write", None, "notes:read"),  # the policy gives bob read only
        ("alice", "notes:write", "notes:read", "notes:read"),  # write implies read; the request narrows
        ("alice", None, "notes:read", "notes:read"),  # no scope claim: the policy and the request decide
        ("alice", "notes:read unknown:scope", "notes:read notes:write", "notes:read"),
    ],
)
def test_scopes_are_the_intersection_of_assertion_request_and_policy(
    jag_broker: Broker, idp: JagIssuer, user: str, assertion_scope: str | None, requested: str | None, granted: str
) -> None:
    assertion = idp.sign(jag(idp, jag_broker, sub=user, scope=assertion_scope))
    response = redeem(jag_broker.base, assertion, scope=requested)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == granted
    assert verified(jag_broker, response.json()["access_token"])["scope"] == granted


@pytest.mark.parametrize(
    ("user", "assertion_scope", "requested"),
    [
        ("carol", "notes:read notes:write", None),  # in no granting group
        ("alice", "notes:read", "other:use"),  # the request asks for what the assertion does not hold
        ("alice", "other:use", None),  # a scope of another resource
    ],
)
def test_an_empty_intersection_is_invalid_scope(
    jag_broker: Broker, idp: JagIssuer, user: str, assertion_scope: str, requested: str | None
) -> None:
    response = redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, sub=user, scope=assertion_scope)), scope=requested)
    refused(response, "invalid_scope")


def test_groups_from_a_trusted_groups_claim(jag_broker: Broker, idp: JagIssuer) -> None:
    claims = jag(idp, jag_broker, iss=idp.issuer("groups"), sub="u-1234", groups=["mcp-writers"])
    response = redeem(jag_broker.base, idp.sign(claims, alg="RS256"))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "notes:read notes:write"
    assert verified(jag_broker, response.json()["access_token"])["sub"] == "demo-ldap:u-1234"
    no_groups = jag(idp, jag_broker, iss=idp.issuer("groups"), sub="u-1234")
    refused(redeem(jag_broker.base, idp.sign(no_groups, alg="RS256")), "invalid_scope")


def test_a_user_named_by_email_is_looked_up_by_email(jag_broker: Broker, idp: JagIssuer) -> None:
    claims = jag(idp, jag_broker, iss=idp.issuer("mail"), sub="00u-okta-id", email="bob@demo.local")
    response = redeem(jag_broker.base, idp.sign(claims))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "notes:read"
    assert verified(jag_broker, response.json()["access_token"])["sub"].startswith("mail-ldap:")
    unknown = jag(idp, jag_broker, iss=idp.issuer("mail"), email="nobody@demo.local")
    refused(redeem(jag_broker.base, idp.sign(unknown)))
    no_email = jag(idp, jag_broker, iss=idp.issuer("mail"), email=None)
    refused(redeem(jag_broker.base, idp.sign(no_email)))


def test_an_unknown_user_is_refused(jag_broker: Broker, idp: JagIssuer) -> None:
    refused(redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, sub="nobody"))))


def test_each_redemption_sees_the_directory_as_it_is_now(jag_broker: Broker, idp: JagIssuer, slapd: Slapd) -> None:
    """Looked up at every redemption: a user who left a granting group gets less at the next
    ID-JAG, and a deleted account nothing, whatever the IdP still asserts."""
    with directory_user(slapd, ("mcp-readers", "mcp-writers")) as (uid, dn):
        granted = redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, sub=uid)))
        assert granted.json()["scope"] == "notes:read notes:write", granted.text
        leave_group(slapd, dn, "mcp-writers")
        assert redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, sub=uid))).json()["scope"] == "notes:read"
        leave_group(slapd, dn, "mcp-readers")
        refused(redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, sub=uid))), "invalid_scope")
    assert "not known here" in refused(redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, sub=uid))))


def test_the_grant_is_recorded_so_revocation_works(jag_broker: Broker, idp: JagIssuer) -> None:
    first = redeem(jag_broker.base, idp.sign(jag(idp, jag_broker))).json()["access_token"]
    second = redeem(jag_broker.base, idp.sign(jag(idp, jag_broker))).json()["access_token"]

    def active(token: str) -> bool:
        answer = httpx.post(
            f"{jag_broker.base}/introspect", data={"token": token}, auth=(CLIENT, INTROSPECTOR_SECRET)
        ).json()
        return bool(answer["active"])

    assert active(first)
    assert active(second)
    assert httpx.post(f"{jag_broker.base}/revoke", data={"token": first}, auth=(CLIENT, INTROSPECTOR_SECRET)).is_success
    assert not active(first)  # RFC 7009: the token's grant is revoked
    assert active(second)
    subject = verified(jag_broker, second)["sub"]
    revoked = httpx.post(
        f"{jag_broker.base}/admin/users/{quote(subject, safe='')}/revoke",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert revoked.status_code == 200, revoked.text
    assert len(revoked.json()["revoked"]) == 1  # the user's index holds it, as for a browser sign-in
    assert not active(second)


# -- refused: replay -------------------------------------------------------------------------------
def test_a_replayed_id_jag_is_refused(jag_broker: Broker, idp: JagIssuer) -> None:
    assertion = idp.sign(jag(idp, jag_broker))
    assert redeem(jag_broker.base, assertion).status_code == 200
    with capture_logs() as logs:
        description = refused(redeem(jag_broker.base, assertion))
    assert "already used" in description
    assert [e["event"] for e in logs if e.get("audit")] == ["assertion_replayed"]


async def test_replay_at_either_of_two_replicas_is_refused(redis_server: RedisServer, slapd: Slapd) -> None:
    """Two broker instances sharing one Redis (two replicas behind one issuer): an ID-JAG is spent
    once, whichever replica sees it first, also when both see it at the same moment."""
    with jag_issuer() as idp:
        port = free_port()
        text = broker_yaml(
            port,
            redis_server.url,
            slapd,
            prefix=f"t{time.time_ns()}",
            extra=trust(idp),
            providers=mail_provider(slapd),
            mappings=MAIL_MAPPING,
        )
        config = parse_config(text)
        with running(create_app(config), port) as first, running(create_app(config)) as second:
            one = Broker(config.issuer, config)
            assertion = idp.sign(jag(idp, one))
            assert (await asyncio.to_thread(redeem, second, assertion)).status_code == 200
            refused(await asyncio.to_thread(redeem, first, assertion))
            refused(await asyncio.to_thread(redeem, second, assertion))
            for _ in range(5):
                assertion = idp.sign(jag(idp, one))
                answers = await asyncio.gather(
                    *(asyncio.to_thread(redeem, base, assertion) for base in (first, second, first, second))
                )
                assert sorted(a.status_code for a in answers) == [200, 400, 400, 400]


# -- refused: the assertion itself ----------------------------------------------------------------
def test_wrong_audience_is_refused(jag_broker: Broker, idp: JagIssuer) -> None:
    for audience in ("https://other-as.example", f"{jag_broker.base}/", [jag_broker.base, "https://other.example"]):
        description = refused(redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, aud=audience))))
        assert "not addressed to this authorization server" in description
    refused(redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, aud=None))))


def test_an_id_jag_of_another_client_is_refused(jag_broker: Broker, idp: JagIssuer) -> None:
    other = register(jag_broker, token_endpoint_auth_method="client_secret_basic")
    for_other = idp.sign(jag(idp, jag_broker, client_id=other["client_id"]))
    with capture_logs() as logs:
        assert "another client" in refused(redeem(jag_broker.base, for_other))
    [event] = [e for e in logs if e["event"] == "assertion_refused"]
    assert event["reason"] == "client_id"
    assert event["client_id"] == CLIENT
    # Its own client may redeem it (any confidential client registered here).
    own = redeem(jag_broker.base, for_other, client_id=other["client_id"], secret=other["client_secret"])
    assert own.status_code == 200, own.text
    assert verified(jag_broker, own.json()["access_token"])["client_id"] == other["client_id"]


def test_client_authentication_is_required(jag_broker: Broker, idp: JagIssuer) -> None:
    assertion = idp.sign(jag(idp, jag_broker))
    refused(redeem(jag_broker.base, assertion, secret="wrong-" + "x" * 40), "invalid_client", 401)
    refused(redeem(jag_broker.base, assertion, secret=None), "invalid_client", 401)
    public = register(jag_broker)  # token_endpoint_auth_method none
    for_public = idp.sign(jag(idp, jag_broker, client_id=public["client_id"]))
    refused(redeem(jag_broker.base, for_public, client_id=public["client_id"], secret=None), "invalid_client", 401)
    # None of these spent the assertion.
    assert redeem(jag_broker.base, assertion).status_code == 200


def test_an_expired_or_overlong_id_jag_is_refused(jag_broker: Broker, idp: JagIssuer) -> None:
    now = int(time.time())
    expired = idp.sign(jag(idp, jag_broker, iat=now - 400, exp=now - 100))
    assert "expired" in refused(redeem(jag_broker.base, expired))
    future = idp.sign(jag(idp, jag_broker, iat=now + 600, exp=now + 700))
    assert "future" in refused(redeem(jag_broker.base, future))
    overlong = idp.sign(jag(idp, jag_broker, iat=now, exp=now + 3600))
    assert "lifetime" in refused(redeem(jag_broker.base, overlong))
    for missing in ("exp", "iat", "jti", "sub", "client_id"):
        refused(redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, **{missing: None}))))
    within_skew = idp.sign(jag(idp, jag_broker, iat=now - 310, exp=now - 10))  # 30 s of skew allowed
    assert redeem(jag_broker.base, within_skew).status_code == 200


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", "oauth-id-jag"])
def test_typ_missing_or_wrong_is_refused(jag_broker: Broker, idp: JagIssuer, typ: str | None) -> None:
    assertion = idp.sign(jag(idp, jag_broker), typ=typ)
    assert "oauth-id-jag+jwt" in refused(redeem(jag_broker.base, assertion))


def test_alg_none_and_hs256_with_the_public_key_are_refused(jag_broker: Broker, idp: JagIssuer) -> None:
    claims = jag(idp, jag_broker)
    with capture_logs() as logs:
        refused(redeem(jag_broker.base, idp.unsigned(claims)))
        refused(redeem(jag_broker.base, idp.hs256_with_public_key(claims)))
        groups = jag(idp, jag_broker, iss=idp.issuer("groups"), groups=["mcp-readers"])
        refused(redeem(jag_broker.base, idp.hs256_with_public_key(groups)))
        refused(redeem(jag_broker.base, idp.sign(groups, alg="ES256")))  # this issuer is RS256 only
    assert [e["reason"] for e in logs if e["event"] == "assertion_refused"] == ["alg"] * 4
    assert redeem(jag_broker.base, idp.sign(claims)).status_code == 200  # the real one still works


def test_a_bad_signature_is_refused(jag_broker: Broker, idp: JagIssuer) -> None:
    impostor = JagIssuer(base=idp.base)  # same issuer and key ids, other keys
    refused(redeem(jag_broker.base, impostor.sign(jag(idp, jag_broker))))
    refused(redeem(jag_broker.base, impostor.sign(jag(idp, jag_broker), kid="no-such-key")))
    header, _, signature = idp.sign(jag(idp, jag_broker)).split(".")
    tampered = idp.sign(jag(idp, jag_broker, sub="bob")).split(".")[1]
    refused(redeem(jag_broker.base, f"{header}.{tampered}.{signature}"))
    refused(redeem(jag_broker.base, "not-a-jwt"))
    refused(redeem(jag_broker.base, None), "invalid_request")


def test_malformed_assertions_are_invalid_grant_never_a_server_error(jag_broker: Broker, idp: JagIssuer) -> None:
    header = b64url(json.dumps({"alg": "ES256", "typ": TYP, "kid": "ec-1"}).encode())
    deep = b64url(("[" * 5000 + "]" * 5000).encode())
    for assertion in [
        f"{header}.{deep}.AAAA",  # JSON nested past the parser's recursion limit
        f"{header}.{b64url(b'null')}.AAAA",
        f"{b64url(b'[]')}.{deep}.AAAA",
        "a.b.c",
        "\u00fc.\u00fc.\u00fc",
        "x" * 20_000,
    ]:
        refused(redeem(jag_broker.base, assertion))
    for value in (float("nan"), float("inf"), "1700000000", True):
        refused(redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, exp=value))))


def test_an_unknown_issuer_is_refused(jag_broker: Broker, idp: JagIssuer) -> None:
    for issuer in ("https://evil.example", idp.issuer("unknown"), f"{idp.issuer()}/"):
        description = refused(redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, iss=issuer))))
        assert "issuer is not trusted" in description


def test_an_unknown_or_unallowed_resource_is_refused(jag_broker: Broker, idp: JagIssuer) -> None:
    unknown = idp.sign(jag(idp, jag_broker, resource="http://127.0.0.1:9999/mcp"))
    refused(redeem(jag_broker.base, unknown, resource=None), "invalid_target")
    refused(redeem(jag_broker.base, unknown, resource="http://127.0.0.1:9999/mcp"), "invalid_target")
    # `other` is configured, but this issuer may name only `notes`.
    other = idp.sign(jag(idp, jag_broker, resource=OTHER_RESOURCE, scope="other:use"))
    assert "may not grant" in refused(redeem(jag_broker.base, other, resource=None), "invalid_target")
    # The request may repeat the assertion's resource, not name another.
    assertion = idp.sign(jag(idp, jag_broker))
    refused(redeem(jag_broker.base, assertion, resource=OTHER_RESOURCE), "invalid_target")
    refused(redeem(jag_broker.base, idp.sign(jag(idp, jag_broker, resource=None))))
    assert redeem(jag_broker.base, assertion, resource=None).status_code == 200


def test_an_issuer_may_name_each_resource_it_is_trusted_for(jag_broker: Broker, idp: JagIssuer) -> None:
    claims = jag(
        idp,
        jag_broker,
        iss=idp.issuer("groups"),
        groups=["mcp-readers"],
        resource=[RESOURCE, OTHER_RESOURCE],
        scope="other:use notes:read",
    )
    refused(redeem(jag_broker.base, idp.sign(claims, alg="RS256"), resource=None), "invalid_target")  # which one?
    response = redeem(jag_broker.base, idp.sign(claims, alg="RS256"), resource=OTHER_RESOURCE)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "other:use"
    assert verified(jag_broker, response.json()["access_token"])["aud"] == OTHER_RESOURCE


def test_keys_are_fetched_once_and_refetched_for_a_new_key(jag_broker: Broker, idp: JagIssuer) -> None:
    for _ in range(3):
        assert redeem(jag_broker.base, idp.sign(jag(idp, jag_broker))).status_code == 200
    assert idp.jwks_fetches == 1
    idp.ec = type(idp.ec).generate_key("P-256", parameters={"kid": "ec-2", "alg": "ES256"})  # rotated
    assert redeem(jag_broker.base, idp.sign(jag(idp, jag_broker))).status_code == 200
    assert idp.jwks_fetches == 2


def test_an_unreachable_issuer_is_temporarily_unavailable(broker_factory: BrokerFactory, idp: JagIssuer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    extra = f"""
identity_assertion:
  trusted_issuers:
    - issuer: {dead}
      provider: demo-ldap
      resources: [notes]
"""
    with broker_factory(extra=extra) as broker:
        assertion = idp.sign(idp.claims(broker.base, CLIENT, RESOURCE, iss=dead))
        response = redeem(broker.base, assertion)
        refused(response, "temporarily_unavailable", 503)
