"""TLS for the one https/wss port: a given certificate, or a self-signed one made on first run.

The self-signed certificate covers `localhost`, `127.0.0.1` and this machine's own host names and
addresses, so a phone on the same network can join after trusting it. Keys stay in `ssl/` (ignored by git).

Must not import: torch, the engine, the session.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

logger = logging.getLogger(__name__)
CERT_NAME, KEY_NAME = "cert.pem", "key.pem"


def server_context(cert: str | None, key: str | None, ssl_dir: str) -> tuple[ssl.SSLContext, Path]:
    """An SSL context for serving; makes a self-signed certificate when none is given or kept."""
    if cert and key:
        cert_path, key_path = Path(cert), Path(key)
    else:
        cert_path, key_path = Path(ssl_dir) / CERT_NAME, Path(ssl_dir) / KEY_NAME
        if not (cert_path.exists() and key_path.exists()):
            make_self_signed(cert_path, key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


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
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    logger.info("made a self-signed certificate at %s for %s", cert_path, ", ".join(dns_names + addresses))


class _suppress_os_errors:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, tb: object) -> bool:
        return isinstance(value, OSError)
