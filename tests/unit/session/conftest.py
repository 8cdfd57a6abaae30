"""Fixtures shared by the session tests."""

from __future__ import annotations

import pytest

from omni_server.media.vad import SileroVadModel


@pytest.fixture(scope="module")
def vad_model() -> SileroVadModel:
    """silero-vad, loaded once per module (a module may define its own)."""
    return SileroVadModel()
