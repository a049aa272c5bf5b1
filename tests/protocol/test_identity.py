"""Ed25519 identities: the device challenge, the consent receipt, fingerprints, keys."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import pytest

from protocol import identity
from protocol.enums import Mode
from protocol.errors import ErrorCode, RemoteProtocolError
from protocol.identity import (
    CHALLENGE_CONTEXT,
    CONSENT_CONTEXT,
    NONCE_BYTES,
    b64encode,
    generate_key,
    public_key_b64,
)
from protocol.messages import SIGNALING, ConsentReceipt, SessionConsent

SERVER_FP = "sha-256 " + ":".join(["5A"] * 32)
OFFER_FP = "sha-256 " + ":".join(["0F"] * 32)
ANSWER_FP = "sha-256 " + ":".join(["E1"] * 32)

AIORTC_FP = (
    "sha-256 CE:2A:7E:25:FD:76:4E:48:E0:49:FE:50:72:4F:C3:C8:"
    "DD:8C:B7:3D:6E:2E:C6:03:09:05:9D:BA:7C:CF:45:17"
)
_SHA384 = (
    "sha-384 B7:8E:CB:01:3F:FC:6E:88:8D:2B:96:8B:7B:5E:15:C0:2A:C6:99:86:06:AC:C1:D7:"
    "68:0F:4D:94:D0:4B:AF:3A:42:34:E8:C9:50:3B:1B:1A:89:4C:C9:9C:C2:73:EC:71"
)
_SHA512 = (
    "sha-512 C7:AF:C0:07:F7:0C:45:B0:02:C4:ED:86:DA:7B:02:F0:B4:8D:71:56:55:F8:4E:AF:"
    "42:70:F5:01:7D:80:4D:93:12:9C:A8:A0:A1:E3:E5:3F:2A:29:03:28:41:9E:B6:45:BA:74:7C:"
    "53:AE:A4:FB:F8:7A:CA:EC:C9:9F:13:FD:DA"
)
_FINGERPRINTS = [f"a=fingerprint:{fp}" for fp in (AIORTC_FP, _SHA384, _SHA512)]

#: What aiortc 1.x puts in an offer (taken from a real one): every media section
#: repeats the same certificate under three hashes.
AIORTC_SDP = "\r\n".join(
    [
        "v=0",
        "o=- 3926416843 3926416843 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic:WMS *",
        "m=audio 50364 UDP/TLS/RTP/SAVPF 96 0 8",
        "c=IN IP4 192.0.2.10",
        "a=sendrecv",
        "a=mid:0",
        "a=rtcp-mux",
        "a=rtpmap:96 opus/48000/2",
        "a=candidate:9b1c 1 udp 2130706431 192.0.2.10 50364 typ host",
        "a=end-of-candidates",
        "a=ice-ufrag:aB3d",
        "a=ice-pwd:Zm9vYmFyYmF6cXV4cXV1eHh4eXl5",
        *_FINGERPRINTS,
        "a=setup:actpass",
        "m=application 50365 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 192.0.2.10",
        "a=mid:1",
        "a=sctp-port:5000",
        *_FINGERPRINTS,
        "a=setup:actpass",
        "",
    ]
)


def _nonce() -> str:
    return b64encode(secrets.token_bytes(NONCE_BYTES))


def _bad_signature(call: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        call(*args, **kwargs)
    assert info.value.code == ErrorCode.BAD_SIGNATURE


# --- device challenge -------------------------------------------------------------------


def test_challenge_sign_and_verify() -> None:
    key = generate_key()
    nonce = _nonce()
    signature = identity.sign_challenge(
        key, nonce_b64=nonce, device_id="dev-1", server_fingerprint=SERVER_FP
    )
    public = identity.load_public_key(public_key_b64(key))
    identity.verify_challenge(
        public, signature, nonce_b64=nonce, device_id="dev-1", server_fingerprint=SERVER_FP
    )


def test_challenge_payload_is_context_and_canonical_json() -> None:
    payload = identity.challenge_payload(
        nonce_b64="bm9uY2U=", device_id="d", server_fingerprint="s"
    )
    assert payload == CHALLENGE_CONTEXT + b'{"device_id":"d","nonce":"bm9uY2U=","server":"s"}'


@pytest.mark.parametrize(
    "change",
    [
        {"nonce_b64": "AAAA"},
        {"device_id": "dev-2"},
        {"server_fingerprint": "sha-256 " + ":".join(["00"] * 32)},
    ],
    ids=["nonce", "device-id", "server-fingerprint"],
)
def test_challenge_refused_when_anything_differs(change: dict[str, str]) -> None:
    key = generate_key()
    signed = {"nonce_b64": _nonce(), "device_id": "dev-1", "server_fingerprint": SERVER_FP}
    signature = identity.sign_challenge(key, **signed)
    _bad_signature(identity.verify_challenge, key.public_key(), signature, **(signed | change))


def test_challenge_refused_for_another_key() -> None:
    signed = {"nonce_b64": _nonce(), "device_id": "dev-1", "server_fingerprint": SERVER_FP}
    signature = identity.sign_challenge(generate_key(), **signed)
    _bad_signature(identity.verify_challenge, generate_key().public_key(), signature, **signed)


def test_replayed_challenge_signature_fails_on_a_new_nonce() -> None:
    key = generate_key()
    old = {"nonce_b64": _nonce(), "device_id": "dev-1", "server_fingerprint": SERVER_FP}
    captured = identity.sign_challenge(key, **old)
    new = old | {"nonce_b64": _nonce()}
    _bad_signature(identity.verify_challenge, key.public_key(), captured, **new)


def test_malformed_signature_is_an_invalid_field() -> None:
    key = generate_key()
    with pytest.raises(RemoteProtocolError) as info:
        identity.verify_challenge(
            key.public_key(),
            "not base64!",
            nonce_b64="AA==",
            device_id="d",
            server_fingerprint=SERVER_FP,
        )
    assert info.value.code == ErrorCode.INVALID_FIELD
    # Valid base64 but not 64 bytes: it simply does not verify.
    _bad_signature(
        identity.verify_challenge,
        key.public_key(),
        "AAAA",
        nonce_b64="AA==",
        device_id="d",
        server_fingerprint=SERVER_FP,
    )


# --- consent receipts -------------------------------------------------------------------

CONSENT_FIELDS: dict[str, Any] = {
    "session_id": "ses-1",
    "device_id": "dev-1",
    "technician_id": "tec-1",
    "mode": Mode.VIDEO,
    "accepted_at_ms": 1_718_000_000_000,
    "offer_fingerprint": OFFER_FP,
    "answer_fingerprint": ANSWER_FP,
}


def test_consent_sign_and_verify() -> None:
    key = generate_key()
    receipt = identity.sign_consent(key, **CONSENT_FIELDS)
    assert {k: getattr(receipt, k) for k in CONSENT_FIELDS} == CONSENT_FIELDS
    identity.verify_consent(identity.load_public_key(public_key_b64(key)), receipt)
    # The receipt survives the wire unchanged and still verifies.
    frame = SIGNALING.encode(SessionConsent(receipt=receipt))
    relayed = SIGNALING.decode(frame)
    assert isinstance(relayed, SessionConsent)
    identity.verify_consent(key.public_key(), relayed.receipt)


def test_consent_payload_is_context_and_canonical_json() -> None:
    payload = identity.consent_payload(**CONSENT_FIELDS)
    assert payload.startswith(CONSENT_CONTEXT)
    assert payload[len(CONSENT_CONTEXT) :] == (
        b'{"accepted_at_ms":1718000000000,"answer_fingerprint":"'
        + ANSWER_FP.encode()
        + b'","device_id":"dev-1","mode":"video","offer_fingerprint":"'
        + OFFER_FP.encode()
        + b'","session_id":"ses-1","technician_id":"tec-1"}'
    )


@pytest.mark.parametrize(
    "change",
    [
        {"session_id": "ses-2"},
        {"device_id": "dev-2"},
        {"technician_id": "tec-2"},
        {"mode": Mode.VOICE},
        {"accepted_at_ms": 1_718_000_000_001},
        {"offer_fingerprint": ANSWER_FP},
        {"answer_fingerprint": OFFER_FP},
        {"offer_fingerprint": ANSWER_FP, "answer_fingerprint": OFFER_FP},  # swapped
    ],
    ids=lambda change: "+".join(change),
)
def test_consent_refused_when_any_field_changes(change: dict[str, Any]) -> None:
    key = generate_key()
    receipt = identity.sign_consent(key, **CONSENT_FIELDS)
    _bad_signature(
        identity.verify_consent, key.public_key(), dataclasses.replace(receipt, **change)
    )


def test_consent_refused_for_another_key() -> None:
    receipt = identity.sign_consent(generate_key(), **CONSENT_FIELDS)
    _bad_signature(identity.verify_consent, generate_key().public_key(), receipt)


def test_a_challenge_signature_is_not_a_consent() -> None:
    """Context separation: the same key signs both, and neither passes for the other."""
    key = generate_key()
    receipt = identity.sign_consent(key, **CONSENT_FIELDS)
    # Sign, as a challenge, the exact bytes of the consent body (without its context).
    body = identity.consent_payload(**CONSENT_FIELDS)[len(CONSENT_CONTEXT) :]
    forged = b64encode(key.sign(CHALLENGE_CONTEXT + body))
    _bad_signature(
        identity.verify_consent, key.public_key(), dataclasses.replace(receipt, signature=forged)
    )
    challenge = identity.sign_challenge(
        key, nonce_b64=_nonce(), device_id="dev-1", server_fingerprint=SERVER_FP
    )
    _bad_signature(
        identity.verify_consent, key.public_key(), dataclasses.replace(receipt, signature=challenge)
    )
    # And the other way round: a consent signature does not answer a challenge.
    nonce = _nonce()
    _bad_signature(
        identity.verify_challenge,
        key.public_key(),
        receipt.signature,
        nonce_b64=nonce,
        device_id="dev-1",
        server_fingerprint=SERVER_FP,
    )


def test_contexts_differ_and_end_in_nul() -> None:
    assert CHALLENGE_CONTEXT != CONSENT_CONTEXT
    assert CHALLENGE_CONTEXT.endswith(b"\x00")
    assert CONSENT_CONTEXT.endswith(b"\x00")


# --- SDP fingerprints -------------------------------------------------------------------


def test_sdp_fingerprint_of_an_aiortc_offer() -> None:
    assert identity.sdp_fingerprint(AIORTC_SDP) == AIORTC_FP


def test_sdp_fingerprint_normalises_case() -> None:
    sdp = "v=0\r\na=fingerprint:SHA-256 " + AIORTC_FP[8:].lower() + "\r\n"
    assert identity.sdp_fingerprint(sdp) == AIORTC_FP


def test_sdp_fingerprint_fits_a_receipt() -> None:
    fingerprint = identity.sdp_fingerprint(AIORTC_SDP)
    receipt = identity.sign_consent(
        generate_key(), **(CONSENT_FIELDS | {"offer_fingerprint": fingerprint})
    )
    assert isinstance(
        SIGNALING.decode(SIGNALING.encode(SessionConsent(receipt=receipt))), SessionConsent
    )
    assert isinstance(receipt, ConsentReceipt)


def _refused_sdp(sdp: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        identity.sdp_fingerprint(sdp)
    assert info.value.code == ErrorCode.INVALID_FIELD


def test_sdp_without_fingerprint_is_refused() -> None:
    _refused_sdp("v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n")
    # Only other hashes: nothing a receipt can bind.
    _refused_sdp("\r\n".join(line for line in AIORTC_SDP.split("\r\n") if "sha-256" not in line))


def test_sdp_with_two_certificates_is_refused() -> None:
    other = "sha-256 " + ":".join(["11"] * 32)
    _refused_sdp(AIORTC_SDP + "a=fingerprint:" + other + "\r\n")
    # Two certificates under another hash are refused as well.
    _refused_sdp(AIORTC_SDP + "a=fingerprint:sha-384 " + ":".join(["22"] * 48) + "\r\n")


def test_fingerprint_lines_must_start_a_line() -> None:
    _refused_sdp("v=0\r\nx a=fingerprint:" + AIORTC_FP + "\r\n")


# --- keys -------------------------------------------------------------------------------


def test_private_key_pem_round_trip() -> None:
    key = generate_key()
    pem = identity.private_key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    again = identity.private_key_from_pem(pem)
    assert public_key_b64(again) == public_key_b64(key)
    # The reloaded key signs what the original's public key verifies.
    nonce = _nonce()
    signature = identity.sign_challenge(
        again, nonce_b64=nonce, device_id="d", server_fingerprint=SERVER_FP
    )
    identity.verify_challenge(
        key.public_key(), signature, nonce_b64=nonce, device_id="d", server_fingerprint=SERVER_FP
    )


def test_private_key_from_pem_refuses_another_kind_of_key() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="Ed25519"):
        identity.private_key_from_pem(pem)


def test_public_key_b64_round_trip() -> None:
    key = generate_key()
    text = public_key_b64(key)
    assert text == public_key_b64(key.public_key())
    assert len(text) == 44
    assert public_key_b64(identity.load_public_key(text)) == text


@pytest.mark.parametrize("text", ["AAAA", "not base64", b64encode(b"x" * 33), ""])
def test_load_public_key_refuses_bad_input(text: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        identity.load_public_key(text)
    assert info.value.code == ErrorCode.INVALID_FIELD


def test_the_certificate_pin_is_sha256_in_colon_hex() -> None:
    empty = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
    pairs = [empty[i : i + 2] for i in range(0, 64, 2)]
    assert identity.certificate_pin(b"") == "sha-256 " + ":".join(pairs)
