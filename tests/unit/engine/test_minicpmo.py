"""The real engine refuses, in plain words, what MiniCPM-o 2.6's code cannot run on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omni_server.engine.minicpmo import check_environment
from omni_server.errors import EngineError


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_no_gpu_is_explained() -> None:
    """Without CUDA the message says so and points at the tiny engine."""
    with pytest.raises(EngineError, match="No CUDA GPU.*--engine tiny"):
        check_environment("openbmb/MiniCPM-o-2_6", "cuda")


def test_other_devices_are_refused_with_the_reason() -> None:
    """mps/cpu: the model's speech code hard-codes CUDA, and the error says that."""
    for device in ("mps", "cpu"):
        with pytest.raises(EngineError, match="hard-codes CUDA"):
            check_environment("openbmb/MiniCPM-o-2_6", device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_local_directory_without_assets_is_refused(tmp_path: Path) -> None:
    """A local snapshot missing assets/ is named as such before loading."""
    with pytest.raises(EngineError, match="assets/Vocos.pt"):
        check_environment(str(tmp_path), "cuda")


def test_wrong_transformers_version_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformers release the model's code cannot run on is named, with the fix."""
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.49.0")
    with pytest.raises(EngineError, match=r"needs transformers 4\.44\.x, found 4\.49\.0.*requirements_o2\.6\.txt"):
        check_environment("openbmb/MiniCPM-o-2_6", "cuda")
