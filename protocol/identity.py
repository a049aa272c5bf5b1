"""Ed25519 identities: the device challenge and the consent receipt.

Every signed payload starts with a distinct context string, so a signature made for
one purpose can never be replayed as another (a challenge answer is not a consent).
Payloads are canonical JSON: sorted keys, no spaces, UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.enums import Mode
from protocol.errors import ErrorCode, RemoteProtocolError
from protocol.messages import ConsentReceipt

CHALLENGE_CONTEXT = b"livesupport/device-auth/v1\x00"
CONSENT_CONTEXT = b"livesupport/consent/v1\x00"
NONCE_BYTES = 32

_FINGERPRINT_LINE = re.compile(r"^a=fingerprint:(\S+) ([0-9A-Fa-f:]+)\s*$", re.MULTILINE)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise RemoteProtocolError(ErrorCode.INVALID_FIELD, "not valid base64") from None


def canonical_json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- keys -----------------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64encode(raw)


def load_public_key(text: str) -> Ed25519PublicKey:
    raw = b64decode(text)
    if len(raw) != 32:
        raise RemoteProtocolError(ErrorCode.INVALID_FIELD, "an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def certificate_pin(der: bytes) -> str:
    """What clients pin: the SHA-256 of the server's certificate (DER) as
    ``sha-256 AB:CD:...``, the form of enrolment codes, zeroconf adverts and SDP."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "sha-256 " + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _verify(public_key: Ed25519PublicKey, signature_b64: str, payload: bytes) -> None:
    signature = b64decode(signature_b64)
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise RemoteProtocolError(
            ErrorCode.BAD_SIGNATURE, "the signature does not verify"
        ) from None


# --- device authentication ------------------------------------------------------------


def challenge_payload(*, nonce_b64: str, device_id: str, server_fingerprint: str) -> bytes:
    """What a device signs to log in. Binding the server's certificate fingerprint
    means an answer relayed by a man in the middle is useless to the real server."""
    body = {"nonce": nonce_b64, "device_id": device_id, "server": server_fingerprint}
    return CHALLENGE_CONTEXT + canonical_json(body)


def sign_challenge(
    key: Ed25519PrivateKey, *, nonce_b64: str, device_id: str, server_fingerprint: str
) -> str:
    payload = challenge_payload(
        nonce_b64=nonce_b64, device_id=device_id, server_fingerprint=server_fingerprint
    )
    return b64encode(key.sign(payload))


def verify_challenge(
    public_key: Ed25519PublicKey,
    signature_b64: str,
    *,
    nonce_b64: str,
    device_id: str,
    server_fingerprint: str,
) -> None:
    payload = challenge_payload(
        nonce_b64=nonce_b64, device_id=device_id, server_fingerprint=server_fingerprint
    )
    _verify(public_key, signature_b64, payload)


# --- consent receipts -----------------------------------------------------------------


def sdp_fingerprint(sdp: str) -> str:
    """The SHA-256 DTLS fingerprint an SDP announces, as ``"sha-256 AB:CD:..."``.

    aiortc announces its certificate under several hashes (sha-256, sha-384, sha-512)
    and checks the peer's certificate against every one of them, so the sha-256 line
    names the certificate on its own; it is also the one that fits a receipt's
    fingerprint field. All media sections of one peer connection share one
    certificate: an SDP naming two different ones under the same hash, or none under
    sha-256, is refused, since a receipt can bind only one.
    """
    by_algorithm: dict[str, set[str]] = {}
    for alg, value in _FINGERPRINT_LINE.findall(sdp):
        by_algorithm.setdefault(alg.lower(), set()).add(value.upper())
    if any(len(values) > 1 for values in by_algorithm.values()):
        raise RemoteProtocolError(
            ErrorCode.INVALID_FIELD, "the SDP names two different DTLS certificates"
        )
    found = by_algorithm.get("sha-256")
    if not found:
        raise RemoteProtocolError(
            ErrorCode.INVALID_FIELD, "the SDP has no sha-256 DTLS fingerprint"
        )
    return f"sha-256 {found.pop()}"


def consent_payload(
    *,
    session_id: str,
    device_id: str,
    technician_id: str,
    mode: Mode,
    accepted_at_ms: int,
    offer_fingerprint: str,
    answer_fingerprint: str,
) -> bytes:
    body = {
        "session_id": session_id,
        "device_id": device_id,
        "technician_id": technician_id,
        "mode": mode.value,
        "accepted_at_ms": accepted_at_ms,
        "offer_fingerprint": offer_fingerprint,
        "answer_fingerprint": answer_fingerprint,
    }
    return CONSENT_CONTEXT + canonical_json(body)


def sign_consent(
    key: Ed25519PrivateKey,
    *,
    session_id: str,
    device_id: str,
    technician_id: str,
    mode: Mode,
    accepted_at_ms: int,
    offer_fingerprint: str,
    answer_fingerprint: str,
) -> ConsentReceipt:
    fields: dict[str, Any] = {
        "session_id": session_id,
        "device_id": device_id,
        "technician_id": technician_id,
        "mode": mode,
        "accepted_at_ms": accepted_at_ms,
        "offer_fingerprint": offer_fingerprint,
        "answer_fingerprint": answer_fingerprint,
    }
    signature = b64encode(key.sign(consent_payload(**fields)))
    return ConsentReceipt(signature=signature, **fields)


def verify_consent(public_key: Ed25519PublicKey, receipt: ConsentReceipt) -> None:
    """Raise RemoteProtocolError(BAD_SIGNATURE) unless the device signed this receipt."""
    payload = consent_payload(
        session_id=receipt.session_id,
        device_id=receipt.device_id,
        technician_id=receipt.technician_id,
        mode=receipt.mode,
        accepted_at_ms=receipt.accepted_at_ms,
        offer_fingerprint=receipt.offer_fingerprint,
        answer_fingerprint=receipt.answer_fingerprint,
    )
    _verify(public_key, receipt.signature, payload)
