"""TLS for the one https/wss port: a given certificate, or a self-signed one made on first run.

The self-signed certificate covers `localhost`, `127.0.0.1` and this machine's own host names and
addresses, so a phone on the same network can join after trusting it. It carries what Apple requires
of a TLS server certificate (support.apple.com HT210176: SAN names, `ExtendedKeyUsage(serverAuth)`,
at most 825 days), so Safari and iPhones accept it once it is trusted. Keys stay in `ssl/` (ignored by
git); the key file is created with mode 0600, so it is never readable by others, not even while written.

Must not import: torch, the engine, the session.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)
CERT_NAME, KEY_NAME = "cert.pem", "key.pem"


def server_context(cert: str | None, key: str | None, ssl_dir: str) -> tuple[ssl.SSLContext, Path]:
    """An SSL context for serving; makes a self-signed certificate when none is given or kept."""
    if cert and key:
        cert_path, key_path = Path(cert), Path(key)
    else:
        cert_path, key_path = Path(ssl_dir) / CERT_NAME, Path(ssl_dir) / KEY_NAME
        if not (key_path.exists() and kept_certificate_ok(cert_path)):
            make_self_signed(cert_path, key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


def kept_certificate_ok(cert_path: Path) -> bool:
    """A self-signed certificate made earlier is kept while valid and made as now (older ones had no serverAuth)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    return ExtendedKeyUsageOID.SERVER_AUTH in eku and cert.not_valid_after_utc > soon


def local_names() -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) this machine answers to."""
    names = {"localhost", socket.gethostname()}
    with _suppress_os_errors():
        names.add(socket.getfqdn())
    addresses = {"127.0.0.1", "::1"}
    with _suppress_os_errors():
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addresses.add(str(info[4][0]).split("%")[0])
    return sorted(n for n in names if n), sorted(addresses)


def make_self_signed(cert_path: Path, key_path: Path, *, days: int = 825) -> None:
    dns_names, addresses = local_names()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "omni_server (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(key_path, pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    logger.info("made a self-signed certificate at %s for %s", cert_path, ", ".join(dns_names + addresses))


# Signing TLS handshakes (ECDSA), and itself: the certificate is its own issuer, trusted as a root.
_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret to a new file that is 0600 from its creation (a stale one is replaced, never reused:
    its mode could be wider, and `O_EXCL` refuses a link planted in its place)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class _suppress_os_errors:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, tb: object) -> bool:
        return isinstance(value, OSError)
