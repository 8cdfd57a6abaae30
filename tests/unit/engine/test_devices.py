"""The real model's device: CUDA requests follow the chosen device, and memory is checked where the weights live."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from omni_server.engine.devices import CudaRedirect, check_memory, memory_need_gib
from omni_server.errors import EngineError

GIB = 2**30


def test_cuda_requests_go_to_the_chosen_device_inside_only() -> None:
    """The model code's `.cuda()`, `.to("cuda", dtype)` and `Module.to("cuda")` land on the CPU; outside, torch is as before."""
    before = (torch.Tensor.__dict__.get("cuda"), torch.Tensor.__dict__.get("to"), nn.Module.__dict__["to"])
    with CudaRedirect("cpu"):
        ids = torch.tensor([1, 2, 3]).cuda()
        moved = torch.Tensor([4.0]).to("cuda", dtype=torch.long)
        keyword = torch.ones(2).to(device=torch.device("cuda"))
        layer = nn.Linear(2, 2).to("cuda")
        assert {ids.device.type, moved.device.type, keyword.device.type, layer.weight.device.type} == {"cpu"}
        assert moved.dtype == torch.long
        assert torch.ones(1).to(torch.float64).dtype == torch.float64  # other requests pass through unchanged
    assert (torch.Tensor.__dict__.get("cuda"), torch.Tensor.__dict__.get("to"), nn.Module.__dict__["to"]) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_outside_the_redirect_cuda_still_fails() -> None:
    """Without the redirect a CPU-only torch refuses `.cuda()`, as the model code alone would."""
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1).cuda()


def test_nested_and_concurrent_entries_share_one_patch() -> None:
    """Entries from two threads keep the redirect until the last one leaves; a second device is refused."""
    redirect, inside, release = CudaRedirect("cpu"), threading.Event(), threading.Event()
    before = torch.Tensor.__dict__.get("cuda")

    def hold() -> None:
        with redirect:
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    inside.wait(10)
    with redirect:
        pass
    assert torch.zeros(1).cuda().device.type == "cpu"  # the other thread is still inside
    with pytest.raises(RuntimeError, match="already redirected"), CudaRedirect("mps"):
        pass
    release.set()
    worker.join(10)
    assert torch.Tensor.__dict__.get("cuda") is before


def test_memory_need_follows_the_snapshot_and_dtype(tmp_path: Path) -> None:
    """No local snapshot: the published model's ~19 GiB (bf16) / ~37 GiB (fp32); a local one: its own weights."""
    assert memory_need_gib(None, "bf16") == pytest.approx(18.8, abs=0.1)
    assert memory_need_gib(None, "fp32") == pytest.approx(36.6, abs=0.1)
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float32"}))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * (GIB // 16))  # 64 MiB of fp32 weights
    assert memory_need_gib(tmp_path, "bf16") == pytest.approx(1.0 + 0.0625 / 2 * 1.1, abs=0.05)


def test_too_little_memory_is_one_sentence_per_device() -> None:
    """GPU memory on CUDA, system memory elsewhere, each with both figures and what to do; enough passes."""
    with pytest.raises(EngineError, match=r"Not enough GPU memory.*19\.0 GiB.*7\.5 of 24\.0 GiB.*nvidia-smi"):
        check_memory("cuda", int(7.5 * GIB), 24 * GIB, 19.0, "bf16")
    with pytest.raises(EngineError, match=r"Not enough system memory.*19\.0 GiB.*3\.0 of 16\.0 GiB"):
        check_memory("cpu", 3 * GIB, 16 * GIB, 19.0, "bf16")
    check_memory("mps", 40 * GIB, 64 * GIB, 19.0, "bf16")
