"""``create_app``: the one place where the broker is wired together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import structlog
from fastapi import FastAPI

from broker import __version__
from broker.config.models import BrokerConfig
from broker.delegation.exchange import DelegatedExchange
from broker.delegation.registry import open_targets
from broker.delegation.targets import TargetContext
from broker.middleware import RequestContextMiddleware
from broker.oauth.assertion_grant import AssertionGrant
from broker.oauth.browser_flow import BrowserFlow
from broker.oauth.cimd import MetadataDocuments
from broker.oauth.clients import ClientRegistry
from broker.oauth.grants import GrantService
from broker.oauth.id_jag import IdJagVerifier
from broker.oauth.revocation import RevocationService
from broker.oauth.sealing import Sealer
from broker.oauth.signing import KeyRing
from broker.oauth.token_exchange import ACCESS_TOKEN_TYPE, TokenExchange
from broker.policy.holder import PolicyHolder
from broker.routes import (
    account,
    admin,
    authorize,
    backchannel,
    callback,
    consent,
    discovery,
    errors,
    health,
    login,
    openapi,
    register,
    ssf,
    token,
)
from broker.security.rate_limit import RateLimit
from broker.security.throttle import LoginThrottle
from broker.services import Services
from broker.signals.effects import SignalEffects
from broker.signals.ssf import SsfReceiver
from broker.store.client import RedisClient, create_redis
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from broker.web.pages import Pages
from providers.base import Lifecycle, Provider
from providers.registry import open_provider

_log = structlog.get_logger("mcp_broker")
KEY_REFRESH_SECONDS = 300
# Past an access token's lifetime that resource servers may still accept it (their exp leeway,
# 10 s in mcp_broker_verifier, and clock skew): how long a narrowing's ended handle stays listed.
TOKEN_LEEWAY_MARGIN = 60


def _redis_for(config: BrokerConfig) -> RedisClient:
    if config.redis.url is None:
        raise RuntimeError("redis.url is not set (only `mcp-broker dev` starts a private Redis)")
    return create_redis(
        config.redis.url,
        password=config.redis.password.get_secret_value() if config.redis.password else None,
        sentinel_password=(
            config.redis.sentinel_password.get_secret_value() if config.redis.sentinel_password else None
        ),
        ca_file=config.redis.ca_file,
        socket_timeout=config.redis.socket_timeout,
    )


def _introspection(config: BrokerConfig) -> dict[str, list[str]]:
    uris = {r.id: r.uri for r in config.resources}
    return {
        c.client_id: [uris.get(r, r) for r in c.introspection_resources]
        for c in config.registration.static_clients
        if c.introspection_resources
    }


def _exchanges(
    config: BrokerConfig,
    store: RedisStore,
    keyring: KeyRing,
    policies: PolicyHolder,
    grants: GrantService,
    sealer: Sealer,
    providers: Mapping[str, Provider],
) -> TokenExchange:
    """RFC 8693 token exchange: ID token -> ID-JAG, and an MCP server's access token -> a token of
    a delegation target (``broker.delegation``)."""
    exchanges = TokenExchange(config, store, keyring, policies, grants)
    targets = open_targets(TargetContext(config, store, keyring, sealer, providers))
    exchanges.handlers[(ACCESS_TOKEN_TYPE, ACCESS_TOKEN_TYPE)] = DelegatedExchange(
        config, store, keyring, sealer, targets
    )
    return exchanges


def create_app(
    config: BrokerConfig,
    *,
    redis: RedisClient | None = None,
    providers: Mapping[str, Provider] | None = None,
) -> FastAPI:
    """Build the broker's ASGI app. ``redis`` and ``providers`` may be passed in (tests);
    otherwise they are built from the configuration."""
    keys = Keys(config.redis.key_prefix)
    base = urlsplit(config.issuer).path.rstrip("/")
    upstreams = dict(providers) if providers is not None else {p.id: open_provider(p) for p in config.providers}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis if redis is not None else _redis_for(config)
        kek = config.signing.key_encryption_key
        store = RedisStore(client, keys)
        keyring = KeyRing(
            store,
            algorithm=config.signing.algorithm,
            kek=kek.get_secret_value() if kek else None,
            keys_dir=config.signing.keys_dir,
            rotation_interval=config.signing.rotation_interval,
            overlap=config.signing.key_overlap,
        )
        documents = MetadataDocuments(config.registration)
        policies = PolicyHolder(config)
        clients = ClientRegistry(config.registration, store, documents, issuer=config.issuer)
        sealer = Sealer(kek.get_secret_value() if kek else None)  # one envelope for every sealed identity and token
        grants = GrantService(config, store, keyring, policies, upstreams, sealer)
        assertions = AssertionGrant(
            config,
            store,
            keyring,
            policies,
            upstreams,
            sealer,
            IdJagVerifier(config.issuer, config.identity_assertion.trusted_issuers),
        )
        throttle = LoginThrottle(
            store,
            per_user=config.login_protection.max_failures_per_user,
            per_account=config.login_protection.max_failures_per_account,
            per_ip=config.login_protection.max_failures_per_ip,
            window=config.login_protection.window,
            failure_floor=config.login_protection.failure_floor,
        )
        signals = SignalEffects(
            store,
            lambda: policies.current,
            grants.current_identity,
            token_lifetime=config.tokens.access_token_ttl + TOKEN_LEEWAY_MARGIN,
        )
        ssf = SsfReceiver(config.shared_signals, config.issuer, store, signals)
        app.state.broker = Services(
            config=config,
            redis=client,
            keyring=keyring,
            store=store,
            clients=clients,
            policies=policies,
            providers=upstreams,
            grants=grants,
            revocation=RevocationService(config.issuer, store, keyring),
            pages=Pages(config.issuer),
            introspection_resources=_introspection(config),
            throttle=throttle,
            registrations=RateLimit(
                store,
                name="reg",
                limit=config.registration.dynamic_registration_per_ip,
                window=config.registration.dynamic_registration_window,
            ),
            flows=BrowserFlow(config, store, clients, policies, upstreams, grants, throttle),
            assertions=assertions,
            exchanges=_exchanges(config, store, keyring, policies, grants, sealer, upstreams),
            signals=signals,
            ssf=ssf,
        )
        await ssf.start()  # the poll streams' pollers
        try:
            await keyring.refresh()
        except Exception as exc:  # readiness reports it; the process stays up to say so
            _log.error("signing_keys_unavailable", error=str(exc))
        refresher = asyncio.create_task(_refresh_keys(keyring))
        preparing = [asyncio.create_task(p.prepare()) for p in upstreams.values() if isinstance(p, Lifecycle)]
        watcher = asyncio.create_task(policies.watch())
        _log.info("broker_started", issuer=config.issuer, version=__version__, policy_version=policies.current.version)
        try:
            yield
        finally:
            for task in (refresher, watcher, *preparing):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await ssf.aclose()
            await documents.aclose()
            await assertions.aclose()
            for provider in upstreams.values():
                if isinstance(provider, Lifecycle):
                    await provider.aclose()
            if redis is None:
                await client.aclose()

    app = FastAPI(
        title="mcp-broker",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # FastAPI's built-in OpenTelemetry hooks: unused here (metrics are Prometheus, logs are
        # structlog), and they cost a few environment lookups on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    # The token endpoint first: routes are matched in order, and a refresh is the hot path (each
    # router ahead of it cost every refresh ~5 µs of matching). The sign-in's pages next: a
    # sign-in is four requests to them (no two routers share a path, so order changes nothing else).
    app.include_router(token.router(base))
    app.include_router(authorize.router(base))
    app.include_router(consent.router(base))
    app.include_router(login.router(base))
    app.include_router(callback.router(base))
    app.include_router(health.router)
    discovery.install(app, config.issuer, base)
    app.include_router(register.router(base))
    app.include_router(admin.router(base))
    app.include_router(account.router(base))
    if config.scim.tenants:
        # Imported only where SCIM is configured: scim2-models and its filter grammar take about
        # 17 MB of every worker (bench/compare.py's RSS per worker).
        from broker.routes import scim

        app.include_router(scim.router(base))
        scim.install(app)
    app.include_router(backchannel.router(base))
    app.include_router(ssf.router(base))
    openapi.install(app)
    app.add_middleware(RequestContextMiddleware)
    return app


async def _refresh_keys(keyring: KeyRing) -> None:
    while True:
        await asyncio.sleep(KEY_REFRESH_SECONDS)
        try:
            await keyring.refresh()
        except Exception as exc:
            _log.error("signing_keys_refresh_failed", error=str(exc))
