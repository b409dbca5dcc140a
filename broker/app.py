"""``create_app``: the one place where the broker is wired together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI

from broker import __version__
from broker.config.models import BrokerConfig
from broker.middleware import RequestContextMiddleware
from broker.oauth.signing import KeyRing
from broker.routes import health, jwks
from broker.state import BrokerState
from broker.store.client import RedisClient, create_redis
from broker.store.keys import Keys

_log = structlog.get_logger("mcp_broker")
KEY_REFRESH_SECONDS = 300


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


def create_app(config: BrokerConfig, *, redis: RedisClient | None = None) -> FastAPI:
    """Build the broker's ASGI app. ``redis`` may be passed in (tests); otherwise it comes from config."""
    keys = Keys(config.redis.key_prefix)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis if redis is not None else _redis_for(config)
        kek = config.signing.key_encryption_key
        keyring = KeyRing(
            client,
            keys,
            algorithm=config.signing.algorithm,
            kek=kek.get_secret_value() if kek else None,
            keys_dir=config.signing.keys_dir,
            rotation_interval=config.signing.rotation_interval,
            overlap=config.signing.key_overlap,
        )
        app.state.broker = BrokerState(config=config, redis=client, keys=keys, keyring=keyring)
        try:
            await keyring.refresh()
        except Exception as exc:  # readiness reports it; the process stays up to say so
            _log.error("signing_keys_unavailable", error=str(exc))
        refresher = asyncio.create_task(_refresh_keys(keyring))
        _log.info("broker_started", issuer=config.issuer, version=__version__)
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            if redis is None:
                await client.aclose()

    app = FastAPI(
        title="mcp-broker",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(health.router)
    app.include_router(jwks.router)
    app.add_middleware(RequestContextMiddleware)
    return app


async def _refresh_keys(keyring: KeyRing) -> None:
    while True:
        await asyncio.sleep(KEY_REFRESH_SECONDS)
        try:
            await keyring.refresh()
        except Exception as exc:
            _log.error("signing_keys_refresh_failed", error=str(exc))
