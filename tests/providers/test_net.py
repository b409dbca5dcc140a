"""``providers.net.tls_context``: a provider's ``ca_file`` adds a private CA to what is trusted
(certifi's bundle and the system's), never replaces it; and verification stays on."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi

from providers.net import tls_context
from tests.tls import make_ca


def subjects(context: ssl.SSLContext) -> set[str]:
    return {str(cert["subject"]) for cert in context.get_ca_certs()}


def test_a_ca_file_adds_to_the_public_roots(tmp_path: Path) -> None:
    public = subjects(tls_context())
    assert len(public) >= len(ssl.create_default_context(cafile=certifi.where()).get_ca_certs()) > 0
    ca = make_ca(tmp_path, "mcp-broker private CA")
    both = tls_context(str(ca.cert_path))
    assert public < subjects(both)  # every public root still trusted, and one more
    assert any("mcp-broker private CA" in s for s in subjects(both) - public)
    assert both.verify_mode == ssl.CERT_REQUIRED
    assert both.check_hostname
