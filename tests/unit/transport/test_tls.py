"""The self-signed certificate: what Apple requires of a TLS server certificate, and a key nobody else can read."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from omni_server.transport.tls import make_self_signed, server_context


def test_certificate_has_server_auth_names_and_a_short_life(tmp_path: Path) -> None:
    """serverAuth EKU, SAN for localhost and 127.0.0.1, at most 825 days: what Safari and iOS check (HT210176)."""
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(cert_path, key_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=825, minutes=5)
    server_context(str(cert_path), str(key_path), str(tmp_path))  # the pair loads as a server context


def test_key_file_is_private_from_its_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with umask 0, the key file is 0600 while its bytes are written, and a stale world-readable one is replaced."""
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    key_path.write_text("stale")
    key_path.chmod(0o644)
    modes_while_writing: list[int] = []
    real_fdopen = os.fdopen

    def spy(fd: int, *args: Any, **kwargs: Any) -> Any:
        modes_while_writing.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", spy)
    old_umask = os.umask(0)
    try:
        make_self_signed(cert_path, key_path)
    finally:
        os.umask(old_umask)
    assert modes_while_writing == [0o600]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key_path.read_bytes()


def test_an_older_kept_certificate_without_server_auth_is_replaced(tmp_path: Path) -> None:
    """A certificate made by an earlier version (no serverAuth) is remade on start; a current one is kept."""
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(cert_path, key_path)
    kept = cert_path.read_bytes()
    server_context(None, None, str(tmp_path))
    assert cert_path.read_bytes() == kept
    cert_path.write_bytes(_old_style_certificate())
    server_context(None, None, str(tmp_path))
    remade = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert ExtendedKeyUsageOID.SERVER_AUTH in remade.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def _old_style_certificate() -> bytes:
    """What earlier versions made: self-signed, SAN localhost, no ExtendedKeyUsage."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=100))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
