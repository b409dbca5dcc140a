from __future__ import annotations

from tests.broker.flows import Broker, refresh, tokens_for


def test_full_flow(broker: Broker) -> None:
    client, tokens = tokens_for(broker, "alice")
    assert tokens["scope"] == "notes:read notes:write"
    again = refresh(broker, client["client_id"], tokens["refresh_token"])
    assert again.status_code == 200, again.text
