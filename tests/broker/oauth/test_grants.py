"""What a grant keeps of the identity it was issued to, and what it gives back at refresh."""

from __future__ import annotations

import json

from broker.oauth.grants import identity_from, identity_record
from broker.oauth.sealing import Sealer
from broker.oauth.signing import new_kek
from broker.store.records import StoredIdentity
from providers.base import Identity


def test_the_identity_survives_the_store_including_whether_its_username_is_vouched_for() -> None:
    sealer = Sealer(new_kek())
    for unique in (True, False):
        identity = Identity(
            provider_id="corp",
            subject="corp:123",
            username="alice",
            groups=frozenset({"g1"}),
            group_names={"g1": "Readers"},
            private={"dn": "uid=alice"},
            username_is_unique=unique,
        )
        stored = StoredIdentity.from_json(json.loads(json.dumps(identity_record(identity, sealer).to_json())))
        assert identity_from(stored, sealer) == identity


def test_a_record_without_the_flag_does_not_vouch_for_the_username() -> None:
    sealer = Sealer(new_kek())
    record = identity_record(Identity(provider_id="corp", subject="s", username="u", username_is_unique=True), sealer)
    stored = record.to_json()
    del stored["username_is_unique"]  # as a broker before the flag wrote it
    assert not identity_from(StoredIdentity.from_json(stored), sealer).username_is_unique
