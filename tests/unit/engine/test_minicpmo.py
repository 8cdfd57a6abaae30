"""The real engine refuses, in plain words, what MiniCPM-o 2.6's code cannot run on, and accepts cpu."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omni_server.engine.minicpmo import check_environment
from omni_server.errors import EngineError


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_no_gpu_is_explained() -> None:
    """Without CUDA the message says so and points at doctor, the CPU and the tiny engine."""
    with pytest.raises(EngineError, match="No CUDA GPU.*doctor.*--device cpu.*--engine tiny"):
        check_environment("openbmb/MiniCPM-o-2_6", "cuda")


def test_cpu_is_accepted() -> None:
    """The CPU is a device the real model runs on (slowly): nothing to refuse."""
    check_environment("openbmb/MiniCPM-o-2_6", "cpu")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has mps")
def test_mps_without_apple_silicon_is_explained() -> None:
    """--device mps on a machine whose torch has no mps says what it needs."""
    with pytest.raises(EngineError, match="Apple silicon"):
        check_environment("openbmb/MiniCPM-o-2_6", "mps")


def test_local_directory_without_assets_is_refused(tmp_path: Path) -> None:
    """A local snapshot missing assets/ is named as such before loading."""
    with pytest.raises(EngineError, match="assets/Vocos.pt"):
        check_environment(str(tmp_path), "cpu")


def test_wrong_transformers_version_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformers release the model's code cannot run on is named, with the fix."""
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.49.0")
    with pytest.raises(EngineError, match=r"needs transformers 4\.44\.x, found 4\.49\.0.*requirements_o2\.6\.txt"):
        check_environment("openbmb/MiniCPM-o-2_6", "cpu")
