from __future__ import annotations

from tests.broker.conftest import broker_factory  # noqa: F401 - the broker fixture, shared
