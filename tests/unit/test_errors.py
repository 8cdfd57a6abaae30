"""One error tree: media refusals become the protocol's errors at one boundary, and nothing above it sees them."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from omni_server.errors import InvalidAudio, InvalidImage, InvalidVoice, ProtocolError, error_payload, from_media
from omni_server.media.audio_file import DecodeLimits, decode_audio_file
from omni_server.media.images import decode_image
from omni_server.media.pcm import decode_f32_base64
from omni_server.media.vad import SileroVadModel
from omni_server.media.voice_prep import prepare_reference

PACKAGE = Path(__file__).resolve().parents[1].parent / "omni_server"
MEDIA_ERRORS = {"MediaError", "AudioFormatError", "ImageFormatError", "AudioFileError", "VoiceRejected"}


def test_each_kind_of_media_refusal_becomes_its_protocol_error() -> None:
    """Bad samples, a bad image, a bad file and unusable speech: InvalidAudio/Image/Voice, message kept, cause chained."""
    cases = [
        (lambda: decode_f32_base64("%%%", max_samples=10), InvalidAudio, "invalid_audio"),
        (lambda: decode_image(b"not an image", max_bytes=100, max_pixels=100), InvalidImage, "invalid_image"),
        (lambda: decode_audio_file(b"plain text", DecodeLimits()), InvalidVoice, "invalid_voice"),
        (lambda: prepare_reference(np.zeros(16_000, np.float32), SileroVadModel()), InvalidVoice, "invalid_voice"),
    ]
    for decode, wrapped, code in cases:
        with pytest.raises(wrapped) as caught, from_media():
            decode()
        assert isinstance(caught.value, ProtocolError) and caught.value.__cause__ is not None
        assert error_payload(caught.value) == {"code": code, "message": str(caught.value.__cause__)}


def test_no_module_above_media_handles_a_media_exception() -> None:
    """Outside `omni_server/media`, no module imports a media exception class: `from_media` is the one mapping."""
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "media":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("omni_server.media"):
                names = {alias.name for alias in node.names}
                allowed = {"MediaError"} if path.name == "errors.py" else set()
                assert not (names & MEDIA_ERRORS) - allowed, (
                    f"{path.relative_to(PACKAGE)} imports {names & MEDIA_ERRORS}"
                )


def test_cancellation_is_never_swallowed() -> None:
    """No `suppress(CancelledError)` in the package, and every `except CancelledError` re-raises it."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("suppress"):
                assert "CancelledError" not in ast.unparse(node), where
            if isinstance(node, ast.ExceptHandler) and node.type and "CancelledError" in ast.unparse(node.type):
                assert any(isinstance(n, ast.Raise) for stmt in node.body for n in ast.walk(stmt)), where
