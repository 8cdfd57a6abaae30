"""Model files: local directories, the warm cache offline, and a plain message for each way it can fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni_server.engine.download import model_dir
from omni_server.errors import EngineError

REPO = "openbmb/MiniCPM-o-2_6"


def fake_snapshot(root: Path, *, assets: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}")
    if assets:
        (root / "assets" / "chattts_tokenizer").mkdir(parents=True)
        (root / "assets" / "Vocos.pt").write_bytes(b"not really weights")
    return root


def fake_cache(cache: Path) -> Path:
    """The hub cache layout: refs/main names a commit whose snapshot folder holds the files."""
    repo = cache / ("models--" + REPO.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return fake_snapshot(repo / "snapshots" / commit)


def test_local_directory_is_used_as_is(tmp_path: Path) -> None:
    """A local snapshot directory with its assets is used without touching the hub."""
    snapshot = fake_snapshot(tmp_path / "snap")
    assert model_dir(str(snapshot), offline=True) == snapshot


def test_local_directory_without_assets_names_the_missing_files(tmp_path: Path) -> None:
    """A snapshot without assets/ is refused with the file names, before any loading."""
    snapshot = fake_snapshot(tmp_path / "snap", assets=False)
    with pytest.raises(EngineError, match=r"assets/Vocos\.pt, assets/chattts_tokenizer"):
        model_dir(str(snapshot), offline=True)


def test_missing_directory_is_named(tmp_path: Path) -> None:
    """A path that does not exist is not mistaken for a hub id."""
    with pytest.raises(EngineError, match="no model directory"):
        model_dir(str(tmp_path / "nowhere"), offline=True)


def test_warm_cache_works_offline(tmp_path: Path) -> None:
    """With HF_HUB_OFFLINE the cached snapshot is found by hub id, with no network."""
    snapshot = fake_cache(tmp_path / "hub")
    assert model_dir(REPO, offline=True, cache_dir=str(tmp_path / "hub")) == snapshot


def test_offline_with_empty_cache_says_how_to_fix_it(tmp_path: Path) -> None:
    """Offline and not cached: the message names HF_HUB_OFFLINE and the --model way out."""
    with pytest.raises(EngineError, match=r"not in the Hugging Face cache.*HF_HUB_OFFLINE=1.*--model"):
        model_dir(REPO, offline=True, cache_dir=str(tmp_path / "empty"))
