"""Text a client chooses and the broker shows to users (its name on the sign-in and consent pages).

Such text must read as what it is (Unicode TR #36, "visual spoofing"): no control characters
(NUL included), no format characters (bidi embeddings, overrides and isolates U+202A-U+202E and
U+2066-U+2069, zero-width U+200B-U+200F and U+FEFF, soft hyphen...), no line or paragraph
separators, and no lone surrogates. ``"\\u202eedoC oidutS lausiV"`` would otherwise read
"Visual Studio Code" on the consent page. Dependency-free: the config models and the OAuth
client checks both use it.
"""

from __future__ import annotations

import unicodedata

# Cc control, Cf format, Cs surrogate, Zl line separator, Zp paragraph separator.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def hidden_character(text: str) -> str | None:
    """The first character of ``text`` that does not display as itself, as ``U+XXXX``; else None."""
    for char in text:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return f"U+{ord(char):04X}"
    return None
