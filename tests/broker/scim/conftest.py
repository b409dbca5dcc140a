"""A broker with a SCIM tenant for the demo directory (``demo-ldap``), on loopback with real Redis
and slapd."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker

SCIM_TOKEN = "scim-tenant-token-" + "s" * 24
TENANT = "demo-ldap"

SCIM_CONFIG = f"""
scim:
  tenants:
    - provider: {TENANT}
      token: "{SCIM_TOKEN}"
"""


@pytest.fixture
def scim_broker(broker_factory: BrokerFactory) -> Iterator[Broker]:
    with broker_factory(extra=SCIM_CONFIG) as running_broker:
        yield running_broker


def scim_base(broker: Broker) -> str:
    return f"{broker.base}/scim/v2/{TENANT}"


def scim_client(broker: Broker, token: str = SCIM_TOKEN) -> httpx.Client:
    return httpx.Client(
        base_url=scim_base(broker),
        headers={"authorization": f"Bearer {token}", "content-type": "application/scim+json"},
        timeout=10,
    )
