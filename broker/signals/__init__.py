"""Upstream signals that end or narrow access at once: SCIM provisioning, OpenID Connect
Back-Channel Logout, Shared Signals (CAEP/RISC). Protocol logic, no web framework.

Every receiver turns what arrived into a :class:`~broker.signals.effects.Signal` and hands it to
:class:`~broker.signals.effects.SignalEffects`, which revokes, re-applies the policy or records,
and audits, remembers and measures each one the same way (docs/deprovisioning.md).
"""
