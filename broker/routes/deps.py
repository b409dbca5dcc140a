"""The services a route may ask for, as FastAPI dependencies: each route declares only what it
uses (``pages: Pages``…), and tests may replace any of them through ``app.dependency_overrides``.
``create_app`` builds the ``Services`` these read from.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
a thread hand-off per dependency per request (about 0.15 ms each on the 2-core machine, which
``bench/refresh.py`` showed as a fifth of a refresh's cost)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

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
from broker.services import Services
from broker.signals.effects import SignalEffects
from broker.signals.ssf import SsfReceiver
from broker.store.base import Store
from broker.store.client import RedisClient
from broker.web.pages import Pages
from providers.base import Provider

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TokenEndpoint:
    """What the token endpoint hands its grants to, as one dependency: FastAPI resolves each
    dependency of every request (~10-20 µs each here), and a refresh is the hot path."""

    clients: ClientRegistry
    grants: GrantService
    exchanges: TokenExchange
    assertions: AssertionGrant


@dataclass(frozen=True, slots=True)
class SignInSteps:
    """What the browser flow's pages (authorize, consent, login) use, as one dependency: a
    sign-in is five requests, and each dependency cost every one of them its resolution.
    ``policy`` is the policy in force when the request arrived."""

    pages: Pages
    flows: BrowserFlow
    policy: Policy
    config: BrokerConfig
    clients: ClientRegistry


def get_services(request: Request) -> Services:
    services: Services = request.app.state.broker
    return services


def _service(read: Callable[[Services], T]) -> Callable[[Request], Coroutine[Any, Any, T]]:
    """A dependency answering one of the ``Services``: ``read`` picks it."""

    async def dependency(request: Request) -> T:
        return read(get_services(request))

    return dependency


get_config = _service(lambda s: s.config)
get_redis = _service(lambda s: s.redis)
get_keyring = _service(lambda s: s.keyring)
get_store = _service(lambda s: s.store)
get_clients = _service(lambda s: s.clients)
get_policies = _service(lambda s: s.policies)
get_policy = _service(lambda s: s.policies.current)  # the policy in force when the request arrived
get_providers = _service(lambda s: s.providers)
get_grants = _service(lambda s: s.grants)
get_revocation = _service(lambda s: s.revocation)
get_pages = _service(lambda s: s.pages)
get_introspection_resources = _service(lambda s: s.introspection_resources)
get_throttle = _service(lambda s: s.throttle)
get_registrations = _service(lambda s: s.registrations)
get_flows = _service(lambda s: s.flows)
get_assertions = _service(lambda s: s.assertions)
get_exchanges = _service(lambda s: s.exchanges)
get_signals = _service(lambda s: s.signals)
get_ssf = _service(lambda s: s.ssf)
get_token_endpoint = _service(lambda s: TokenEndpoint(s.clients, s.grants, s.exchanges, s.assertions))
get_sign_in_steps = _service(lambda s: SignInSteps(s.pages, s.flows, s.policies.current, s.config, s.clients))


ConfigDep = Annotated[BrokerConfig, Depends(get_config)]
RedisDep = Annotated[RedisClient, Depends(get_redis)]
KeyRingDep = Annotated[KeyRing, Depends(get_keyring)]
StoreDep = Annotated[Store, Depends(get_store)]
ClientsDep = Annotated[ClientRegistry, Depends(get_clients)]
PoliciesDep = Annotated[PolicyHolder, Depends(get_policies)]
PolicyDep = Annotated[Policy, Depends(get_policy)]
ProvidersDep = Annotated[Mapping[str, Provider], Depends(get_providers)]
GrantsDep = Annotated[GrantService, Depends(get_grants)]
RevocationDep = Annotated[RevocationService, Depends(get_revocation)]
PagesDep = Annotated[Pages, Depends(get_pages)]
IntrospectionDep = Annotated[Mapping[str, list[str]], Depends(get_introspection_resources)]
ThrottleDep = Annotated[LoginThrottle, Depends(get_throttle)]
RegistrationsDep = Annotated[RateLimit, Depends(get_registrations)]
FlowsDep = Annotated[BrowserFlow, Depends(get_flows)]
AssertionsDep = Annotated[AssertionGrant, Depends(get_assertions)]
ExchangesDep = Annotated[TokenExchange, Depends(get_exchanges)]
SignalsDep = Annotated[SignalEffects, Depends(get_signals)]
TokenEndpointDep = Annotated[TokenEndpoint, Depends(get_token_endpoint)]
SignInStepsDep = Annotated[SignInSteps, Depends(get_sign_in_steps)]
SsfDep = Annotated[SsfReceiver, Depends(get_ssf)]
