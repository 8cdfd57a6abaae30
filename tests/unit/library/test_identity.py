"""User ids: signed by the server, found in header, query or cookie; forged or foreign ones are ignored."""

from __future__ import annotations

from pathlib import Path

from omni_server.library.identity import Identity


def test_issued_credentials_verify_and_forgeries_do_not(tmp_path: Path) -> None:
    """A credential verifies to its id; a changed id or signature, or another server's secret, does not."""
    identity = Identity(tmp_path)
    user, credential = identity.issue()
    assert identity.verify(credential) == user
    other, _ = identity.issue()
    assert identity.verify(other + "." + credential.split(".")[1]) is None
    assert identity.verify(user + ".AAAA") is None
    assert identity.verify("alice") is None and identity.verify(None) is None
    assert Identity(tmp_path / "elsewhere").verify(credential) is None
    assert Identity(tmp_path).verify(credential) == user, "the secret persists in the data dir"
    assert (tmp_path / "user-secret.key").stat().st_mode & 0o077 == 0


def test_user_is_read_from_header_query_or_cookie(tmp_path: Path) -> None:
    """Each documented place works; a bad credential in one place does not hide a good one in another."""
    identity = Identity(tmp_path)
    user, credential = identity.issue()
    assert identity.user_of("/", [("X-Omni-User", credential)]) == user
    assert identity.user_of(f"/v1/realtime?mode=audio&user={credential}", []) == user
    assert identity.user_of("/", [("Cookie", f"omni_token=x; omni_user={credential}")]) == user
    assert identity.user_of("/", [("X-Omni-User", "forged"), ("Cookie", f"omni_user={credential}")]) == user
    assert identity.user_of("/", []) is None
    cookie = identity.cookie(credential)
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
