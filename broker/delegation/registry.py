"""The target kinds: ``kind`` -> constructor. A new kind is a module of this package with a class
following ``broker.delegation.targets.Target`` and one entry in :data:`OPENERS`."""

from __future__ import annotations

from broker.config.delegation import EntraTargetConfig, InternalTargetConfig, OidcTargetConfig
from broker.delegation.internal import InternalTarget
from broker.delegation.targets import Opener, Target, TargetContext
from broker.delegation.upstream import UpstreamTarget


def _internal(config: InternalTargetConfig, context: TargetContext) -> Target:
    return InternalTarget(config, context)


def _upstream(config: EntraTargetConfig | OidcTargetConfig, context: TargetContext) -> Target:
    return UpstreamTarget(config, context)


OPENERS: dict[str, Opener] = {"internal": _internal, "entra": _upstream, "oidc": _upstream}


def open_targets(context: TargetContext) -> dict[str, Target]:
    """Every configured target, by id; ``ValueError`` for a kind without an opener."""
    targets: dict[str, Target] = {}
    for config in context.config.delegation.targets:
        opener = OPENERS.get(config.kind)
        if opener is None:
            raise ValueError(f"delegation target {config.id}: kind {config.kind!r} is not available")
        targets[config.id] = opener(config, context)
    return targets
