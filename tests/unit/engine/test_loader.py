"""Engine choice respects the user: explicit --model/--device mean the real model; auto says why; ignored flags warn."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni_server.config import load_settings
from omni_server.engine.loader import DeviceProbe, choose_engine, load_engine
from omni_server.errors import EngineError

NO_GPU = DeviceProbe(cuda=lambda: None, mps=lambda: False)
GPU = DeviceProbe(cuda=lambda: "NVIDIA H200", mps=lambda: False)
MAC = DeviceProbe(cuda=lambda: None, mps=lambda: True)


def choice(*argv: str, probe: DeviceProbe = NO_GPU, **env: str):  # type: ignore[no-untyped-def]
    return choose_engine(load_settings(list(argv), env), probe)


def test_auto_without_gpu_or_flags_is_tiny_and_says_how_to_get_the_real_model() -> None:
    """Nothing asks for the real model and there is no GPU: tiny, and the reason names --model and --device."""
    c = choice()
    assert (c.engine, c.device) == ("tiny", "cpu")
    assert "no CUDA GPU" in c.reason and "--model" in c.reason and "--device cpu" in c.reason


def test_an_explicit_model_means_the_real_model_even_without_a_gpu(tmp_path: Path) -> None:
    """--model DIR on a CPU machine runs MiniCPM-o on the CPU, and says so (the flag the issue found ignored)."""
    c = choice("--model", str(tmp_path), "--device", "cpu")
    assert (c.engine, c.model, c.device) == ("minicpmo", str(tmp_path), "cpu")
    assert f"--model {tmp_path}" in c.reason and "--device cpu" in c.reason
    hub = choice("--model", "openbmb/MiniCPM-o-2_6")
    assert (hub.engine, hub.device) == ("minicpmo", "cpu") and "no CUDA GPU" in hub.reason


def test_an_explicit_device_means_the_real_model() -> None:
    """--device cpu alone asks for the real model (the default hub id); OMNI_DEVICE counts the same."""
    for c in (choice("--device", "cpu"), choice(OMNI_DEVICE="cpu")):
        assert (c.engine, c.model, c.device) == ("minicpmo", "openbmb/MiniCPM-o-2_6", "cpu")


def test_auto_device_prefers_cuda_then_mps_then_cpu() -> None:
    """The real model goes to the best device torch can use, named in the reason."""
    assert choice(probe=GPU).device == "cuda" and "NVIDIA H200" in choice(probe=GPU).reason
    assert choice("--engine", "minicpmo", probe=MAC).device == "mps"
    assert choice("--engine", "minicpmo").device == "cpu"


def test_flags_the_chosen_engine_ignores_are_warned_about() -> None:
    """--engine tiny with --model/--device, or the real model with --engine-cost/--engine-faults: each named."""
    tiny = choice("--engine", "tiny", "--model", "/m", "--device", "cpu")
    assert tiny.engine == "tiny" and len(tiny.warnings) == 2
    assert all("ignored" in w for w in tiny.warnings)
    real = choice("--device", "cpu", "--engine-cost", "minicpmo-2.6", "--engine-faults", "0.1")
    assert real.engine == "minicpmo" and [w.split()[0] for w in real.warnings] == ["--engine-cost", "--engine-faults"]


def test_a_missing_model_directory_fails_in_one_sentence(tmp_path: Path) -> None:
    """Loading a directory without the model's files is an EngineError naming what is missing, not a traceback."""
    with pytest.raises(EngineError, match="assets/Vocos.pt"):
        load_engine(load_settings(["--model", str(tmp_path), "--device", "cpu"], {}), NO_GPU)


def test_a_gpu_torch_cannot_use_is_pointed_out() -> None:
    """auto falls back to tiny, but when nvidia-smi sees a GPU torch cannot use it says to run doctor."""
    c = choice(probe=DeviceProbe(cuda=lambda: None, mps=lambda: False, nvidia_smi=lambda: True))
    assert c.engine == "tiny" and any("python -m omni_server doctor" in w for w in c.warnings)
    assert choice().warnings == ()
