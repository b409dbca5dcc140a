"""The ``oidc`` delegation target (issue 14) against the real test OP, on grants the real broker
issued: an access token for the target's resource from the upstream refresh token kept for the
grant, rotated refresh tokens kept in the vault (sealed) and used by the grant's next refresh,
the user gone upstream as InteractionRequired, and nothing of the upstream session left in Redis
once the grant is revoked."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx
import jwt
import pytest
import redis

from broker.app import create_app
from broker.config import parse_config
from broker.config.delegation import OidcTargetConfig
from broker.delegation.targets import DelegationRequest, InteractionRequired, TargetContext, TargetRefused
from broker.delegation.upstream import UpstreamTarget
from broker.devstack import RedisServer, Slapd
from broker.oauth.grants import identity_from
from broker.oauth.sealing import Sealer
from broker.oauth.signing import KeyRing
from broker.oauth.vault import Vault
from broker.store.client import create_redis
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from providers.base import Lifecycle
from providers.registry import open_provider
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import INTROSPECTOR_SECRET, Broker, fresh_broker_yaml, notes_server_delegates, refresh
from tests.http import running
from tests.providers.oidc.op import TestOP
from tests.providers.oidc.test_broker_flows import MAPPINGS, PROVIDER, OidcBroker, tokens_for

API = "https://api.test.example/"  # a resource (RFC 8707) of the test OP


@dataclass
class Setup:
    oidc: OidcBroker
    store: RedisStore
    sealer: Sealer
    target: UpstreamTarget
    direct: redis.Redis

    @property
    def prefix(self) -> str:
        return self.oidc.broker.config.redis.key_prefix

    async def request(self, grant_id: str, client_id: str) -> DelegationRequest:
        grant = await self.store.get_grant(grant_id)
        assert grant is not None
        assert grant.identity is not None
        return DelegationRequest(
            grant=grant,
            identity=identity_from(grant.identity, self.sealer),
            mcp_server=self.oidc.broker.config.resources[0],
            client_id=client_id,
            scopes=frozenset({"api:read"}),
            subject_expires_at=int(time.time()) + 300,
        )

    def redis_values(self) -> list[bytes]:
        """Every value under the broker's prefix, whatever the key's type."""
        values: list[bytes] = []
        for key in self.direct.scan_iter(f"{self.prefix}:*"):
            kind = self.direct.type(key)
            if kind == b"string":
                values.append(cast(bytes, self.direct.get(key)))
            elif kind == b"hash":
                values.extend(cast(dict[bytes, bytes], self.direct.hgetall(key)).values())
            elif kind == b"zset":
                values.extend(
                    m for m, _ in cast(list[tuple[bytes, float]], self.direct.zrange(key, 0, -1, withscores=True))
                )
        return values


PROVIDERS = f"""
  - id: {PROVIDER}
    type: oidc
    display_name: Test OP
    issuer: "{{issuer}}"
    client_id: "{{client_id}}"
    client_secret: "{{secret}}"
    scopes: [openid, profile, email, groups, offline_access, "api:read"]
    groups_claim: groups
    use_upstream_refresh: true
    authorize_params: {{{{prompt: consent, resource: "{API}"}}}}
    http_timeout: 5
"""


@contextmanager
def oidc_delegation_broker(broker_factory: BrokerFactory, op: TestOP) -> Iterator[OidcBroker]:
    client_id, secret = f"broker-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    providers = PROVIDERS.format(issuer=op.issuer, client_id=client_id, secret=secret)
    with broker_factory(providers=providers, mappings=MAPPINGS) as broker:
        running = OidcBroker(broker, op, op.issuer)
        op.put_client(client_id, client_secret=secret, redirect_uris=[running.callback])
        yield running


@pytest.fixture
async def setup(broker_factory: BrokerFactory, op: TestOP, redis_server: RedisServer) -> AsyncIterator[Setup]:
    with oidc_delegation_broker(broker_factory, op) as oidc:
        config = oidc.broker.config
        store = RedisStore(create_redis(redis_server.url), Keys(config.redis.key_prefix))
        kek = config.signing.key_encryption_key
        sealer = Sealer(kek.get_secret_value() if kek else None)
        provider = open_provider(next(p for p in config.providers if p.id == PROVIDER))
        target_config = OidcTargetConfig(
            id="api",
            kind="oidc",
            audience="https://api.example.com",
            scopes=["api:read"],
            provider=PROVIDER,
            upstream_resource=API,
        )
        context = TargetContext(config, store, cast(KeyRing, None), sealer, {PROVIDER: provider})
        direct = redis.Redis.from_url(redis_server.url)
        yield Setup(oidc, store, sealer, UpstreamTarget(target_config, context), direct)
        direct.close()
        assert isinstance(provider, Lifecycle)
        await provider.aclose()
        await store.redis.aclose()


def grant_of(tokens: dict[str, Any]) -> str:
    return str(tokens["refresh_token"].split(".")[1])


async def test_an_access_token_for_the_targets_resource_from_the_kept_refresh_token(setup: Setup) -> None:
    client_id, alice = tokens_for(setup.oidc, "alice")
    token = await setup.target.acquire(await setup.request(grant_of(alice), client_id))
    claims = jwt.decode(token.access_token, options={"verify_signature": False})
    assert claims["aud"] == API
    assert claims["scope"] == "api:read"
    assert token.scopes == {"api:read"}
    assert token.expires_at > time.time() + 60


async def test_rotated_refresh_tokens_are_kept_sealed_and_the_grants_refresh_uses_the_latest(
    setup: Setup, op: TestOP
) -> None:
    op.rotate_refresh_tokens(True)
    client_id, alice = tokens_for(setup.oidc, "alice")
    grant_id = grant_of(alice)
    vault = Vault(setup.store, setup.sealer)
    for _ in range(2):  # each call spends the upstream refresh token and keeps the new one
        before = await vault.state(grant_id, (await setup.request(grant_id, client_id)).identity)
        await setup.target.acquire(await setup.request(grant_id, client_id))
        after = await vault.state(grant_id, (await setup.request(grant_id, client_id)).identity)
        assert after["refresh_token"] != before["refresh_token"]
    current = str(after["refresh_token"])
    assert not any(current.encode() in value for value in setup.redis_values())  # sealed at rest

    # The broker's own refresh spends the vault's token, not the one sign-in stored (the OP
    # would take that as reuse); afterwards the grant's identity holds the newest.
    refreshed = refresh(setup.oidc.broker, client_id, alice["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    token = await setup.target.acquire(await setup.request(grant_id, client_id))
    assert jwt.decode(token.access_token, options={"verify_signature": False})["aud"] == API


async def test_concurrent_calls_for_one_grant_spend_the_refresh_token_one_at_a_time(setup: Setup, op: TestOP) -> None:
    op.rotate_refresh_tokens(True)
    client_id, alice = tokens_for(setup.oidc, "alice")
    request = await setup.request(grant_of(alice), client_id)
    tokens = await asyncio.gather(*(setup.target.acquire(request) for _ in range(4)))
    assert len({t.access_token for t in tokens}) == 4  # none refused as a reused refresh token


async def test_a_user_gone_upstream_needs_to_sign_in_again(setup: Setup, op: TestOP) -> None:
    client_id, alice = tokens_for(setup.oidc, "alice")
    op.delete_user("alice")
    with pytest.raises(InteractionRequired) as caught:
        await setup.target.acquire(await setup.request(grant_of(alice), client_id))
    assert caught.value.url == f"{setup.oidc.broker.base}/account/delegation/api"
    assert "invalid_grant" in caught.value.detail


async def test_nothing_of_the_upstream_session_is_left_once_the_grant_is_revoked(setup: Setup, op: TestOP) -> None:
    op.rotate_refresh_tokens(True)
    client_id, alice = tokens_for(setup.oidc, "alice")
    grant_id = grant_of(alice)
    request = await setup.request(grant_id, client_id)
    await setup.target.acquire(request)
    assert await setup.store.get_upstream_tokens(grant_id) is not None
    assert await setup.store.revoke_grant(grant_id, "test")
    assert await setup.store.get_upstream_tokens(grant_id) is None
    grant = await setup.store.get_grant(grant_id)
    assert grant is not None
    assert grant.identity is not None
    assert grant.identity.private is None
    assert not setup.direct.exists(Keys(setup.prefix).upstream_tokens(grant_id))
    with pytest.raises(TargetRefused):
        await setup.target.acquire(request)


# -- through the broker's token exchange ---------------------------------------------------------
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
DELEGATION = f"""
delegation:
  targets:
    - id: api
      kind: oidc
      provider: {PROVIDER}
      audience: https://api.example.com
      upstream_resource: "{API}"
      scopes: ["api:read"]
  rules:
    - id: notes-api
      mcp_server: notes
      target: api
      provider: {PROVIDER}
      groups: [mcp-readers]
      scopes: ["api:read"]
"""


@contextmanager
def exchanging_broker(redis_server: RedisServer, slapd: Slapd, op: TestOP) -> Iterator[OidcBroker]:
    client_id, secret = f"broker-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    port, text = fresh_broker_yaml(
        redis_server.url,
        slapd,
        providers=PROVIDERS.format(issuer=op.issuer, client_id=client_id, secret=secret),
        mappings=MAPPINGS,
        extra=DELEGATION,
    )
    text = notes_server_delegates(text)
    config = parse_config(text)
    with running(create_app(config), port):
        broker = Broker(config.issuer, config)
        oidc = OidcBroker(broker, op, op.issuer)
        op.put_client(client_id, client_secret=secret, redirect_uris=[oidc.callback])
        yield oidc


def test_the_mcp_server_exchanges_the_users_token_for_the_apis(
    redis_server: RedisServer, slapd: Slapd, op: TestOP
) -> None:
    op.rotate_refresh_tokens(True)
    with exchanging_broker(redis_server, slapd, op) as oidc:
        client_id, alice = tokens_for(oidc, "alice")
        for _ in range(2):  # the second is served from the broker's cache of downstream tokens
            answer = httpx.post(
                f"{oidc.broker.base}/token",
                data={
                    "grant_type": TOKEN_EXCHANGE,
                    "subject_token": alice["access_token"],
                    "subject_token_type": ACCESS_TOKEN,
                    "audience": "https://api.example.com",
                },
                auth=("notes-server", INTROSPECTOR_SECRET),
                timeout=20,
            )
            assert answer.status_code == 200, answer.text
            claims = jwt.decode(answer.json()["access_token"], options={"verify_signature": False})
            assert claims["aud"] == API
            assert claims["scope"] == "api:read"
        refreshed = refresh(oidc.broker, client_id, alice["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text  # the grant's refresh after a rotation
