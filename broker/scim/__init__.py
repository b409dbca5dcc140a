"""SCIM 2.0 service provider (RFC 7643, RFC 7644), one tenant per provisioned provider, whose
effects on grants go through the signals core (:mod:`broker.signals.effects`). Protocol logic
only, no web framework: the routes are ``broker/routes/scim.py``."""
