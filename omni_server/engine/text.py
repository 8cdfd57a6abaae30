"""Text a person typed, on its way into the model: the model's control strings made inert, its length bounded.

MiniCPM-o's tokenizer turns the literal text `<|audio_start|>` into the control token itself, and its
processor treats `(<audio>./</audio>)` as a slot for an audio input: typed into instructions, a
persona or text to read aloud, they desynchronise the prompt from its inputs and the model call
fails, ending the call. And text is paid for in tokens, not characters: a 60,000-character system
prompt held the shared engine for seconds, and one longer than the context can never fit.

So whoever puts typed text into a message wraps it in `UserText` (with the most tokens it may take),
and the engine side resolves it with the tokenizer it actually uses (`TextPolicy`): control
characters other than newline and tab are dropped, and every string the tokenizer treats as special
(and the processor's placeholders) gets a word joiner (U+2060) after its first character, so it stays
readable but is tokenized as plain characters; then the tokens are counted and a text over its limit
is refused with `text_too_long`. A text far longer than any limit
(more than `MAX_CHARS_PER_TOKEN` characters per allowed token) is refused without tokenizing it.

Typed text for any message (instructions, personas, greetings, read-aloud text, chat messages) goes
through here: `UserText` is the one helper.

Must not import: sockets, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from omni_server.errors import ProtocolError

__all__ = ["MAX_CHARS_PER_TOKEN", "TextPolicy", "UserText"]

MAX_CHARS_PER_TOKEN = 16  # generous: English averages about 4, and no limit here is near a real text
JOINER = "\u2060"  # WORD JOINER: invisible, and no tokenizer merges it into a special token
# What MiniCPM-o's processor looks for in the text, besides the tokenizer's own special tokens.
PROCESSOR_PLACEHOLDERS = ("<audio>", "</audio>", "<image>", "</image>", "<slice>", "</slice>", "<unit>", "</unit>")


@dataclass(frozen=True)
class UserText:
    """A message item holding text a person typed; the engine makes it safe (`TextPolicy.resolve`)."""

    text: str
    max_tokens: int | None = None  # None: no limit of its own (short by construction, e.g. a note)
    what: str = "The text"  # for the refusal: "The instructions are 3,120 tokens long; ..."


class TextPolicy:
    """The special strings of one tokenizer, and how many of its tokens a text takes."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        special = {*tokenizer.all_special_tokens, *PROCESSOR_PLACEHOLDERS}
        special |= {token for token in tokenizer.get_added_vocab() if len(token) > 1}  # `<unit>`, `<ref>`, ...
        self.special = tuple(sorted(special, key=len, reverse=True))
        self._pattern = re.compile("|".join(map(re.escape, self.special)))

    def neutralise(self, text: str) -> str:
        """`text` without control characters, and a word joiner after the first character of every special string."""
        text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")
        while True:  # a join can in principle complete a new one around it: repeat until none is left
            joined = self._pattern.sub(lambda m: m.group()[0] + JOINER + m.group()[1:], text)
            if joined == text:
                return text
            text = joined

    def count(self, text: str) -> int:
        """Tokens `text` takes as the model's tokenizer encodes it (no special tokens added)."""
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def resolve(self, item: UserText) -> str:
        """The text the model gets; `ProtocolError(text_too_long)` if it is over its limit."""
        if item.max_tokens is not None and len(item.text) > item.max_tokens * MAX_CHARS_PER_TOKEN:
            raise _too_long(item, f"{len(item.text):,} characters")
        text = self.neutralise(item.text)
        if item.max_tokens is not None and (tokens := self.count(text)) > item.max_tokens:
            raise _too_long(item, f"{tokens:,} tokens")
        return text

    def resolve_messages(self, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`msgs` with every `UserText` item resolved to plain text (other items untouched)."""
        return [
            {**msg, "content": [self.resolve(x) if isinstance(x, UserText) else x for x in msg["content"]]}
            for msg in msgs
        ]


def _too_long(item: UserText, size: str) -> ProtocolError:
    return ProtocolError(
        f"{item.what} is {size} long; at most {item.max_tokens:,} tokens of the model are allowed.",
        code="text_too_long",
    )
