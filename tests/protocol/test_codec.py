"""The codec: round trips of every message type, and strict refusal of everything else.

Every refusal must be a RemoteProtocolError with the code the server sends back, and
must leave the connection open (``close_code is None``): only the one frame is refused.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.chat import CHAT, ChatReceipt, ChatTyping
from protocol.codec import MAX_FRAME_BYTES, Message, Registry, Sender, peek_rid, to_wire_dict
from protocol.enums import Mode
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.messages import (
    SIGNALING,
    AuthOk,
    DevicesSnapshot,
    Error,
    NotifyAnswer,
    Ok,
    SessionResume,
    SessionStart,
    StatusReport,
)
from tests.protocol.examples import CHAT_EXAMPLES, DEVICE, SIGNALING_EXAMPLES
from tests.protocol.strategies import messages

ALL_CLASSES = [(SIGNALING, cls) for cls in SIGNALING] + [(CHAT, cls) for cls in CHAT]
ALL_EXAMPLES = [(SIGNALING, m) for m in SIGNALING_EXAMPLES] + [(CHAT, m) for m in CHAT_EXAMPLES]


def _id(value: object) -> str | None:
    if isinstance(value, Registry):
        return value.name
    wire_type = getattr(value, "TYPE", None)
    return wire_type if isinstance(wire_type, str) else None


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def refusal(
    frame: str | bytes, registry: Registry = SIGNALING, sender: Sender | None = None
) -> RemoteProtocolError:
    """Decode a frame that must be refused; return the error."""
    with pytest.raises(RemoteProtocolError) as info:
        registry.decode(frame, sender)
    assert info.value.close_code is None
    return info.value


def decode_or_refuse(registry: Registry, frame: str | bytes) -> Message | RemoteProtocolError:
    """The one contract of ``decode`` on hostile input: a message or a RemoteProtocolError.

    A refusal must also be reportable as is: the server puts its code and message in
    an ``error`` frame, which must encode. Anything accepted must encode back and
    decode to the same message (what we accept, we can also send).
    """
    try:
        message = registry.decode(frame)
    except RemoteProtocolError as exc:
        error = exc
    else:
        assert registry.decode(registry.encode(message)) == message
        return message
    assert error.close_code is None
    assert isinstance(error.code, ErrorCode)
    SIGNALING.encode(Error(code=error.code, message=error.message))
    return error


def ok_frame(**fields: Any) -> str:
    return json.dumps({"type": "ok", **fields})


def resume_frame(session_id: Any) -> str:
    return json.dumps({"type": "session.resume", "session_id": session_id})


# --- round trips ------------------------------------------------------------------------


def test_examples_cover_every_registered_type() -> None:
    assert [m.TYPE for m in SIGNALING_EXAMPLES] == [cls.TYPE for cls in SIGNALING]
    assert [m.TYPE for m in CHAT_EXAMPLES] == [cls.TYPE for cls in CHAT]


def test_registries_are_disjoint() -> None:
    assert not {cls.TYPE for cls in SIGNALING} & {cls.TYPE for cls in CHAT}


@pytest.mark.parametrize(("registry", "message"), ALL_EXAMPLES, ids=_id)
def test_example_round_trip(registry: Registry, message: Message) -> None:
    frame = registry.encode(message)
    obj = json.loads(frame)
    assert next(iter(obj)) == "type"
    assert obj["type"] == message.TYPE
    assert frame == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    assert registry.decode(frame, message.SENDERS) == message
    assert registry.decode(frame.encode("utf-8"), message.SENDERS) == message


@pytest.mark.parametrize(("registry", "cls"), ALL_CLASSES, ids=_id)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip_of_generated_messages(
    registry: Registry, cls: type[Message], data: st.DataObject
) -> None:
    message = data.draw(messages(cls))
    frame = registry.encode(message)
    assert registry.decode(frame, cls.SENDERS) == message


def test_none_fields_are_left_out_and_null_is_accepted_for_them() -> None:
    frame = SIGNALING.encode(SessionResume(session_id="ses-1"))
    assert json.loads(frame) == {"type": "session.resume", "session_id": "ses-1"}
    assert SIGNALING.decode(
        '{"type":"session.resume","session_id":"ses-1","rid":null}'
    ) == SessionResume(session_id="ses-1")


def test_defaults_fill_missing_optional_fields() -> None:
    message = SIGNALING.decode(
        '{"type":"status.report","service_installed":true,"service_enabled":false,"name":"Tab"}'
    )
    assert message == StatusReport(service_installed=True, service_enabled=False, name="Tab")
    assert isinstance(message, StatusReport)
    assert message.chat_services == (Mode.TEXT, Mode.VOICE, Mode.VIDEO)


def test_rid_is_echoed() -> None:
    assert SIGNALING.decode(ok_frame(rid=2**31 - 1)) == Ok(rid=2**31 - 1)


# --- refusals: the frame ----------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [b"\xff\xfe", b'{"type":"ok"\xc0}', b"\xed\xa0\x80", b"\x80"],
    ids=["bom-ish", "overlong", "encoded-surrogate", "continuation"],
)
def test_binary_that_is_not_utf8(frame: bytes) -> None:
    assert refusal(frame).code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    "frame", ["", " ", "{", "{'type': 'ok'}", '{"type":"ok",}', "ok", '{"type":"ok"} {}', "\x00"]
)
def test_not_json(frame: str) -> None:
    assert refusal(frame).code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize("frame", ["[]", '["ok"]', '"ok"', "1", "1.5", "null", "true"])
def test_json_that_is_not_an_object(frame: str) -> None:
    assert refusal(frame).code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    "frame",
    [
        "{}",
        '{"rid":1}',
        '{"type":1}',
        '{"type":null}',
        '{"type":["ok"]}',
        '{"type":"nope"}',
        '{"type":"OK"}',
        '{"type":"chat.message"}',
        '{"type":""}',
    ],
)
def test_missing_or_unknown_type(frame: str) -> None:
    assert refusal(frame).code == ErrorCode.UNKNOWN_TYPE


def test_chat_channel_does_not_speak_signaling() -> None:
    assert refusal(ok_frame(), CHAT).code == ErrorCode.UNKNOWN_TYPE


def test_unknown_type_message_is_cut_short() -> None:
    error = refusal(json.dumps({"type": "x" * 10_000}))
    assert error.code == ErrorCode.UNKNOWN_TYPE
    assert len(error.message) < 200


@pytest.mark.parametrize(
    ("wire_type", "sender"),
    [
        ("auth.ok", Sender.DEVICE),
        ("ok", Sender.CONSOLE),
        ("session.invite", Sender.DEVICE),
        ("notify.deliver", Sender.DEVICE),
        ("session.start", Sender.DEVICE),  # a device can never start a session
        ("session.close", Sender.DEVICE),  # nor close one
        ("session.accept", Sender.CONSOLE),
        ("auth.device", Sender.CONSOLE),
        ("notify.send", Sender.DEVICE),
        ("status.report", Sender.CONSOLE),
        ("signal.sdp", Sender.PEER),
    ],
)
def test_type_from_the_wrong_sender(wire_type: str, sender: Sender) -> None:
    example = next(m for m in SIGNALING_EXAMPLES if wire_type == m.TYPE)
    frame = SIGNALING.encode(example)
    assert refusal(frame, sender=sender).code == ErrorCode.UNKNOWN_TYPE
    assert SIGNALING.decode(frame, type(example).SENDERS) == example
    assert SIGNALING.decode(frame) == example  # no sender: not checked


@pytest.mark.parametrize(("registry", "message"), ALL_EXAMPLES, ids=_id)
def test_sender_check_follows_senders(registry: Registry, message: Message) -> None:
    frame = registry.encode(message)
    for sender in (Sender.SERVER, Sender.DEVICE, Sender.CONSOLE, Sender.PEER):
        if sender & type(message).SENDERS:
            assert registry.decode(frame, sender) == message
        else:
            assert refusal(frame, registry, sender).code == ErrorCode.UNKNOWN_TYPE


# --- refusals: fields -------------------------------------------------------------------


def test_unknown_field() -> None:
    error = refusal(ok_frame(extra=1))
    assert error.code == ErrorCode.INVALID_FIELD
    assert "extra" in error.message


def test_unknown_field_name_is_cut_short() -> None:
    error = refusal(ok_frame(**{"k" * 20_000: 1}))
    assert error.code == ErrorCode.INVALID_FIELD
    assert len(error.message) < 200


def test_unknown_field_in_a_nested_object() -> None:
    obj = to_wire_dict(next(m for m in SIGNALING_EXAMPLES if m.TYPE == "session.invite"))
    obj["technician"]["admin"] = True
    error = refusal(json.dumps(obj))
    assert error.code == ErrorCode.INVALID_FIELD
    assert error.message.startswith("technician")


def test_missing_field() -> None:
    error = refusal('{"type":"session.resume"}')
    assert error.code == ErrorCode.INVALID_FIELD
    assert "session_id" in error.message


@pytest.mark.parametrize("example", SIGNALING_EXAMPLES, ids=lambda m: m.TYPE)
def test_every_required_field_is_required(example: Message) -> None:
    obj = to_wire_dict(example)
    required = [
        f.name
        for f in dataclasses.fields(example)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in required:
        partial = {k: v for k, v in obj.items() if k != name}
        assert refusal(json.dumps(partial)).code == ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    "frame",
    [
        ok_frame(rid=True),  # bool where int
        ok_frame(rid=False),
        ok_frame(rid="1"),
        ok_frame(rid=1.0),
        '{"type":"ok","rid":1e400}',  # parsed as a float infinity
        ok_frame(rid=[1]),
        ok_frame(rid={"n": 1}),
        resume_frame(7),  # int where str
        resume_frame(True),
        resume_frame(None),  # null for a required field
        resume_frame(["ses-1"]),
        '{"type":"chat.typing","active":1}',  # int where bool
        '{"type":"chat.typing","active":"true"}',
        '{"type":"chat.receipt","message_ids":"m-1","state":"read"}',  # str where list
        '{"type":"chat.receipt","message_ids":[1],"state":"read"}',
        '{"type":"chat.receipt","message_ids":["m-1"],"state":"READ"}',  # enum value
        '{"type":"chat.receipt","message_ids":["m-1"],"state":"seen"}',
        '{"type":"chat.receipt","message_ids":["m-1"],"state":1}',
        '{"type":"chat.receipt","message_ids":["m-1"],"state":["read"]}',
        '{"type":"chat.receipt","message_ids":[],"state":"read"}',  # fewer than 1 item
        '{"type":"session.invite","session_id":"s","technician":"Ana","mode":"text",'
        '"offered_modes":[],"reason":"x","expires_at_ms":1}',  # str where object
    ],
)
def test_wrong_types(frame: str) -> None:
    registry = CHAT if frame.startswith('{"type":"chat') else SIGNALING
    assert refusal(frame, registry).code == ErrorCode.INVALID_FIELD


@pytest.mark.parametrize("rid", [-1, 2**31, 2**53, -(2**63)])
def test_integer_out_of_range(rid: int) -> None:
    assert refusal(ok_frame(rid=rid)).code == ErrorCode.INVALID_FIELD


def test_integer_bounds_are_inclusive() -> None:
    assert SIGNALING.decode(ok_frame(rid=0)) == Ok(rid=0)
    frame = SIGNALING.encode(next(m for m in SIGNALING_EXAMPLES if m.TYPE == "notify.send"))
    for ttl, accepted in [
        (59, False),
        (60, True),
        (30 * 24 * 3600, True),
        (30 * 24 * 3600 + 1, False),
    ]:
        obj = json.loads(frame)
        obj["ttl_s"] = ttl
        if accepted:
            SIGNALING.decode(json.dumps(obj))
        else:
            assert refusal(json.dumps(obj)).code == ErrorCode.INVALID_FIELD


def _answer(text: str) -> str:
    return json.dumps({"type": "notify.answer", "notification_id": "n-1", "text": text})


def test_over_long_string() -> None:
    assert SIGNALING.decode(resume_frame("a" * 64)) == SessionResume(session_id="a" * 64)
    assert refusal(resume_frame("a" * 65)).code == ErrorCode.TOO_LARGE
    assert isinstance(SIGNALING.decode(_answer("a" * 4000)), NotifyAnswer)
    assert refusal(_answer("a" * 4001)).code == ErrorCode.TOO_LARGE
    # Length is checked before content: a long id of bad characters is still too large.
    assert refusal(resume_frame("\x00" * 100)).code == ErrorCode.TOO_LARGE


def test_string_length_counts_characters_not_bytes() -> None:
    text = "é" * 4000  # 8000 bytes, 4000 characters
    assert SIGNALING.decode(
        json.dumps(
            {"type": "notify.answer", "notification_id": "n", "text": text}, ensure_ascii=False
        )
    ) == NotifyAnswer(notification_id="n", text=text)


def test_empty_string_where_one_character_is_needed() -> None:
    assert refusal(resume_frame("")).code == ErrorCode.INVALID_FIELD


def test_too_many_list_items() -> None:
    ids = [f"m-{i}" for i in range(256)]
    receipt = {"type": "chat.receipt", "message_ids": ids, "state": "delivered"}
    assert isinstance(CHAT.decode(json.dumps(receipt)), ChatReceipt)
    receipt["message_ids"] = [*ids, "m-256"]
    assert refusal(json.dumps(receipt), CHAT).code == ErrorCode.TOO_LARGE
    modes = {
        "type": "status.device",
        "status": "connected",
        "policy_enabled": True,
        "allowed_modes": ["text", "voice", "video", "text"],
    }
    assert refusal(json.dumps(modes)).code == ErrorCode.TOO_LARGE


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity(constant: str) -> None:
    assert refusal('{"type":"ok","rid":' + constant + "}").code == ErrorCode.BAD_FRAME
    assert refusal("[" + constant + "]").code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"ok","rid":1,"rid":2}',
        '{"type":"ok","type":"ok"}',
        '{"type":"session.resume","session_id":"a","session_id":"a"}',
        '{"type":"session.consent","receipt":{"mode":"text","mode":"video"}}',
    ],
)
def test_duplicate_keys(frame: str) -> None:
    assert refusal(frame).code == ErrorCode.BAD_FRAME


def test_duplicate_key_message_is_cut_short() -> None:
    key = "d" * 20_000
    error = refusal('{"' + key + '":1,"' + key + '":2}')
    assert error.code == ErrorCode.BAD_FRAME
    assert len(error.message) < 200


def test_deeply_nested_json() -> None:
    # Over the frame limit: refused before parsing.
    assert refusal("[" * 100_000).code == ErrorCode.TOO_LARGE
    # Under it: the parser's recursion limit is a bad frame, not a crash.
    assert refusal("[" * 60_000).code == ErrorCode.BAD_FRAME
    assert refusal('{"a":' * 10_000 + "1" + "}" * 10_000).code == ErrorCode.BAD_FRAME
    nested = '{"type":"ok","rid":' + "[" * 30_000 + "]" * 30_000 + "}"
    assert refusal(nested).code == ErrorCode.BAD_FRAME
    shallow = '{"type":"ok","rid":' + "[" * 100 + "]" * 100 + "}"
    assert refusal(shallow).code == ErrorCode.INVALID_FIELD


@pytest.mark.parametrize("digits", [5000, 5001, 60_000])
def test_huge_integers(digits: int) -> None:
    # Python refuses to parse integers of more than 4300 digits with a ValueError:
    # it must come out as the peer's fault, never as our exception.
    for sign in ("", "-"):
        error = refusal('{"type":"ok","rid":' + sign + "1" + "0" * (digits - 1) + "}")
        assert error.code == ErrorCode.BAD_FRAME


def test_long_but_parsable_integer() -> None:
    assert refusal(ok_frame(rid=10**4000)).code == ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    "session_id",
    [
        "ses\x00",
        "ses\n",
        "ses\t",
        "\x1b[31mred",
        "ses\x7f",
        "ses\x85",
        "ses 1",
        "ses/1",
        "sés",
        "ses\u202e",
        "ses\ufeff",
    ],
)
def test_control_and_other_characters_in_an_id(session_id: str) -> None:
    assert refusal(resume_frame(session_id)).code == ErrorCode.INVALID_FIELD


@pytest.mark.parametrize("text", ["a\x00b", "a\x1bb", "\x07", "a\x85b"])
def test_control_characters_in_free_text(text: str) -> None:
    frame = json.dumps({"type": "notify.answer", "notification_id": "n", "text": text})
    assert refusal(frame).code == ErrorCode.INVALID_FIELD


def test_tab_and_newlines_are_allowed_in_multiline_text_only() -> None:
    frame = json.dumps({"type": "notify.answer", "notification_id": "n", "text": "a\tb\r\nc"})
    assert isinstance(SIGNALING.decode(frame), NotifyAnswer)
    title = {"type": "session.start", "device_id": "d", "mode": "text", "reason": "a\nb"}
    assert refusal(json.dumps(title)).code == ErrorCode.INVALID_FIELD


@pytest.mark.parametrize("escaped", ["\\ud800", "\\udfff", "a\\udc00b", "\\udbff"])
def test_lone_surrogates(escaped: str) -> None:
    frame = '{"type":"notify.answer","notification_id":"n","text":"' + escaped + '"}'
    assert refusal(frame).code == ErrorCode.INVALID_FIELD
    assert refusal(frame.encode("utf-8")).code == ErrorCode.INVALID_FIELD
    # The same surrogate as a raw code point of a str frame.
    raw = json.loads(frame.replace(escaped, "x"))
    raw["text"] = "\ud800"
    assert refusal(json.dumps(raw, ensure_ascii=False)).code == ErrorCode.INVALID_FIELD


def test_surrogate_pair_escape_is_one_character() -> None:
    frame = '{"type":"notify.answer","notification_id":"n","text":"\\ud83d\\ude00"}'
    assert SIGNALING.decode(frame) == NotifyAnswer(notification_id="n", text="😀")


def test_oversized_frames() -> None:
    padding = "a" * (MAX_FRAME_BYTES + 1)
    assert refusal(padding).code == ErrorCode.TOO_LARGE
    assert refusal(padding.encode()).code == ErrorCode.TOO_LARGE
    with pytest.raises(RemoteProtocolError) as info:
        SIGNALING.decode(bytearray(padding.encode()))  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.TOO_LARGE
    # Few characters, many bytes: 22 000 three-byte characters are 66 000 bytes.
    wide = json.dumps(
        {"type": "notify.answer", "notification_id": "n", "text": "€" * 22_000}, ensure_ascii=False
    )
    assert len(wide) < MAX_FRAME_BYTES < len(wide.encode())
    assert refusal(wide).code == ErrorCode.TOO_LARGE
    # The chat channel has a smaller limit.
    chat = json.dumps({"type": "chat.typing", "active": True, "pad": "a" * (32 * 1024)})
    assert refusal(chat, CHAT).code == ErrorCode.TOO_LARGE


def test_a_frame_at_the_limit_is_parsed() -> None:
    frame = '{"type":"ok"}'
    frame = frame + " " * (MAX_FRAME_BYTES - len(frame))
    assert SIGNALING.decode(frame) == Ok()
    assert refusal(frame + " ").code == ErrorCode.TOO_LARGE


# --- encoding what we built -------------------------------------------------------------


def _invalid_messages() -> list[tuple[Registry, Message, ErrorCode]]:
    devices = tuple(
        dataclasses.replace(DEVICE, device_id=f"dev-{i}", name="n" * 128) for i in range(400)
    )
    return [
        (SIGNALING, SessionResume(session_id="has space"), ErrorCode.INVALID_FIELD),
        (SIGNALING, SessionResume(session_id=""), ErrorCode.INVALID_FIELD),
        (SIGNALING, SessionResume(session_id="x" * 65), ErrorCode.TOO_LARGE),
        (SIGNALING, SessionResume(session_id=7), ErrorCode.INVALID_FIELD),  # type: ignore[arg-type]
        (SIGNALING, Ok(rid=-1), ErrorCode.INVALID_FIELD),
        (SIGNALING, Ok(rid=True), ErrorCode.INVALID_FIELD),
        (SIGNALING, Ok(rid=10**5000), ErrorCode.INVALID_FIELD),
        (SIGNALING, Ok(rid=float("nan")), ErrorCode.INVALID_FIELD),  # type: ignore[arg-type]
        (SIGNALING, Ok(rid=b"1"), ErrorCode.INVALID_FIELD),  # type: ignore[arg-type]
        (SIGNALING, Error(code="nope", message=""), ErrorCode.INVALID_FIELD),  # type: ignore[arg-type]
        (
            SIGNALING,
            SessionStart(device_id="d", mode=Mode.TEXT, reason="r\x00"),
            ErrorCode.INVALID_FIELD,
        ),
        (
            SIGNALING,
            AuthOk(
                principal_id="p",
                role="root",  # type: ignore[arg-type]
                display_name="n",
                heartbeat_s=20,
                invite_timeout_s=30,
            ),
            ErrorCode.INVALID_FIELD,
        ),
        (SIGNALING, ChatTyping(active=True), ErrorCode.UNKNOWN_TYPE),
        (CHAT, Ok(), ErrorCode.UNKNOWN_TYPE),
        (CHAT, ChatTyping(active=1), ErrorCode.INVALID_FIELD),  # type: ignore[arg-type]
        (CHAT, ChatReceipt(message_ids=(), state="read"), ErrorCode.INVALID_FIELD),  # type: ignore[arg-type]
        (SIGNALING, DevicesSnapshot(devices=devices), ErrorCode.TOO_LARGE),
    ]


@pytest.mark.parametrize(("registry", "message", "code"), _invalid_messages(), ids=_id)
def test_encode_refuses_an_invalid_message_we_built(
    registry: Registry, message: Message, code: ErrorCode
) -> None:
    with pytest.raises(LocalProtocolError) as info:
        registry.encode(message)
    assert info.value.code == code


# --- properties: hostile input never escapes as another exception -----------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
registries = st.sampled_from([SIGNALING, CHAT])


@PROPERTY
@given(registry=registries, frame=st.binary(max_size=300))
def test_arbitrary_bytes(registry: Registry, frame: bytes) -> None:
    decode_or_refuse(registry, frame)


@PROPERTY
@given(registry=registries, frame=st.text(max_size=300))
def test_arbitrary_text(registry: Registry, frame: str) -> None:
    decode_or_refuse(registry, frame)


@PROPERTY
@given(registry=registries, value=json_values)
def test_arbitrary_json(registry: Registry, value: Any) -> None:
    decode_or_refuse(registry, json.dumps(value))


all_types = st.sampled_from([cls.TYPE for cls in SIGNALING] + [cls.TYPE for cls in CHAT])


@PROPERTY
@given(
    registry=registries,
    wire_type=all_types,
    body=st.dictionaries(
        st.sampled_from(["rid", "session_id", "mode", "text", "state", "x"]) | st.text(max_size=8),
        json_values,
        max_size=6,
    ),
)
def test_arbitrary_object_of_a_known_type(
    registry: Registry, wire_type: str, body: dict[str, Any]
) -> None:
    decode_or_refuse(registry, json.dumps({**body, "type": wire_type}))


def _valid_wire_objects() -> st.SearchStrategy[tuple[Registry, dict[str, Any]]]:
    return st.sampled_from(ALL_CLASSES).flatmap(
        lambda pair: messages(pair[1]).map(lambda m: (pair[0], to_wire_dict(m)))
    )


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a JSON value (objects and lists), the root excluded."""
    found: list[tuple[Any, ...]] = []
    children: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    for key, child in children:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


@PROPERTY
@given(
    valid=_valid_wire_objects(),
    mutation=st.sampled_from(["drop", "retype", "add"]),
    data=st.data(),
)
def test_mutated_valid_frames(
    valid: tuple[Registry, dict[str, Any]], mutation: str, data: st.DataObject
) -> None:
    registry, obj = valid
    paths = _paths(obj)
    path = data.draw(st.sampled_from(paths))
    *parents, last = path
    container: Any = obj
    for key in parents:
        container = container[key]
    if mutation == "drop":
        del container[last]
    elif mutation == "retype":
        container[last] = data.draw(json_values)
    else:
        target = container[last] if isinstance(container[last], dict) else obj
        target[data.draw(st.text(max_size=12))] = data.draw(json_values)
    result = decode_or_refuse(registry, json.dumps(obj))
    if mutation == "drop" and path == ("type",):
        assert isinstance(result, RemoteProtocolError)
        assert result.code == ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize(
    ("frame", "rid"),
    [
        ('{"type":"x","rid":12}', 12),
        ('{"rid": 7 , "type":"x"}', 7),
        (b'{"rid":3}', 3),
        ('{"type":"x"}', None),
        ('{"rid":"12"}', None),
        ('{"rid":99999999999}', None),
        ("not json", None),
        (b"\xff\xfe", None),
    ],
)
def test_peek_rid_finds_the_request_id_of_a_frame_that_may_not_decode(
    frame: str | bytes, rid: int | None
) -> None:
    assert peek_rid(frame) == rid
