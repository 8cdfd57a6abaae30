"""The real silero model with a gate or a fault, for tests of the VAD batcher's scheduling and errors."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from omni_server.media.vad import SileroVadModel
from tests.conftest import timeout

Probs = npt.NDArray[np.float32]


class GatedModel(SileroVadModel):
    """The real model, whose first batch waits until the test opens the gate (`entered` says it has begun)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.gate = threading.Event(), threading.Event()
        self.batch_sizes: list[int] = []

    def infer_batch(self, frames: Probs, states: Probs) -> tuple[Probs, Probs]:
        self.entered.set()
        self.gate.wait(timeout(10))
        self.batch_sizes.append(len(frames))
        return super().infer_batch(frames, states)


class BrokenModel(SileroVadModel):
    """A model whose every call fails, as onnxruntime might."""

    def infer_batch(self, frames: Probs, states: Probs) -> tuple[Probs, Probs]:
        raise RuntimeError("onnxruntime failed")
