"""What one running broker holds: built once in the lifespan by ``create_app``; routes reach
its parts through the dependency functions in ``broker.routes.deps``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from broker.config.models import BrokerConfig
from broker.oauth.assertion_grant import AssertionGrant
from broker.oauth.browser_flow import BrowserFlow
from broker.oauth.clients import ClientRegistry
from broker.oauth.grants import GrantService
from broker.oauth.revocation import RevocationService
from broker.oauth.signing import KeyRing
from broker.oauth.token_exchange import TokenExchange
from broker.policy import Policy
from broker.policy.holder import PolicyHolder
from broker.security.rate_limit import RateLimit
from broker.security.throttle import LoginThrottle
from broker.signals.effects import SignalEffects
from broker.signals.ssf import SsfReceiver
from broker.store.base import Store
from broker.store.client import RedisClient
from broker.web.pages import Pages
from providers.base import Provider


@dataclass
class Services:
    config: BrokerConfig
    redis: RedisClient
    keyring: KeyRing
    store: Store
    clients: ClientRegistry
    policies: PolicyHolder
    providers: Mapping[str, Provider]
    grants: GrantService
    revocation: RevocationService
    pages: Pages
    introspection_resources: Mapping[str, list[str]]
    throttle: LoginThrottle
    registrations: RateLimit
    flows: BrowserFlow
    assertions: AssertionGrant  # the jwt-bearer grant for ID-JAGs from trusted IdPs
    exchanges: TokenExchange  # RFC 8693 token exchange (ID token -> ID-JAG)
    signals: SignalEffects  # what upstream signals (SCIM, back-channel logout, SSF) do to grants
    ssf: SsfReceiver  # Shared Signals push receiver and poll streams (started and stopped in the lifespan)

    @property
    def policy(self) -> Policy:
        """The policy in force now (it may be replaced by a reload between two requests)."""
        return self.policies.current
