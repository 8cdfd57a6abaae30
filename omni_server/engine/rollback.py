"""Exact rollback of one conversation's model state: take a `Checkpoint`, later put the state back.

A speculative reply (started before the user's turn is confirmed) or a reply the user talked into at
once must leave no trace when it is dropped: the conversation continues as if it had never existed,
token for token. This module owns what "the state" is and how it is copied; the worker decides when.

What the model mutates, and so what a checkpoint must keep (shared/research/official_code_run.md §4.6-4.8;
MiniCPM-o 2.6's `modeling_minicpmo.py` as of the HF code, and transformers 4.44.2's `cache_utils`):

- `session_id`, `new_user_msg`, `llm_generated`, `llm_generate_completed`: plain values, rebound.
- `llm_past_key_values`: a legacy tuple of (key, value) tensors. Every prefill and every 3-token
  `llm.generate` wraps it in a fresh `DynamicCache` (`from_legacy_cache` appends the same tensors to new
  lists) whose `update` builds new tensors with `torch.cat`, and the model rebinds the attribute to the
  result; nothing writes into the old tensors. A reference is enough.
- `audio_past_key_values`: the streaming Whisper encoder's `EncoderDecoderCache` around a
  `DynamicCache`. It is *mutated in place* by each prefill of the same user turn (`update` replaces the
  items of its `key_cache`/`value_cache` lists and adds to `_seen_tokens`), so the tail prefill a
  speculation starts with would change a cache a bare reference points to. A checkpoint copies the
  containers (the cache objects, their lists and dicts) and shares the tensors, which are never written.
- the tiny engine's `sampling_rng`, a `torch.Generator` whose state every draw advances in place: a
  checkpoint keeps a clone. (The real model samples from torch's global generator, shared by all calls;
  its replies are reproducible only under a fixed global seed, which is no conversation's state.)
- nothing else: the TTS's caches, the reply generator's locals and the processor's outputs live only as
  long as one call or one reply.

A value of any other kind raises `TypeError`: sharing an unknown mutable object would silently break
exactness, so new model state must be taught here first. tests/unit/engine/test_rollback.py proves the
tiny engine exact; tests/integration/test_rollback_real_code.py does the same with the real remote code
(OMNI_REAL_CODE_MODEL: a random-weight snapshot of it), where a bare-reference snapshot fails.

Must not import: sockets, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["Checkpoint", "copy_state", "restore", "take"]

_IMMUTABLE = (str, int, float, bool, bytes, frozenset, type(None))


@dataclass(frozen=True)
class Checkpoint:
    """A conversation's model state at one moment, and its context length then."""

    state: dict[str, Any]
    context_tokens: int


def copy_state(value: Any) -> Any:
    """A copy that shares every tensor and copies every container and cache object around them."""
    torch = sys.modules.get("torch")  # never imported here: importing the server must not load torch
    if isinstance(value, _IMMUTABLE) or (torch is not None and isinstance(value, torch.Tensor)):
        return value
    if torch is not None and isinstance(value, torch.Generator):
        rng = torch.Generator(device=value.device)
        rng.set_state(value.get_state())
        return rng
    if isinstance(value, tuple):
        return tuple(copy_state(v) for v in value)
    if isinstance(value, set):  # nn.Module bookkeeping inside a cache object (names)
        return set(value)
    if isinstance(value, list | dict):  # subclasses too (an OrderedDict inside a cache object stays one)
        container = copy.copy(value)
        for key in range(len(value)) if isinstance(value, list) else value.keys():
            container[key] = copy_state(value[key])
        return container
    if _is_cache(value):
        clone = copy.copy(value)
        clone.__dict__ = {k: copy_state(v) for k, v in vars(value).items()}
        return clone
    raise TypeError(f"cannot checkpoint model state of type {type(value).__qualname__}: teach engine/rollback.py")


def _is_cache(value: Any) -> bool:
    """A transformers cache object (`DynamicCache`, `EncoderDecoderCache`, ...): containers of tensors."""
    return any(cls.__module__.startswith("transformers.cache_utils") for cls in type(value).__mro__)


def take(model: Any, attrs: tuple[str, ...], context_tokens: int) -> Checkpoint:
    """Checkpoint the conversation live on `model` (call on the thread that owns the model)."""
    return Checkpoint({name: copy_state(getattr(model, name)) for name in attrs}, context_tokens)


def restore(model: Any, checkpoint: Checkpoint) -> None:
    """Put a checkpointed state back on `model`; the checkpoint stays usable (it is copied again)."""
    for name, value in checkpoint.state.items():
        setattr(model, name, copy_state(value))
