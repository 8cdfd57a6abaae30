"""Which engine to run, on which device, and why; then loading it, failures in one sentence.

The user's explicit choices win: `--engine minicpmo`, a `--model` (a directory or a hub id) or a
`--device` mean the real model, on that device (`auto`: CUDA when torch sees a GPU, else Apple's mps,
else the CPU, which is far from real time). Only when nothing asks for the real model does `--engine
auto` fall back to the tiny engine on a machine without CUDA, and it says so. `--engine null` (no model:
engine/null.py) is asked for by name only. A flag the chosen
engine does not use is named in a warning, never silently dropped.

Must not import: sockets, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from omni_server.config import Settings
from omni_server.engine.base import Engine
from omni_server.engine.minicpmo import DEFAULT_MODEL, load_minicpmo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceProbe:
    """What torch can use here (injected, so the choice is tested without the hardware)."""

    cuda: Callable[[], str | None]  # the first CUDA device's name, or None
    mps: Callable[[], bool]
    nvidia_smi: Callable[[], bool] = lambda: False  # nvidia-smi sees a GPU (that torch may not be able to use)

    @classmethod
    def torch(cls) -> DeviceProbe:
        def cuda() -> str | None:
            import torch

            return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None

        def mps() -> bool:
            import torch

            return bool(torch.backends.mps.is_available())

        def nvidia_smi() -> bool:
            from omni_server.engine.doctor import Probes

            return Probes.here().nvidia_smi() is not None

        return cls(cuda=cuda, mps=mps, nvidia_smi=nvidia_smi)


@dataclass(frozen=True)
class EngineChoice:
    """The engine to load and the reasons, in words a user reads at start-up."""

    engine: str  # "minicpmo" | "tiny" | "null"
    model: str
    device: str  # "cuda" | "mps" | "cpu"
    reason: str
    warnings: tuple[str, ...] = field(default=())


def choose_engine(settings: Settings, probe: DeviceProbe | None = None) -> EngineChoice:
    """The engine, model and device for these settings, with why, and warnings for flags it ignores."""
    probe = probe or DeviceProbe.torch()
    model = settings.model or DEFAULT_MODEL
    if settings.engine in ("tiny", "null"):
        name = settings.engine
        ignored = [f"--model {settings.model}"] * bool(settings.model) + [f"--device {settings.device}"] * (
            settings.device != "auto"
        )
        ignored += ["--engine-faults"] * (name == "null" and settings.engine_faults > 0)
        warnings = tuple(f"{flag} is ignored: --engine {name} runs the {name} engine" for flag in ignored)
        return EngineChoice(name, "tiny-random" if name == "tiny" else "none", "cpu", f"--engine {name}", warnings)
    if settings.engine == "minicpmo":
        why = "--engine minicpmo"
    elif settings.model:
        why = f"--model {settings.model} names a MiniCPM-o 2.6 snapshot"
    elif settings.device != "auto":
        why = f"--device {settings.device} asks for the real model"
    else:
        gpu = probe.cuda()
        if gpu is None:
            unusable = probe.nvidia_smi()
            return EngineChoice(
                "tiny",
                "tiny-random",
                "cpu",
                "no CUDA GPU is present, and neither --model nor --device asks for the real model; the tiny "
                "engine's replies are noise (give --model or --device cpu to run the real model here, slowly)",
                ("nvidia-smi sees an NVIDIA GPU that torch cannot use: `python -m omni_server doctor` says why",)
                * unusable,
            )
        return _real(settings, model, f"a CUDA GPU is present ({gpu})", probe)
    return _real(settings, model, why, probe)


def _real(settings: Settings, model: str, why: str, probe: DeviceProbe) -> EngineChoice:
    warnings: list[str] = []
    device = settings.device
    if device == "auto":
        gpu = probe.cuda()
        device = "cuda" if gpu is not None else "mps" if probe.mps() else "cpu"
        why += f", on {device} ({gpu})" if gpu else f", on {device} (no CUDA GPU)"
    else:
        why += f", on --device {device}"
    if settings.engine_cost != "none":
        warnings.append(f"--engine-cost {settings.engine_cost} is ignored: it slows only the tiny and null engines")
    if settings.engine_faults:
        warnings.append("--engine-faults is ignored: only the tiny engine injects faults")
    return EngineChoice("minicpmo", model, device, why, tuple(warnings))


def load_engine(settings: Settings, probe: DeviceProbe | None = None) -> Engine:
    """Load the chosen engine; every failure is an `EngineError` with one plain sentence."""
    choice = choose_engine(settings, probe)
    logger.info("engine: %s on %s, because %s", choice.engine, choice.device, choice.reason)
    for warning in choice.warnings:
        logger.warning("%s", warning)
    if choice.engine == "minicpmo":
        return load_minicpmo(choice.model, device=choice.device, dtype=settings.dtype)
    from omni_server.engine.cost import EngineCost

    cost = EngineCost.parse(settings.engine_cost)
    if choice.engine == "null":
        from omni_server.engine.null import build_null_engine

        return build_null_engine(cost)
    from omni_server.engine.tiny import build_tiny_engine

    return build_tiny_engine(seed=settings.seed, cost=cost, faults=settings.engine_faults)
