"""doctor explains every environment failure in one sentence, from faked probes of each failure."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from omni_server.engine.doctor import NvidiaSmi, Probes, TorchInfo, diagnose, failures
from omni_server.engine.minicpmo import check_environment
from omni_server.errors import EngineError

GIB = 2**30
H100 = NvidiaSmi(gpus=("NVIDIA H100 80GB HBM3",), driver="550.54.15", cuda="12.4")
CUDA_TORCH = TorchInfo("2.13.0+cu124", "12.4", cuda_ok=True, cuda_error=None, mps_ok=False)
HEALTHY = Probes(
    nvidia_smi=lambda: H100,
    torch=lambda: CUDA_TORCH,
    torchaudio=lambda: None,
    transformers=lambda: "4.44.2",
    memory=lambda device: (70 * GIB, 80 * GIB),
)


def with_(**changes: object) -> Probes:
    return dataclasses.replace(HEALTHY, **changes)  # type: ignore[arg-type]


def only_failure(probes: Probes, model: str = "openbmb/MiniCPM-o-2_6", device: str = "cuda") -> str:
    """The single failing finding, checked to be one sentence."""
    bad = failures(diagnose(model, device, "bf16", probes))
    assert len(bad) == 1, bad
    sentence = bad[0]
    assert "\n" not in sentence and sentence.endswith(".")
    assert len(re.findall(r"[.!?] [A-Z]", sentence.replace("e.g. ", ""))) == 0, sentence  # one sentence
    return sentence


def test_a_healthy_gpu_machine_has_no_failures() -> None:
    """Driver, torch, torchaudio, transformers and memory all fine: nothing fails, each says ok."""
    findings = diagnose("openbmb/MiniCPM-o-2_6", "cuda", "bf16", HEALTHY)
    assert failures(findings) == [] and {f.level for f in findings} == {"ok"}


def test_cpu_only_torch_with_a_gpu_names_the_build_to_install() -> None:
    """nvidia-smi sees a GPU but torch is a CPU wheel: the driver, the torch version and the install command."""
    cpu_torch = TorchInfo("2.13.0+cpu", None, cuda_ok=False, cuda_error="Torch not compiled with CUDA", mps_ok=False)
    text = only_failure(with_(torch=lambda: cpu_torch))
    assert "H100" in text and "550.54.15" in text and "CPU-only build" in text
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124" in text


def test_a_driver_too_old_for_this_torch_names_driver_and_matching_build() -> None:
    """torch built for CUDA 13.0 on a driver that supports 12.4: the driver it needs and the cu124 build."""
    new_torch = TorchInfo("2.13.0+cu130", "13.0", cuda_ok=False, cuda_error="driver too old", mps_ok=False)
    text = only_failure(with_(torch=lambda: new_torch))
    assert "built for CUDA 13.0" in text and "driver 580.65.06 or newer" in text
    assert "--index-url https://download.pytorch.org/whl/cu124" in text


def test_other_cuda_failures_quote_torch() -> None:
    """A matching build that still cannot use the GPU quotes torch's own reason."""
    broken = TorchInfo("2.13.0+cu124", "12.4", cuda_ok=False, cuda_error="CUDA unknown error", mps_ok=False)
    assert "CUDA unknown error" in only_failure(with_(torch=lambda: broken))


def test_no_gpu_at_all_points_at_cpu_and_tiny() -> None:
    """--device cuda with no NVIDIA GPU: says so, and names --device cpu and --engine tiny."""
    none = TorchInfo("2.13.0+cpu", None, cuda_ok=False, cuda_error=None, mps_ok=False)
    text = only_failure(with_(nvidia_smi=lambda: None, torch=lambda: none))
    assert "No NVIDIA GPU" in text and "--device cpu" in text and "--engine tiny" in text


def test_torchaudio_that_cannot_load_its_libraries() -> None:
    """torchaudio's compiled parts failing against torch: the error, and the release that matches."""
    error = "OSError: libtorchaudio.so: undefined symbol: _ZN3c1017RegisterOperators"
    text = only_failure(with_(torchaudio=lambda: error))
    assert "undefined symbol" in text and "pip install torchaudio==2.13.0" in text


def test_torchaudio_on_a_cpu_torch_also_offers_pure_python_mode() -> None:
    """On a CPU-only torch the fix also says how to run torchaudio without its compiled libraries."""
    cpu_torch = TorchInfo("2.13.0+cpu", None, cuda_ok=False, cuda_error=None, mps_ok=False)
    probes = with_(nvidia_smi=lambda: None, torch=lambda: cpu_torch, torchaudio=lambda: "OSError: libcudart.so.13")
    assert "pure-Python mode" in only_failure(probes, device="cpu")


def test_wrong_transformers() -> None:
    """transformers 4.49 is named, with the requirements file that pins 4.44.2."""
    text = only_failure(with_(transformers=lambda: "4.49.0"))
    assert "4.44.x" in text and "4.49.0" in text and "requirements_o2.6.txt" in text


def test_missing_assets(tmp_path: Path) -> None:
    """A local snapshot without assets/ names the missing files."""
    text = only_failure(HEALTHY, model=str(tmp_path))
    assert "assets/Vocos.pt" in text and "assets/chattts_tokenizer" in text


def test_not_enough_memory_on_gpu_and_on_cpu() -> None:
    """Too little GPU memory on CUDA, too little system memory on the CPU: each with the figures."""
    assert "GPU memory" in only_failure(with_(memory=lambda device: (8 * GIB, 24 * GIB)))
    cpu = only_failure(with_(memory=lambda device: (4 * GIB, 16 * GIB)), device="cpu")
    assert "system memory" in cpu and "4.0 of 16.0 GiB" in cpu


def test_cpu_gets_a_plain_speed_note_not_a_failure() -> None:
    """The real model on a CPU is allowed, and doctor says plainly that it is far from real time."""
    findings = diagnose("openbmb/MiniCPM-o-2_6", "cpu", "bf16", HEALTHY)
    assert failures(findings) == []
    assert any(f.level == "note" and "far from real time" in f.text for f in findings)


def test_start_up_runs_the_same_checks() -> None:
    """Loading the real engine stops with doctor's sentence before any download."""
    with pytest.raises(EngineError, match="needs transformers 4.44.x, found 4.49.0"):
        check_environment("openbmb/MiniCPM-o-2_6", "cuda", "bf16", with_(transformers=lambda: "4.49.0"))


def test_doctor_command_runs_here() -> None:
    """`python -m omni_server doctor --device cpu` prints one line per check and exits 0 or 1."""
    proc = subprocess.run(
        [sys.executable, "-m", "omni_server", "doctor", "--device", "cpu", "--model", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert "transformers" in proc.stdout and "Traceback" not in proc.stderr
