"""Static files: the page's files are served, and no path (outside the root, malformed) gets past a 404."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni_server.transport.http import StaticFiles


@pytest.fixture
def site(tmp_path: Path) -> StaticFiles:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("<p>hi</p>")
    (tmp_path / "secret.txt").write_text("no")
    return StaticFiles(str(tmp_path / "web"))


def test_the_page_is_served(site: StaticFiles) -> None:
    """`/` and `/index.html` give the page as UTF-8 HTML."""
    for path in ("/", "/index.html"):
        response = site.get(path)
        assert response.status_code == 200 and response.body == b"<p>hi</p>"
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize(
    "path", ["/../secret.txt", "/missing.js", "/\x00", "/a\x00b.js", "/" + "a" * 300, "/" + "a/" * 3000]
)
def test_bad_paths_are_plain_404s(site: StaticFiles, path: str) -> None:
    """Outside the root, missing, a NUL byte, a name or path longer than the filesystem allows: 404, never a 500."""
    response = site.get(path)
    assert response.status_code == 404 and response.body == b"Not found.\n"
