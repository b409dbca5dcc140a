"""The services a route may ask for, as FastAPI dependencies: each route declares only what it
uses (``pages: Pages``…), and tests may replace any of them through ``app.dependency_overrides``.
``create_app`` builds the ``Services`` these read from.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
a thread hand-off per dependency per request (about 0.15 ms each on the 2-core machine, which
``bench/refresh.py`` showed as a fifth of a refresh's cost)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request

from broker.config.models import BrokerConfig
from broker.oauth.browser_flow import BrowserFlow
from broker.oauth.clients import ClientRegistry
from broker.oauth.grants import GrantService
from broker.oauth.revocation import RevocationService
from broker.oauth.signing import KeyRing
from broker.policy import Policy
from broker.policy.holder import PolicyHolder
from broker.security.rate_limit import RateLimit
from broker.security.throttle import LoginThrottle
from broker.services import Services
from broker.store.base import Store
from broker.store.client import RedisClient
from broker.web.pages import Pages
from providers.base import Provider


def get_services(request: Request) -> Services:
    services: Services = request.app.state.broker
    return services


async def get_config(request: Request) -> BrokerConfig:
    return get_services(request).config


async def get_redis(request: Request) -> RedisClient:
    return get_services(request).redis


async def get_keyring(request: Request) -> KeyRing:
    return get_services(request).keyring


async def get_store(request: Request) -> Store:
    return get_services(request).store


async def get_clients(request: Request) -> ClientRegistry:
    return get_services(request).clients


async def get_policies(request: Request) -> PolicyHolder:
    return get_services(request).policies


async def get_policy(request: Request) -> Policy:
    """The policy in force when the request arrived (a reload may replace it for later ones)."""
    return get_services(request).policies.current


async def get_providers(request: Request) -> Mapping[str, Provider]:
    return get_services(request).providers


async def get_grants(request: Request) -> GrantService:
    return get_services(request).grants


async def get_revocation(request: Request) -> RevocationService:
    return get_services(request).revocation


async def get_pages(request: Request) -> Pages:
    return get_services(request).pages


async def get_introspection_resources(request: Request) -> Mapping[str, list[str]]:
    return get_services(request).introspection_resources


async def get_throttle(request: Request) -> LoginThrottle:
    return get_services(request).throttle


async def get_registrations(request: Request) -> RateLimit:
    return get_services(request).registrations


async def get_flows(request: Request) -> BrowserFlow:
    return get_services(request).flows


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
