"""Any reference a client gives — an audio file, or raw PCM as the SDK sends it — to a prepared voice.

Joins the bounded decoder (`media.audio_file`) and the checks (`media.voice_prep`); this is the
boundary where their refusals become `InvalidVoice`, whose message is shown to the person as it is.
Synchronous and CPU-bound: callers run it on the `VoicePreparer`'s threads. Must not import: torch,
the engine, websockets.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from omni_server.errors import from_media
from omni_server.media.audio_file import DecodeLimits, check_content_type, decode_audio_file
from omni_server.media.vad import SileroVadModel
from omni_server.media.voice_prep import PreparedVoice, prepare_reference


def voice_from_file(data: bytes, content_type: str, limits: DecodeLimits, vad: SileroVadModel) -> PreparedVoice:
    """Decode an uploaded or recorded file within `limits`, then check and prepare it."""
    with from_media():
        check_content_type(content_type)
        return prepare_reference(decode_audio_file(data, limits), vad)


def voice_from_pcm(samples: npt.NDArray[np.float32], vad: SileroVadModel) -> PreparedVoice:
    """Check and prepare 16 kHz mono float32 samples (the SDK's `voice.ref_audio_base64`)."""
    with from_media():
        return prepare_reference(samples, vad)
