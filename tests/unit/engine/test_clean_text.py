"""Text shown to a user carries none of the tokenizer's special or added tokens, and no control characters."""

from __future__ import annotations

from omni_server.engine.base import TextCleaner
from omni_server.engine.tiny import SPECIAL_TOKENS, build_tiny_engine, build_tiny_tokenizer


def test_every_special_token_the_tokenizer_knows_is_removed() -> None:
    """Each special token, alone or between words, disappears; the words around it stay as they were."""
    clean = build_tiny_engine().clean_text
    for token in SPECIAL_TOKENS:
        assert clean(f"Hello{token} world{token}") == "Hello world", token


def test_tokens_added_to_the_tokenizer_are_removed_too() -> None:
    """The cleaner asks the tokenizer: a token added later (`<reserved_7>`) goes, a whitespace-only one stays."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["<reserved_7>", "</image_id>"], special_tokens=True)
    tokenizer.add_tokens(["  "])
    clean = TextCleaner(tokenizer)
    assert clean("a<reserved_7>b</image_id>c  d") == "abc  d"


def test_control_characters_and_replacement_marks_go_newlines_stay() -> None:
    """C0/C1 controls, DEL and U+FFFD are removed; tab, newline and non-ASCII letters are text."""
    clean = build_tiny_engine().clean_text
    assert clean("ok\x00\x01\x08\x1b[\x7f\x85\ufffd\tnext\nline é 世界") == "ok[\tnext\nline é 世界"
