"""The real engine: MiniCPM-o 2.6 from the hub or a local directory, with its remote code.

Its remote code needs transformers 4.44.x (4.48 breaks its TTS, 4.49 fails at import) and hard-codes
CUDA in a few TTS lines, so loading checks both and says plainly what is wrong instead of failing deep
inside the model. Where the files come from (directory, cache, download) and the GPU memory check
are in `download.py`.

Must not import: sockets, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omni_server.engine.base import Engine, EngineInfo, kv_bytes_per_token
from omni_server.engine.download import check_assets, check_gpu_memory, model_dir
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
        raise EngineError("No CUDA GPU is visible. Use --engine tiny to try the server without one.")
    if device != "cuda":
        raise EngineError(
            f"MiniCPM-o 2.6's speech output hard-codes CUDA in its TTS code, so it cannot stream speech on "
            f"{device!r}. Run it on a CUDA GPU, or use --engine tiny."
        )
    if Path(model).is_dir():
        check_assets(Path(model))


def load_minicpmo(model: str = DEFAULT_MODEL, *, device: str = "cuda", dtype: str = "bf16") -> Engine:
    """Load MiniCPM-o 2.6 ready to stream (downloads with progress bars on first use)."""
    check_environment(model, device)
    import torch
    from huggingface_hub import constants
    from transformers import AutoModel, AutoTokenizer

    torch_dtype = getattr(torch, _DTYPES[dtype])
    check_gpu_memory(*torch.cuda.mem_get_info(), dtype)  # before a 17 GB download, not after
    path = model_dir(model, offline=constants.HF_HUB_OFFLINE)
    try:
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
    return Engine(model=llm, tokenizer=tokenizer, info=info)
