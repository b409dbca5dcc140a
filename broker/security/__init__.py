"""Defences that are not OAuth protocol: login throttling."""
