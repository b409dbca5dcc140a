"""Emulators of upstream services that cannot be reached from tests (Microsoft Entra ID)."""
