"""Fixtures for the Entra provider: a running Entra emulator per test, providers configured
against it, and (for flows through the broker) the broker factory of ``tests/broker``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.entra.provider import EntraProvider
from tests.broker.conftest import broker_factory  # noqa: F401 - the broker fixture, shared
from tests.emulators.entra import EntraEmulator
from tests.providers.entra.helpers import CALLBACK, entra_config

ProviderFactory = Callable[..., EntraProvider]


@pytest.fixture
def entra(tmp_path: Path) -> Iterator[EntraEmulator]:
    emulator = EntraEmulator()
    with emulator.serve(tmp_path):
        emulator.allow_redirect(CALLBACK)
        yield emulator


@pytest.fixture
async def make_provider(entra: EntraEmulator) -> AsyncIterator[ProviderFactory]:
    made: list[EntraProvider] = []

    def make(**over: Any) -> EntraProvider:
        provider = EntraProvider(entra_config(entra, **over))
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()
