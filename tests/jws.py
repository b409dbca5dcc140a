"""Other spellings of one compact JWS: the same bytes, but not canonical base64url (RFC 7515 §2).

Every spelling here decodes (leniently) to the token's own header, payload and signature, so a
verifier that does not insist on the canonical form accepts each of them as the original.
"""

from __future__ import annotations

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
PARTS = ("header", "payload", "signature")


def _spellings(segment: str) -> dict[str, str]:
    out = {"a '=' appended": segment + "="}
    unused_bits = {0: 0, 2: 4, 3: 2}[len(segment) % 4]
    if unused_bits:
        out["padded"] = segment + "=" * (-len(segment) % 4)
        # The last character's low bits fall outside the decoded bytes: set the lowest one.
        out["an unused bit set"] = segment[:-1] + ALPHABET[ALPHABET.index(segment[-1]) ^ 1]
    if "-" in segment or "_" in segment:
        out["the standard alphabet"] = segment.replace("-", "+").replace("_", "/")
    return out


def non_canonical(token: str) -> list[tuple[str, str]]:
    """(what was changed, the token so spelled), for each segment."""
    segments = token.split(".")
    assert len(segments) == 3
    variants = []
    for index, part in enumerate(PARTS):
        for change, spelled in _spellings(segments[index]).items():
            variants.append((f"{part}: {change}", ".".join([*segments[:index], spelled, *segments[index + 1 :]])))
    return variants


def signature_variants(token: str) -> list[str]:
    """The changes made to the signature; an ES256 signature (64 bytes, 86 characters) has 4 unused bits."""
    return [change for change, _ in non_canonical(token) if change.startswith("signature")]
