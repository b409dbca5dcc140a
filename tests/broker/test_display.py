"""Text a client chooses and users read: what is refused, what is welcome, in DCR and in config."""

from __future__ import annotations

import pytest

from broker.display import hidden_character
from tests.broker.config.test_loader import VALID, problems


@pytest.mark.parametrize(
    "char",
    [
        "\x00",
        "\t",
        "\x1b",
        "\x7f",
        "\x9b",
        "\u00ad",
        "\u061c",
        "\u200b",
        "\u200e",
        "\u202e",
        "\u2066",
        "\u2028",
        "\ufeff",
    ],
)
def test_characters_that_do_not_read_as_themselves(char: str) -> None:
    assert hidden_character(f"Visual{char}Studio") == f"U+{ord(char):04X}"


@pytest.mark.parametrize(
    "text", ["Claude Code", "Éditeur", "日本語のクライアント", "مرحبا", "Ωμέγα", "🙂", "a b-c_d.e (f)"]
)
def test_text_in_any_script_is_welcome(text: str) -> None:
    assert hidden_character(text) is None


def test_a_static_client_name_is_held_to_the_same_rule() -> None:
    text = VALID.replace(
        "resources:\n",
        'registration:\n  static_clients:\n    - client_id: agent\n      client_name: "\\u202eedoC oidutS lausiV"\n'
        "      redirect_uris: ['http://127.0.0.1/cb']\n"
        "resources:\n",
        1,
    )
    found = problems(text)
    assert any(p.startswith("registration.static_clients[0].client_name: ") and "(U+202E)" in p for p in found), found
