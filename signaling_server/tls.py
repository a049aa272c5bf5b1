"""The server's TLS identity: a self-made certificate on first start, and its pin.

Clients pin the SHA-256 of the certificate (DER). It is carried in enrolment codes and
in the ``auth.challenge`` frame, in the form ``sha-256 AB:CD:...`` used everywhere in
the protocol for fingerprints.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol.identity import certificate_pin


@dataclass(frozen=True, slots=True)
class TlsIdentity:
    cert_path: Path
    key_path: Path
    fingerprint: str  # "sha-256 AB:CD:..."

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        # No TLS 1.3 session tickets: our clients never resume a session (each link is
        # a full handshake, then authenticated by the protocol), so tickets were work
        # and bytes on every handshake for nothing (docs/scale.md, "One process").
        context.num_tickets = 0
        return context


def fingerprint_of_pem_file(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return certificate_pin(cert.public_bytes(serialization.Encoding.DER))


def load_or_create(
    data_dir: Path, *, cert_path: Path | None = None, key_path: Path | None = None
) -> tuple[TlsIdentity, bool]:
    """The configured certificate, or the one made on a previous start, or a new one.

    Returns the identity and whether it was created now.
    """
    if cert_path is not None and key_path is not None:
        return TlsIdentity(cert_path, key_path, fingerprint_of_pem_file(cert_path)), False
    cert_path = data_dir / "server-cert.pem"
    key_path = data_dir / "server-key.pem"
    if cert_path.exists() and key_path.exists():
        return TlsIdentity(cert_path, key_path, fingerprint_of_pem_file(cert_path)), False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Live Support server {hostname}")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(hostname),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The key is written readable by its owner only, before any byte goes in.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    identity = TlsIdentity(
        cert_path, key_path, certificate_pin(cert.public_bytes(serialization.Encoding.DER))
    )
    return identity, True
