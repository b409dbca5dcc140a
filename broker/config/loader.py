"""Load the YAML configuration: ``${ENV}`` interpolation, validation, every problem at once.

A bad file never raises a traceback at the admin. :class:`ConfigError` carries a list of
:class:`Problem`, each with the path of the offending key written as in the file
(``providers[1].url``), so ``mcp-broker check-config`` can print them all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from broker.config.models import BrokerConfig, MappingRule, PolicyFileModel, ResourceConfig
from broker.redirect_rules import registration_problem
from providers.registry import provider_types

ENV_VAR = "MCP_BROKER_CONFIG"
_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)")

    def render(self) -> str:
        count = len(self.problems)
        lines = [f"{self.source}: {count} problem{'s' if count != 1 else ''}"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def format_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def interpolate(node: Any, env: Mapping[str, str], path: tuple[str | int, ...] = ()) -> tuple[Any, list[Problem]]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; ``$$`` is a literal ``$``."""
    problems: list[Problem] = []
    if isinstance(node, str):

        def sub(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(Problem(format_path(path), f"environment variable {name} is not set"))
            return ""

        return _REF.sub(sub, node), problems
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            out[key], sub_problems = interpolate(value, env, (*path, str(key)))
            problems += sub_problems
        return out, problems
    if isinstance(node, list):
        items = []
        for index, value in enumerate(node):
            item, sub_problems = interpolate(value, env, (*path, index))
            items.append(item)
            problems += sub_problems
        return items, problems
    return node, problems


def _pydantic_path(raw: Any, loc: tuple[str | int, ...]) -> str:
    """A pydantic error location written as in the file, without discriminator tags."""
    parts: list[str | int] = []
    node = raw
    for part in loc:
        if isinstance(part, int):
            parts.append(part)
            node = node[part] if isinstance(node, list) and part < len(node) else None
        elif isinstance(node, dict) and part not in node and node.get("type") == part:
            continue  # the tag pydantic adds for a discriminated union member
        else:
            parts.append(part)
            node = node.get(part) if isinstance(node, dict) else None
    return format_path(parts)


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see docs/configuration.md)"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"unknown provider type {error['input'].get('type')!r}; expected {_provider_types()}"
    if kind == "union_tag_not_found":
        return f"a provider needs a 'type': {_provider_types()}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _provider_types() -> str:
    """The registry's provider types as a sentence: ``ldap, entra or oidc``."""
    *most, last = provider_types()
    return f"{', '.join(most)} or {last}" if most else last


def _duplicates(values: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    dup: set[str] = set()
    for value in values:
        (dup if value in seen else seen).add(value)
    return dup


def _implies_problems(where: str, resource: ResourceConfig) -> list[Problem]:
    """A scope's ``implies`` names only scopes of its own resource (ours or an external one)."""
    names = {s.name for s in resource.scopes}
    return [
        Problem(f"{where}.scopes[{s_index}].implies", f"{implied!r} is not a scope of resource {resource.id!r}")
        for s_index, scope in enumerate(resource.scopes)
        for implied in scope.implies
        if implied not in names
    ]


def semantic_problems(config: BrokerConfig) -> list[Problem]:
    """Cross-references pydantic cannot see: ids unique, mappings pointing at what exists."""
    problems: list[Problem] = []

    def unique(section: str, values: list[str], field: str) -> None:
        dup = _duplicates(values)
        for index, value in enumerate(values):
            if value in dup:
                problems.append(Problem(f"{section}[{index}].{field}", f"{value!r} is used more than once"))

    unique("providers", [p.id for p in config.providers], "id")
    unique("resources", [r.id for r in config.resources], "id")
    unique("resources", [r.uri for r in config.resources], "uri")
    unique("mappings", [m.id for m in config.mappings], "id")
    unique("registration.static_clients", [c.client_id for c in config.registration.static_clients], "client_id")
    for c_index, client in enumerate(config.registration.static_clients):
        for u_index, uri in enumerate(client.redirect_uris):  # the rules a registration must follow
            problem = registration_problem(uri, client.application_type)
            if problem:
                problems.append(Problem(f"registration.static_clients[{c_index}].redirect_uris[{u_index}]", problem))
    if config.signing.key_overlap < config.tokens.access_token_ttl:
        problems.append(
            Problem(
                "signing.key_overlap",
                f"must be at least tokens.access_token_ttl ({config.tokens.access_token_ttl} s): tokens signed "
                "by a retired key must verify until they expire",
            )
        )

    for index, provider in enumerate(config.providers):
        setting = provider.upstream_refresh_setting
        if setting is not None and config.signing.key_encryption_key is None:
            problems.append(
                Problem(
                    f"providers[{index}].{setting}",
                    "needs signing.key_encryption_key: upstream refresh tokens are kept only encrypted",
                )
            )
    providers = {p.id for p in config.providers}
    problems += _external_problems(config)
    # Mappings name external MCP servers (ID-JAGs) exactly as they name ours.
    resources = {r.id: r for r in [*config.resources, *config.external_resources]}
    for r_index, resource in enumerate(config.resources):
        names = [s.name for s in resource.scopes]
        unique(f"resources[{r_index}].scopes", names, "name")
        problems += _implies_problems(f"resources[{r_index}]", resource)
    for m_index, rule in enumerate(config.mappings):
        where = f"mappings[{m_index}]"
        if rule.provider not in providers:
            problems.append(Problem(f"{where}.provider", f"no provider has id {rule.provider!r}"))
        target = resources.get(rule.resource)
        if target is None:
            problems.append(Problem(f"{where}.resource", f"no resource has id {rule.resource!r}"))
        else:
            known = {s.name for s in target.scopes}
            for name in rule.scopes:
                if name not in known:
                    problems.append(Problem(f"{where}.scopes", f"{name!r} is not a scope of resource {target.id!r}"))
        if not rule.groups and not rule.users:
            problems.append(Problem(where, "a rule needs at least one of 'groups' or 'users'"))
    problems += _trusted_issuer_problems(config)
    problems += _delegation_problems(config)
    providers = {p.id for p in config.providers}
    for index, tenant in enumerate(config.scim.tenants):  # SCIM tenants provision a provider that exists
        if tenant.provider not in providers:
            problems.append(Problem(f"scim.tenants[{index}].provider", f"no provider has id {tenant.provider!r}"))
    for index, stream in enumerate(config.shared_signals.streams):  # SSF streams name a provider's users
        if stream.provider not in providers:
            problems.append(
                Problem(f"shared_signals.streams[{index}].provider", f"no provider has id {stream.provider!r}")
            )
    return problems


def _delegation_problems(config: BrokerConfig) -> list[Problem]:
    """delegation: rules naming MCP servers and providers that exist, targets of providers that
    exist, no target audience that is one of our MCP servers (a downstream token must never pass
    as a token for an MCP server), static clients naming an MCP server that exists."""
    problems: list[Problem] = []
    providers = {p.id for p in config.providers}
    resources = {r.id for r in config.resources}
    uris = {r.uri for r in config.resources} | {config.issuer}
    for index, target in enumerate(config.delegation.targets):
        where = f"delegation.targets[{index}]"
        if target.audience in uris:
            problems.append(Problem(f"{where}.audience", "is an MCP server of this broker (or its issuer)"))
        provider = getattr(target, "provider", None)
        if provider is not None and provider not in providers:
            problems.append(Problem(f"{where}.provider", f"no provider has id {provider!r}"))
        elif provider is not None:
            upstream = next(p for p in config.providers if p.id == provider)
            needed = {"entra": "delegated_access", "oidc": "use_upstream_refresh"}[target.kind]
            if upstream.type != target.kind or upstream.upstream_refresh_setting != needed:
                problems.append(
                    Problem(
                        f"{where}.provider",
                        f"a target of kind {target.kind} needs a provider of type {target.kind} with "
                        f"{needed}: true; {provider!r} is not one",
                    )
                )
    for index, rule in enumerate(config.delegation.rules):
        where = f"delegation.rules[{index}]"
        if rule.provider not in providers:
            problems.append(Problem(f"{where}.provider", f"no provider has id {rule.provider!r}"))
        if rule.mcp_server not in resources:
            problems.append(Problem(f"{where}.mcp_server", f"no resource has id {rule.mcp_server!r}"))
        if not rule.groups and not rule.users:
            problems.append(Problem(where, "a rule needs at least one of 'groups' or 'users'"))
    for index, client in enumerate(config.registration.static_clients):
        if client.mcp_server is None:
            continue
        where = f"registration.static_clients[{index}].mcp_server"
        if client.mcp_server not in resources:
            problems.append(Problem(where, f"no resource has id {client.mcp_server!r}"))
        if not client.confidential:
            problems.append(Problem(where, "only a confidential client (client_secret or jwks) may be an MCP server"))
    return problems


def _trusted_issuer_problems(config: BrokerConfig) -> list[Problem]:
    """identity_assertion.trusted_issuers: unique, naming providers and resources that exist, never
    ourselves (an IdP must not redeem the ID-JAGs it issued itself)."""
    problems: list[Problem] = []
    providers = {p.id for p in config.providers}
    resources = {r.id for r in config.resources}
    issuers = [t.issuer for t in config.identity_assertion.trusted_issuers]
    for index, trusted in enumerate(config.identity_assertion.trusted_issuers):
        where = f"identity_assertion.trusted_issuers[{index}]"
        if trusted.issuer in issuers[:index]:
            problems.append(Problem(f"{where}.issuer", f"{trusted.issuer!r} is used more than once"))
        if trusted.issuer.removesuffix("/") == config.issuer:
            problems.append(
                Problem(f"{where}.issuer", "is this broker's own issuer: it must not redeem its own ID-JAGs")
            )
        if trusted.provider not in providers:
            problems.append(Problem(f"{where}.provider", f"no provider has id {trusted.provider!r}"))
        for r_index, resource in enumerate(trusted.resources):
            if resource not in resources:
                problems.append(Problem(f"{where}.resources[{r_index}]", f"no resource has id {resource!r}"))
    return problems


def _external_problems(config: BrokerConfig) -> list[Problem]:
    """``external_authorization_servers``: issuers distinct and not ours, resource ids unique
    together with ``resources`` (one policy names both), scopes' ``implies`` within the resource."""
    problems: list[Problem] = []
    own_ids = {r.id for r in config.resources}
    seen_ids: set[str] = set()
    seen_issuers: set[str] = set()
    for a_index, server in enumerate(config.external_authorization_servers):
        where = f"external_authorization_servers[{a_index}]"
        if server.issuer.removesuffix("/") == config.issuer:
            problems.append(Problem(f"{where}.issuer", "is this broker's own issuer"))
        if server.issuer in seen_issuers:
            problems.append(Problem(f"{where}.issuer", f"{server.issuer!r} is used more than once"))
        seen_issuers.add(server.issuer)
        seen_uris: set[str] = set()
        for r_index, resource in enumerate(server.resources):
            if resource.id in own_ids or resource.id in seen_ids:
                problems.append(Problem(f"{where}.resources[{r_index}].id", f"{resource.id!r} is used more than once"))
            seen_ids.add(resource.id)
            if resource.uri in seen_uris:
                problems.append(
                    Problem(f"{where}.resources[{r_index}].uri", f"{resource.uri!r} is used more than once")
                )
            seen_uris.add(resource.uri)
            names = [s.name for s in resource.scopes]
            for name in _duplicates(names):
                problems.append(Problem(f"{where}.resources[{r_index}].scopes", f"{name!r} is used more than once"))
            problems += _implies_problems(f"{where}.resources[{r_index}]", resource)
    return problems


def parse_config(text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None) -> BrokerConfig:
    """Validate configuration text; raise :class:`ConfigError` listing every problem found."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [Problem(where, f"not valid YAML: {reason}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [Problem("", "the file must be a mapping of sections (issuer:, redis:, ...)")])

    data, problems = interpolate(raw, os.environ if env is None else env)
    try:
        config = BrokerConfig.model_validate(data)
    except ValidationError as exc:
        problems += [Problem(_pydantic_path(data, tuple(e["loc"])), _message(e)) for e in exc.errors()]
        raise ConfigError(source, problems) from None
    if config.policy_file is not None:
        if config.resources or config.mappings:
            problems.append(
                Problem("policy_file", "with a policy file, resources and mappings belong in that file only")
            )
            raise ConfigError(source, problems)
        resources, mappings = load_policy_file(config.policy_file, config, env=env)
        config = config.model_copy(update={"resources": resources, "mappings": mappings})
    problems += semantic_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def _validate_policy(raw: Any, source: str, config: BrokerConfig, env: Mapping[str, str]) -> BrokerConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [Problem("", "the policy file must be a mapping with resources: and mappings:")])
    data, problems = interpolate(raw, env)
    try:
        policy = PolicyFileModel.model_validate(data)
    except ValidationError as exc:
        problems += [Problem(_pydantic_path(data, tuple(e["loc"])), _message(e)) for e in exc.errors()]
        raise ConfigError(source, problems) from None
    merged = config.model_copy(update={"resources": policy.resources, "mappings": policy.mappings})
    problems += semantic_problems(merged)
    if problems:
        raise ConfigError(source, problems)
    return merged


def load_policy_file(
    path: str | os.PathLike[str], config: BrokerConfig, *, env: Mapping[str, str] | None = None
) -> tuple[list[ResourceConfig], list[MappingRule]]:
    """Read and fully validate a policy file against the providers of ``config``."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(file), [Problem("", f"cannot read the file: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(file), [Problem("", f"not UTF-8 text (byte {exc.start})")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(file), [Problem("", f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    merged = _validate_policy(raw, str(file), config, os.environ if env is None else env)
    return list(merged.resources), list(merged.mappings)


def config_path(explicit: str | None = None) -> Path | None:
    chosen = explicit or os.environ.get(ENV_VAR)
    return Path(chosen) if chosen else None


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> BrokerConfig:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), [Problem("", f"cannot read the file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(file), [Problem("", "the file is not UTF-8 text")]) from None
    return parse_config(text, source=str(file), env=env)
