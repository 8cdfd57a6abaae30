"""Text a person typed (a message in a call, a text to read aloud), made safe to put in the model's prompt.

MiniCPM-o reads some text as structure rather than words: its tokenizer turns special tokens
(`<|im_end|>`, `<|tts_eos|>`, `<unit>`, `<image>`, `<reserved_53>`, ...) into control tokens, so typed
text could end the user's turn and write the assistant's; and its processor fills every
`(<image>./</image>)` or `(<audio>./</audio>)` with media, so a typed one fails the prefill (more slots
than inputs). `plain_text` puts a zero-width space after the `<` of every tag-shaped piece
(`<`, an optional `|` or `/`, a name, an optional `|`, `>`): the model still reads the characters that
were typed, but no special token and no placeholder can form. Control characters other than newline
and tab are dropped.

Must not import: torch, websockets, aiortc.
"""

from __future__ import annotations

import re
import unicodedata

ZERO_WIDTH_SPACE = "\u200b"
_TAG_START = re.compile(r"<(?=[|/]{0,2}[A-Za-z_][\w.]*\|?>)")


def plain_text(text: str) -> str:
    """`text` with every special-token or placeholder shape broken, and control characters removed."""
    kept = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")
    return _TAG_START.sub("<" + ZERO_WIDTH_SPACE, kept)
