"""scim2-tester, the SCIM conformance checker, against the live endpoint (real broker on loopback,
real Redis): no failure for any feature ServiceProviderConfig declares."""

from __future__ import annotations

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from tests.broker.flows import Broker
from tests.broker.scim.conftest import SCIM_TOKEN, scim_base

FAILED = {Status.ERROR, Status.CRITICAL}


def test_scim2_tester_finds_no_failure(scim_broker: Broker) -> None:
    http = httpx2.Client(base_url=scim_base(scim_broker), headers={"authorization": f"Bearer {SCIM_TOKEN}"}, timeout=10)
    with http:
        results = check_server(SyncSCIMClient(http))
    failures = [(r.title, r.resource_type, r.reason) for r in results if r.status in FAILED]
    print("\n".join(f"{r.status.name:10} {r.resource_type or '-':6} {r.title}: {r.reason}" for r in results))
    assert results
    assert not failures, failures
