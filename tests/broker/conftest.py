from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from broker.app import create_app
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from tests.broker.flows import RESOURCE, Broker, broker_yaml
from tests.http import running

BrokerFactory = Callable[..., AbstractContextManager[Broker]]


@pytest.fixture
def broker_factory(redis_server: RedisServer, slapd: Slapd) -> BrokerFactory:
    @contextmanager
    def make(
        extra: str = "",
        prefix: str | None = None,
        issuer_path: str = "",
        registration: str = "",
        resource: str = RESOURCE,
        providers: str = "",
        mappings: str = "",
        tokens: str = "",
    ) -> Iterator[Broker]:
        port = free_port()
        text = broker_yaml(
            port,
            redis_server.url,
            slapd,
            prefix=prefix or f"t{secrets.token_hex(6)}",
            extra=extra,
            issuer_path=issuer_path,
            registration=registration,
            resource=resource,
            providers=providers,
            mappings=mappings,
            tokens=tokens,
        )
        config = parse_config(text)
        with running(create_app(config), port):
            yield Broker(config.issuer, config)

    return make


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Iterator[Broker]:
    with broker_factory() as running_broker:
        yield running_broker
