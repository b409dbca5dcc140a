"""Every store method against Redis standalone, Sentinel and a three-node Cluster (the checks are
in :mod:`tests.broker.store.conformance`); and every method of the protocol has a check."""

from __future__ import annotations

import inspect

import pytest

from broker.store.base import Store
from broker.store.redis_store import RedisStore
from tests.broker.store.conformance import CHECKS


@pytest.mark.parametrize("check", sorted(CHECKS))
async def test_conformance(store: RedisStore, check: str) -> None:
    await CHECKS[check](store)


def test_every_protocol_method_is_exercised() -> None:
    source = inspect.getsource(inspect.getmodule(CHECKS["clients"]))  # type: ignore[arg-type]
    methods = [name for name, _ in inspect.getmembers(Store, inspect.isfunction) if not name.startswith("_")]
    assert methods
    assert [m for m in methods if f"store.{m}(" not in source] == []
