"""Client ID metadata documents (draft-ietf-oauth-client-id-metadata-document; MCP client registration).

Placeholder: documents are not fetched yet, so URL client ids are refused.
"""

from __future__ import annotations

from broker.config.models import RegistrationConfig
from broker.oauth.clients import Client


class MetadataDocuments:
    def __init__(self, config: RegistrationConfig) -> None:
        self.config = config

    async def get(self, client_id: str) -> Client | None:
        return None

    async def aclose(self) -> None:
        return None
