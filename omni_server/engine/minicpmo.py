"""The real engine: MiniCPM-o 2.6 from the hub or a local directory, with its remote code, on cuda, cpu or mps.

Before anything is downloaded or loaded, doctor's checks (`doctor.py`: GPU and driver, torch and torchaudio
builds, transformers 4.44.x, assets, memory) say plainly what would fail deep inside the model. Its six hard-coded CUDA
placements follow the chosen device through `devices.CudaRedirect`, entered around loading and around
every model call (`Engine.call_scope`); the code itself is used unchanged. Where the files come from
(directory, cache, download) is in `download.py`; memory needs per device in `devices.py`.

Must not import: sockets, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager
from typing import Any

from omni_server.engine.base import Engine, EngineInfo, kv_bytes_per_token
from omni_server.engine.devices import CPU_SPEED_NOTE, CudaRedirect
from omni_server.engine.doctor import Probes, diagnose, failures
from omni_server.engine.download import model_dir
from omni_server.errors import EngineError

logger = logging.getLogger(__name__)
DEFAULT_MODEL = "openbmb/MiniCPM-o-2_6"
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def check_environment(model: str, device: str, dtype: str = "bf16", probes: Probes | None = None) -> None:
    """Refuse early, in plain sentences, what stops the model's code here (doctor's checks, `doctor.py`)."""
    problems = failures(diagnose(model, device, dtype, probes or Probes.here()))
    if problems:
        raise EngineError(" ".join(problems))


def device_scope(device: str) -> AbstractContextManager[object]:
    """What every model call is wrapped in: nothing on CUDA, the CUDA redirect elsewhere."""
    return contextlib.nullcontext() if device == "cuda" else CudaRedirect(device)


def load_minicpmo(model: str = DEFAULT_MODEL, *, device: str = "cuda", dtype: str = "bf16") -> Engine:
    """Load MiniCPM-o 2.6 ready to stream on `device` (downloads with progress bars on first use)."""
    check_environment(model, device, dtype)  # before a 17 GB download, not after
    import torch
    from huggingface_hub import constants
    from transformers import AutoModel, AutoTokenizer

    torch_dtype = getattr(torch, _DTYPES[dtype])
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
