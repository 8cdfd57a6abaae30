"""Where MiniCPM-o 2.6's files come from: a local directory, the Hugging Face cache, or a download.

A first run downloads the snapshot (about 17 GB) with huggingface_hub's own progress bars; an
interrupted download resumes where it stopped on the next start. After that the server works
offline: from a local directory (`--model /path/to/snapshot`) or from the warm cache with
`HF_HUB_OFFLINE=1`. Each way a start can fail gets its own plain-words message (a device that lacks
the memory is refused before anything is downloaded: `devices.py`).

Must not import: torch (the caller passes what it measured), sockets of our own, omni_server.session.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omni_server.errors import EngineError

logger = logging.getLogger(__name__)
REQUIRED_ASSETS = ("assets/Vocos.pt", "assets/chattts_tokenizer")


def model_dir(model: str, *, offline: bool, cache_dir: str | None = None) -> Path:
    """The local snapshot directory of `model` (a directory, or a hub id fetched into the cache)."""
    local = Path(model).expanduser()
    if local.is_dir():
        return check_assets(local)
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise EngineError(f"There is no model directory at {model}, and it is not a Hugging Face id (owner/name).")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if not offline:
        logger.info("fetching %s (first run: about 17 GB, with progress bars; resumes if interrupted)", model)
    try:
        path = snapshot_download(repo_id=model, cache_dir=cache_dir, local_files_only=offline)
    except LocalEntryNotFoundError as e:
        if offline:
            raise EngineError(
                f"{model} is not in the Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it. "
                "Run once with network access to fill the cache, or pass --model /path/to/a/snapshot."
            ) from e
        raise EngineError(
            f"{model} could not be downloaded and is not in the cache: check the network (or a proxy), "
            "or pass --model /path/to/a/snapshot."
        ) from e
    except HfHubHTTPError as e:
        raise EngineError(f"The Hugging Face hub refused {model}: {e}.") from e
    except OSError as e:
        raise EngineError(f"Could not store {model} in the cache: {e.strerror or e}.") from e
    return check_assets(Path(path))


def check_assets(snapshot: Path) -> Path:
    """The speech output needs the snapshot's `assets/`; say which file is missing."""
    missing = [p for p in REQUIRED_ASSETS if not (snapshot / p).exists()]
    if missing:
        raise EngineError(
            f"{snapshot} lacks {', '.join(missing)} from the MiniCPM-o 2.6 snapshot; speech output needs them. "
            "Copy the snapshot's assets/ folder there, or let the server download the model."
        )
    return snapshot
