"""The real engine: MiniCPM-o 2.6 from the hub or a local directory, with its remote code, on cuda, cpu or mps.

Its remote code needs transformers 4.44.x (4.48 breaks its TTS, 4.49 fails at import), so loading checks
that and says plainly what is wrong instead of failing deep inside the model. Its six hard-coded CUDA
placements follow the chosen device through `devices.CudaRedirect`, entered around loading and around
every model call (`Engine.call_scope`); the code itself is used unchanged. Where the files come from
(directory, cache, download) is in `download.py`; memory needs per device in `devices.py`.

Must not import: sockets, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from omni_server.engine.base import Engine, EngineInfo, kv_bytes_per_token
from omni_server.engine.devices import CPU_SPEED_NOTE, CudaRedirect, check_memory, measure_memory, memory_need_gib
from omni_server.engine.download import check_assets, model_dir
from omni_server.errors import EngineError

logger = logging.getLogger(__name__)
DEFAULT_MODEL = "openbmb/MiniCPM-o-2_6"
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def check_environment(model: str, device: str) -> None:
    """Refuse early, with a clear message, what the model's remote code cannot run on."""
    import torch
    import transformers

    version = tuple(int(p) for p in transformers.__version__.split(".")[:2])
    if version != (4, 44):
        raise EngineError(
            f"MiniCPM-o 2.6's code needs transformers 4.44.x, found {transformers.__version__}: "
            "run `pip install -r requirements_o2.6.txt` (4.48 breaks its speech output, 4.49 fails at import)."
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError(
            "No CUDA GPU is visible to torch: `python -m omni_server doctor` says why; --device cpu runs the model "
            "slowly, --engine tiny runs the server without it."
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise EngineError("--device mps needs Apple silicon with a torch built for it (torch.backends.mps).")
    if Path(model).is_dir():
        check_assets(Path(model))


def device_scope(device: str) -> AbstractContextManager[object]:
    """What every model call is wrapped in: nothing on CUDA, the CUDA redirect elsewhere."""
    return contextlib.nullcontext() if device == "cuda" else CudaRedirect(device)


def load_minicpmo(model: str = DEFAULT_MODEL, *, device: str = "cuda", dtype: str = "bf16") -> Engine:
    """Load MiniCPM-o 2.6 ready to stream on `device` (downloads with progress bars on first use)."""
    check_environment(model, device)
    import torch
    from huggingface_hub import constants
    from transformers import AutoModel, AutoTokenizer

    torch_dtype = getattr(torch, _DTYPES[dtype])
    local = Path(model).expanduser()
    # before a 17 GB download, not after
    check_memory(device, *measure_memory(device), memory_need_gib(local if local.is_dir() else None, dtype), dtype)
    if device != "cuda":
        logger.warning("MiniCPM-o 2.6 on %s: %s", device, CPU_SPEED_NOTE)
    path = model_dir(model, offline=constants.HF_HUB_OFFLINE)
    scope = device_scope(device)
    try:
        with scope:
            llm: Any = AutoModel.from_pretrained(
                path, trust_remote_code=True, attn_implementation="sdpa", torch_dtype=torch_dtype
            )
            llm = llm.eval().to(device)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
            llm.init_tts()
    except torch.cuda.OutOfMemoryError as e:
        raise EngineError("Not enough GPU memory to load MiniCPM-o 2.6 (about 19 GiB in bf16).") from e
    except ImportError as e:
        raise EngineError(f"MiniCPM-o 2.6's code could not import: {e}. Check requirements_o2.6.txt.") from e
    except Exception as e:  # the boundary of the model's own code: one sentence here, the traceback at debug
        logger.debug("loading %s failed", path, exc_info=True)
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise EngineError(f"MiniCPM-o 2.6 could not be loaded from {path}: {type(e).__name__}: {first_line}") from e
    # Qwen2-7B inside: 28 layers × 4 KV heads × 128 × (key + value) × 2 bytes = 56 KiB per token in bf16/fp16.
    per_token = kv_bytes_per_token(llm.config, element_bytes=torch_dtype.itemsize)
    info = EngineInfo(
        name="minicpm-o-2.6",
        model=model,
        device=device,
        dtype=dtype,
        replies_are_noise=False,
        kv_bytes_per_token=per_token,
    )
    return Engine(model=llm, tokenizer=tokenizer, info=info, call_scope=lambda: scope)
