"""`python -m omni_server doctor`: what in this environment stops the real model, one sentence each.

The same checks run when the real engine starts (`minicpmo.check_environment`), so a start that cannot
work stops before a long download or load, with the sentence that says why:

- a GPU that `nvidia-smi` sees but torch cannot use: a CPU-only torch wheel, or a driver too old for the
  CUDA this torch was built for (which driver would do, and which torch build matches the driver);
- torchaudio's compiled libraries failing to load against the installed torch;
- transformers other than 4.44.x (the model's code needs it);
- a local snapshot without `assets/` (Vocos.pt, chattts_tokenizer);
- too little memory where the weights go (GPU memory on CUDA, system memory on cpu/mps).

Everything the checks look at comes from `Probes`, a set of functions, so tests give each failure as a
faked probe; `Probes.here()` asks nvidia-smi, torch, torchaudio, transformers and psutil.

Must not import: sockets, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omni_server.engine.devices import CPU_SPEED_NOTE, check_memory, memory_need_gib
from omni_server.engine.download import REQUIRED_ASSETS
from omni_server.errors import EngineError

# The oldest Linux driver for each CUDA release's toolkit (NVIDIA's CUDA release notes, table 3).
MIN_DRIVER = {
    (11, 8): "520.61.05",
    (12, 1): "530.30.02",
    (12, 4): "550.54.14",
    (12, 6): "560.28.03",
    (12, 8): "570.124.06",
    (12, 9): "575.51.03",
    (13, 0): "580.65.06",
}
TORCH_INDEX = "https://download.pytorch.org/whl"


@dataclass(frozen=True)
class NvidiaSmi:
    """What `nvidia-smi` reports: the GPUs, the driver, and the newest CUDA that driver supports."""

    gpus: tuple[str, ...]
    driver: str
    cuda: str


@dataclass(frozen=True)
class TorchInfo:
    """The installed torch: its version, the CUDA it was built for (None: a CPU-only wheel), what it can use."""

    version: str
    cuda_build: str | None
    cuda_ok: bool
    cuda_error: str | None
    mps_ok: bool


@dataclass(frozen=True)
class Probes:
    """Where the checks look. Each is a function, so tests inject the failures."""

    nvidia_smi: Callable[[], NvidiaSmi | None]
    torch: Callable[[], TorchInfo]
    torchaudio: Callable[[], str | None]  # why its compiled parts fail to load, or None
    transformers: Callable[[], str]  # the installed version
    memory: Callable[[str], tuple[int, int]]  # (free, total) bytes where a device keeps the weights

    @classmethod
    def here(cls) -> Probes:
        from omni_server.engine.devices import measure_memory

        return cls(_nvidia_smi, _torch_info, _torchaudio_error, _transformers_version, measure_memory)


@dataclass(frozen=True)
class Finding:
    """One check's result: `ok`, `note` (worth knowing) or `fail` (the real model cannot start), in one sentence."""

    level: str
    text: str


def diagnose(model: str, device: str, dtype: str, probes: Probes) -> list[Finding]:
    """Every check for running `model` on `device` ("auto": the device the loader would pick) in `dtype`."""
    torch = probes.torch()
    findings = [_gpu(probes.nvidia_smi(), torch, device)]
    if device == "auto":
        device = "cuda" if torch.cuda_ok else "mps" if torch.mps_ok else "cpu"
    if device == "mps" and not torch.mps_ok:
        findings.append(
            Finding("fail", f"--device mps needs Apple silicon and a torch with mps; torch {torch.version} has none.")
        )
    findings += [_torchaudio(probes.torchaudio(), torch), _transformers(probes.transformers())]
    findings += [_assets(model), _memory(model, device, dtype, probes, torch)]
    if device != "cuda":
        findings.append(Finding("note", f"The model would run on {device}: {CPU_SPEED_NOTE}."))
    return [f for f in findings if f.text]


def failures(findings: list[Finding]) -> list[str]:
    """The sentences of the findings that stop the real model."""
    return [f.text for f in findings if f.level == "fail"]


def _gpu(smi: NvidiaSmi | None, torch: TorchInfo, device: str) -> Finding:
    needed = "fail" if device == "cuda" else "note"
    if smi is None:
        if device == "cuda" and not torch.cuda_ok:
            return Finding(
                "fail",
                "No NVIDIA GPU is visible here (nvidia-smi is missing or finds none) and torch sees no CUDA device: "
                "use --device cpu to run the model slowly, or --engine tiny to run the server without it.",
            )
        if torch.cuda_ok:
            return Finding("ok", f"torch {torch.version} can use the CUDA GPU.")
        return Finding("note", "No NVIDIA GPU is visible here (nvidia-smi is missing or finds none).")
    gpu = f"nvidia-smi sees {', '.join(smi.gpus)} (driver {smi.driver}, CUDA up to {smi.cuda})"
    if torch.cuda_ok:
        return Finding("ok", f"{gpu}, and torch {torch.version} can use it.")
    if torch.cuda_build is None:
        return Finding(
            needed,
            f"{gpu}, but torch {torch.version} is a CPU-only build: install a CUDA build of the same release, e.g. "
            f"`pip install torch=={_release(torch.version)} --index-url {TORCH_INDEX}/{_wheel_tag(smi.cuda)}`.",
        )
    built, supported = _version(torch.cuda_build), _version(smi.cuda)
    if built > supported:
        driver = MIN_DRIVER.get(_major_minor(torch.cuda_build))
        need = f"driver {driver} or newer" if driver else f"a driver that supports CUDA {torch.cuda_build}"
        return Finding(
            needed,
            f"{gpu}, but torch {torch.version} is built for CUDA {torch.cuda_build}, which needs {need}: update the "
            f"driver, or install the torch build for the driver's CUDA with `pip install torch=={_release(torch.version)} "
            f"--index-url {TORCH_INDEX}/{_wheel_tag(smi.cuda)}`.",
        )
    return Finding(needed, f"{gpu}, but torch {torch.version} cannot use it: {torch.cuda_error or 'no reason given'}.")


def _torchaudio(error: str | None, torch: TorchInfo) -> Finding:
    if error is None:
        return Finding("ok", "torchaudio loads against this torch.")
    fix = f"install the torchaudio release built for torch {_release(torch.version)} (`pip install torchaudio=={_release(torch.version)}`)"
    if torch.cuda_build is None:
        fix += ", or delete torchaudio/lib/*.so so that it runs in pure-Python mode, which is all the model needs (`make run` does this on a CPU-only torch)"
    return Finding(
        "fail", f"torchaudio cannot load its compiled libraries against torch {torch.version} ({error}): {fix}."
    )


def _transformers(version: str) -> Finding:
    if _version(version)[:2] == (4, 44):
        return Finding("ok", f"transformers {version} runs the model's code.")
    return Finding(
        "fail",
        f"MiniCPM-o 2.6's code needs transformers 4.44.x, found {version}: run `pip install -r requirements_o2.6.txt` "
        "(4.48 breaks its speech output, 4.49 fails at import).",
    )


def _assets(model: str) -> Finding:
    local = Path(model).expanduser()
    if not local.is_dir():
        return Finding("ok", "")
    missing = [p for p in REQUIRED_ASSETS if not (local / p).exists()]
    if missing:
        return Finding(
            "fail",
            f"{local} lacks {', '.join(missing)} from the MiniCPM-o 2.6 snapshot; speech output needs them: copy the "
            "snapshot's assets/ folder there, or let the server download the model.",
        )
    return Finding("ok", f"{local} holds the model's assets/.")


def _memory(model: str, device: str, dtype: str, probes: Probes, torch: TorchInfo) -> Finding:
    if device == "cuda" and not torch.cuda_ok:
        return Finding("ok", "")  # already explained by the GPU check
    local = Path(model).expanduser()
    need = memory_need_gib(local if local.is_dir() else None, dtype)
    free, total = probes.memory(device)
    try:
        check_memory(device, free, total, need, dtype)
    except EngineError as e:
        return Finding("fail", e.message)
    where = "GPU" if device == "cuda" else "system"
    return Finding(
        "ok", f"{free / 2**30:.1f} GiB of {where} memory free; the model needs about {need:.1f} GiB in {dtype}."
    )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def _major_minor(text: str) -> tuple[int, int]:
    padded = (*_version(text), 0, 0)
    return padded[0], padded[1]


def _release(torch_version: str) -> str:
    return torch_version.split("+")[0]


def _wheel_tag(cuda: str) -> str:
    """The PyTorch wheel index for the newest CUDA release at or below `cuda` (e.g. 12.4 → cu124)."""
    usable = [v for v in MIN_DRIVER if v <= _major_minor(cuda)]
    major, minor = max(usable) if usable else min(MIN_DRIVER)
    return f"cu{major}{minor}"


# ---- the probes of this machine ----------------------------------------------------------------------


def _nvidia_smi() -> NvidiaSmi | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        table = subprocess.run([exe], capture_output=True, text=True, timeout=20, check=True).stdout
        rows = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", table)
    gpus = [line.split(",") for line in rows.strip().splitlines() if "," in line]
    if not gpus:
        return None
    return NvidiaSmi(tuple(g[0].strip() for g in gpus), gpus[0][1].strip(), cuda.group(1) if cuda else "unknown")


def _torch_info() -> TorchInfo:
    import torch

    error = None
    try:
        torch.cuda.init()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    except Exception as e:  # its own report of why CUDA is unusable, quoted in the finding
        error = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return TorchInfo(
        version=torch.__version__,
        cuda_build=torch.version.cuda,
        cuda_ok=torch.cuda.is_available(),
        cuda_error=error,
        mps_ok=bool(torch.backends.mps.is_available()),
    )


def _torchaudio_error() -> str | None:
    try:
        import torch
        import torchaudio

        torchaudio.transforms.MelSpectrogram(sample_rate=24000, n_fft=1024, hop_length=256, n_mels=100)(
            torch.zeros(1024)
        )
    except Exception as e:  # any failure to load or run is the finding, quoted
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    return None


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def main(model: str, device: str, dtype: str, probes: Probes | None = None) -> int:
    """Print every finding, one line each; exit status 1 when the real model could not start here."""
    findings = diagnose(model, device, dtype, probes or Probes.here())
    for f in findings:
        print(f"{f.level:>4}  {f.text}")
    bad = failures(findings)
    print(f"\n{len(bad)} problem(s) stop the real model here." if bad else "\nThe real model can start here.")
    return 1 if bad else 0
