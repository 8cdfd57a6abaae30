"""Which engine to run, and why: the real model on a CUDA GPU, the tiny one otherwise.

Must not import: sockets, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import logging

from omni_server.config import Settings
from omni_server.engine.base import Engine

logger = logging.getLogger(__name__)


def choose_engine(settings: Settings) -> tuple[str, str]:
    """(engine name, the reason) for `--engine auto|minicpmo|tiny`."""
    if settings.engine != "auto":
        return settings.engine, f"--engine {settings.engine}"
    import torch

    if torch.cuda.is_available():
        return "minicpmo", f"a CUDA GPU is present ({torch.cuda.get_device_name(0)})"
    return "tiny", "no CUDA GPU is present; the tiny engine's replies are noise (use a GPU for the real model)"


def load_engine(settings: Settings) -> Engine:
    name, why = choose_engine(settings)
    logger.info("engine: %s, because %s", name, why)
    if name == "minicpmo":
        from omni_server.engine.minicpmo import load_minicpmo

        return load_minicpmo(settings.model, device=settings.device, dtype=settings.dtype)
    from omni_server.engine.cost import EngineCost
    from omni_server.engine.tiny import build_tiny_engine

    return build_tiny_engine(seed=settings.seed, cost=EngineCost.parse(settings.engine_cost))
