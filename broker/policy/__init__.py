"""Group-to-scope policy: a pure function of configuration and identity."""

from broker.policy.evaluate import Decision, Policy

__all__ = ["Decision", "Policy"]
