"""The real engine stops early with doctor's sentences, and wraps its calls in the device's scope."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest

from omni_server.engine.devices import CudaRedirect
from omni_server.engine.doctor import TorchInfo
from omni_server.engine.minicpmo import check_environment, device_scope
from omni_server.errors import EngineError
from tests.unit.engine.test_doctor import HEALTHY


def test_every_problem_is_named_at_start_up() -> None:
    """Two things wrong: the start-up error carries both sentences, nothing more."""
    probes = dataclasses.replace(HEALTHY, transformers=lambda: "4.49.0", torchaudio=lambda: "OSError: broken")
    with pytest.raises(EngineError) as info:
        check_environment("openbmb/MiniCPM-o-2_6", "cuda", "bf16", probes)
    assert "transformers 4.44.x" in info.value.message and "torchaudio" in info.value.message


def test_mps_without_apple_silicon_is_refused() -> None:
    """--device mps where torch has no mps says what it needs."""
    with pytest.raises(EngineError, match="Apple silicon"):
        check_environment("openbmb/MiniCPM-o-2_6", "mps", "bf16", HEALTHY)
    mac = dataclasses.replace(HEALTHY, torch=lambda: TorchInfo("2.13.0", None, False, None, mps_ok=True))
    check_environment("openbmb/MiniCPM-o-2_6", "mps", "bf16", mac)


def test_calls_run_in_the_device_scope() -> None:
    """CUDA needs nothing around its calls; cpu and mps get the CUDA redirect to themselves."""
    assert isinstance(device_scope("cuda"), contextlib.nullcontext)
    scope = device_scope("cpu")
    assert isinstance(scope, CudaRedirect) and scope.device == "cpu"
