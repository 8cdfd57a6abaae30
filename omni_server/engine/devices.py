"""Where the real model runs: the device it is put on, and the memory that device must have.

MiniCPM-o 2.6's remote code hard-codes CUDA in six small places: it moves Vocos with `.to("cuda")`,
and a few token-id tensors with `.cuda()` or `.to("cuda", dtype=...)` (the generation prompt, the TTS
start and text ids; shared/research/official_code_run.md §2). Everything else follows the model's own
device. `CudaRedirect` makes those six follow the device the user chose instead, without touching the
model's code: while a model call runs inside it, a request for CUDA from `Tensor.cuda`, `Tensor.to` or
`Module.to` goes to the chosen device; every other request is passed through unchanged. It is entered
around every model call (`Engine.call_scope`, used by the engine worker) and around loading. The patch
is process-wide while any call is inside it (torch's methods live on the class), so it is reference
counted, and one process redirects to one device at a time.

Memory: the model needs about its weights in the chosen dtype plus a working set, measured against
free GPU memory on CUDA and available system memory on cpu/mps (unified memory on Apple silicon).
The figures are passed in by the caller (doctor's probes, or torch/psutil at load).

Must not import: sockets, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from omni_server.errors import EngineError

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
_TORCH_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# The published MiniCPM-o 2.6 snapshot: 8.7 B parameters stored in bf16 (about 16.2 GiB of weights).
REFERENCE_WEIGHT_GIB_BF16 = 16.2
WORKING_SET_FACTOR, WORKING_SET_GIB = 1.1, 1.0  # caches of one call, the TTS and Vocos, allocator slack
CPU_SPEED_NOTE = (
    "the real model on a CPU is far from real time: expect many seconds per second of speech, so calls "
    "stutter; it is for trying the real code, not for talking to it"
)


def memory_need_gib(snapshot: Path | None, dtype: str) -> float:
    """GiB the model needs on its device in `dtype`: its weights (from the snapshot when present) plus a working set.

    Without a local snapshot (a hub id not yet downloaded) the published MiniCPM-o 2.6 size is used.
    """
    weights_gib = REFERENCE_WEIGHT_GIB_BF16 * DTYPE_BYTES[dtype] / 2
    if snapshot is not None:
        files = [*snapshot.glob("*.safetensors"), *snapshot.glob("*.bin")]
        if files:
            stored = sum(f.stat().st_size for f in files) / 2**30
            weights_gib = stored * DTYPE_BYTES[dtype] / _stored_dtype_bytes(snapshot)
    return round(weights_gib * WORKING_SET_FACTOR + WORKING_SET_GIB, 1)


def _stored_dtype_bytes(snapshot: Path) -> int:
    try:
        config = json.loads((snapshot / "config.json").read_text())
    except (OSError, ValueError):
        return 2
    return _TORCH_DTYPE_BYTES.get(str(config.get("torch_dtype", "bfloat16")), 2)


def check_memory(device: str, free_bytes: int, total_bytes: int, need_gib: float, dtype: str) -> None:
    """Refuse before loading when `device` has less free memory than `need_gib`, in one sentence."""
    free_gib, total_gib = free_bytes / 2**30, total_bytes / 2**30
    if free_gib >= need_gib:
        return
    if device == "cuda":
        where, fix = "GPU memory", "stop other GPU processes (see nvidia-smi)"
    else:
        where, fix = "system memory", "close other programs or use a machine with more memory"
    raise EngineError(
        f"Not enough {where}: MiniCPM-o 2.6 in {dtype} needs about {need_gib:.1f} GiB, and only {free_gib:.1f} of "
        f"{total_gib:.1f} GiB are free; {fix}, or use --engine tiny to try the server without the model."
    )


def measure_memory(device: str) -> tuple[int, int]:
    """(free, total) bytes where the model's weights will live: the GPU on CUDA, system memory otherwise."""
    if device == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info()
        return int(free), int(total)
    import psutil

    memory = psutil.virtual_memory()
    return int(memory.available), int(memory.total)


def _is_cuda(target: Any) -> bool:
    kind = getattr(target, "type", target)
    return isinstance(kind, str) and kind.split(":")[0] == "cuda"


class CudaRedirect:
    """While entered, requests for CUDA (`Tensor.cuda`, `Tensor.to`, `Module.to`) go to `device` instead.

    Re-entrant and thread-safe: the patch is installed by the first entry and removed by the last exit.
    A second device while one is installed is refused (torch's methods are shared by the whole process).
    """

    _lock = threading.Lock()
    _depth = 0
    _device: str | None = None
    _saved: dict[tuple[type, str], Any] = {}

    def __init__(self, device: str) -> None:
        if _is_cuda(device):
            raise ValueError("CudaRedirect is for non-CUDA devices; CUDA needs no redirect")
        self.device = device

    def __enter__(self) -> CudaRedirect:
        cls = type(self)
        with cls._lock:
            if cls._depth and cls._device != self.device:
                raise RuntimeError(f"CUDA is already redirected to {cls._device}; one device per process")
            if cls._depth == 0:
                cls._install(self.device)
            cls._depth += 1
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        cls = type(self)
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0:
                cls._uninstall()

    @classmethod
    def _install(cls, device: str) -> None:
        import torch

        tensor_to, module_to = torch.Tensor.to, torch.nn.Module.to

        def retarget(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if args and _is_cuda(args[0]):
                args = (device, *args[1:])
            if _is_cuda(kwargs.get("device")):
                kwargs = {**kwargs, "device": device}
            return args, kwargs

        def to_tensor(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            args, kwargs = retarget(args, kwargs)
            return tensor_to(self, *args, **kwargs)

        def to_module(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
            args, kwargs = retarget(args, kwargs)
            return module_to(self, *args, **kwargs)

        def cuda(self: torch.Tensor, device_index: Any = None, non_blocking: bool = False, **_: Any) -> torch.Tensor:
            return tensor_to(self, device, non_blocking=non_blocking)

        patches = {(torch.Tensor, "to"): to_tensor, (torch.nn.Module, "to"): to_module, (torch.Tensor, "cuda"): cuda}
        for (owner, name), replacement in patches.items():
            cls._saved[(owner, name)] = owner.__dict__.get(name)
            setattr(owner, name, replacement)
        cls._device = device

    @classmethod
    def _uninstall(cls) -> None:
        for (owner, name), original in cls._saved.items():
            if original is None:
                delattr(owner, name)  # it was inherited (torch._C.TensorBase): uncover it again
            else:
                setattr(owner, name, original)
        cls._saved.clear()
        cls._device = None
