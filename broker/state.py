"""What one running broker holds: built once in the lifespan, read by every request."""

from __future__ import annotations

from dataclasses import dataclass

from broker.config.models import BrokerConfig
from broker.oauth.signing import KeyRing
from broker.store.client import RedisClient
from broker.store.keys import Keys


@dataclass
class BrokerState:
    config: BrokerConfig
    redis: RedisClient
    keys: Keys
    keyring: KeyRing
