"""What one call needs, resolved from the server's settings and the client's `session.init` (manager.py).

Must not import: websockets, aiortc, torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from omni_server.session.turns import TurnConfig

_VOICE_MODES = {"assistant": "audio_assistant", "roleplay": "audio_roleplay", "voice_cloning": "voice_cloning"}


@dataclass(frozen=True)
class CallConfig:
    """Everything one call needs, resolved from server settings and the client's `session.init`."""

    video: bool = False
    conversation_mode: str = "assistant"  # assistant | roleplay | voice_cloning
    language: str = "en"
    instructions: str | None = None
    ref_audio: npt.NDArray[np.float32] | None = None
    greeting: str | None = None  # role-play: spoken first, before the user says anything
    max_new_tokens: int = 256
    min_new_tokens: int = 0  # >0 keeps the model from ending a reply early (benchmarks use it for long replies)
    temperature: float | None = None
    tts_enabled: bool = True
    max_slice_nums: int | None = None
    turn_detection: bool = True
    turn: TurnConfig = field(default_factory=TurnConfig)
    barge_in: bool = True
    preroll_ms: int = 500
    max_context_tokens: int = 8192
    max_call_s: float = 1800.0
    idle_timeout_s: float = 120.0
    max_pending_audio_s: float = 30.0
    max_prompt_tokens: int = 2048  # the instructions (with a character's persona), in the model's tokens
    input_burst_s: float | None = 10.0  # input beyond real time refused after this much (None: no limit)
    end_of_turn_threshold: float | None = None  # Smart Turn's confidence that ends a turn (None: not asked)
    speculate: bool = False  # start the reply at a pause (`turn.speculate_pause_ms`), before the turn is confirmed
    resume_window_s: float = 0.0  # talking again this soon after a reply became audible continues the turn

    def model_mode(self) -> str:
        return "omni" if self.video and self.conversation_mode == "assistant" else _VOICE_MODES[self.conversation_mode]
