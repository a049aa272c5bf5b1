"""docs/protocol.md stays in step with the code: every type, error and close code is
documented, every JSON example decodes, and the tables and test vectors match."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import identity
from protocol.chat import CHAT
from protocol.codec import Registry
from protocol.enums import Mode, Role
from protocol.errors import CloseCode, ErrorCode
from protocol.messages import SIGNALING, SessionConsent
from protocol.permissions import PERMISSIONS, Action
from protocol.session import TRANSITIONS, Party, SessionEvent

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
DOC = DOC_PATH.read_text(encoding="utf-8")

WIRE_TYPES = [cls.TYPE for cls in SIGNALING] + [cls.TYPE for cls in CHAT]


def _json_blocks() -> list[Any]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOC, re.DOTALL)]


def _examples() -> list[dict[str, Any]]:
    return [b for b in _json_blocks() if isinstance(b, dict) and "type" in b]


def _table_rows(heading: str) -> list[list[str]]:
    """The body rows of the first table after ``heading``, cells stripped."""
    section = DOC[DOC.index(heading) :]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows: list[list[str]] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


@pytest.mark.parametrize("wire_type", WIRE_TYPES)
def test_every_wire_type_is_documented(wire_type: str) -> None:
    assert f"`{wire_type}`" in DOC
    assert f"#### `{wire_type}`" in DOC, "each type has its own heading"


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_is_documented(code: ErrorCode) -> None:
    assert f"| `{code.value}` |" in DOC


def test_every_close_code_is_documented() -> None:
    documented = {int(row[0]) for row in _table_rows("### 5.2 Close codes")}
    codes = {v for k, v in vars(CloseCode).items() if k.isupper()}
    assert codes <= documented


def test_every_example_decodes() -> None:
    examples = _examples()
    assert examples
    for example in examples:
        registry: Registry = CHAT if example["type"] in CHAT else SIGNALING
        message = registry.decode(json.dumps(example))
        assert example["type"] == message.TYPE


def test_every_wire_type_has_an_example() -> None:
    assert {e["type"] for e in _examples()} == set(WIRE_TYPES)


def test_every_example_is_a_single_line_object() -> None:
    """Message examples are written as one compact line, as on the wire."""
    for block in re.findall(r"```json\n(.*?)```", DOC, re.DOTALL):
        if '"type"' in block:
            assert block.count("\n") == 1, block[:60]


def test_permission_table() -> None:
    columns = [Role.ADMIN, Role.SUPERVISOR, Role.TECHNICIAN, Role.VIEWER, Role.DEVICE]
    documented: dict[Action, set[Role]] = {}
    for cells in _table_rows("### 12.1 Role × action"):
        action = Action(re.findall(r"`(\w+)`", cells[0])[0])
        documented[action] = {
            role for role, cell in zip(columns, cells[1:], strict=True) if cell == "yes"
        }
    expected = {action: {r for r in Role if action in PERMISSIONS[r]} for action in Action}
    assert documented == expected


def test_state_table() -> None:
    party_names = {p.value: p for p in Party}
    documented: dict[tuple[str, str], tuple[str, set[Party]]] = {}
    for cells in _table_rows("### 6.1 States and transitions"):
        state, event, target, parties = cells[:4]
        if event == "—":
            continue
        documented[(state.strip("`"), event.replace(" ", "_"))] = (
            target.strip("`"),
            {party_names[name.strip()] for name in parties.split(",")},
        )
    expected = {
        (state.value, event.value): (target.value, set(who))
        for state, row in TRANSITIONS.items()
        for event, (target, who) in row.items()
    }
    assert documented == expected
    assert {event for _, event in documented} <= {e.value for e in SessionEvent}


def test_test_vectors() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    assert f"`{identity.public_key_b64(key)}`" in DOC
    nonce = identity.b64encode(bytes(range(32, 64)))
    server = "sha-256 " + ":".join(["5A"] * 32)
    payload = identity.challenge_payload(
        nonce_b64=nonce, device_id="dev-7f3a", server_fingerprint=server
    )
    assert payload.replace(b"\x00", b"\\x00").decode() in DOC
    signature = identity.sign_challenge(
        key, nonce_b64=nonce, device_id="dev-7f3a", server_fingerprint=server
    )
    assert f"`{signature}`" in DOC
    # The documented session.consent example is signed by the same key.
    example = next(e for e in _examples() if e["type"] == "session.consent")
    message = SIGNALING.decode(json.dumps(example))
    assert isinstance(message, SessionConsent)
    identity.verify_consent(key.public_key(), message.receipt)
    receipt = message.receipt
    consent = identity.consent_payload(
        session_id=receipt.session_id,
        device_id=receipt.device_id,
        technician_id=receipt.technician_id,
        mode=Mode(receipt.mode),
        accepted_at_ms=receipt.accepted_at_ms,
        offer_fingerprint=receipt.offer_fingerprint,
        answer_fingerprint=receipt.answer_fingerprint,
    )
    assert consent.replace(b"\x00", b"\\x00").decode() in DOC
    assert f"`{receipt.signature}`" in DOC


def test_documented_contexts_match() -> None:
    assert identity.CHALLENGE_CONTEXT == b"livesupport/device-auth/v1\x00"
    assert len(identity.CHALLENGE_CONTEXT) == 27
    assert len(identity.CONSENT_CONTEXT) == 23
    assert "27 bytes `livesupport/device-auth/v1`" in DOC
    assert "23 bytes `livesupport/consent/v1`" in DOC
