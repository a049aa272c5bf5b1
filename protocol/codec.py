"""Encoding and strict decoding of messages.

A message is a frozen, keyword-only dataclass registered under its wire ``type``. On
the wire it is one JSON object in a websocket text frame::

    {"type": "session.start", "rid": 7, "device_id": "dev-1", "mode": "text", ...}

Decoding trusts nothing: the frame size, UTF-8, JSON syntax, duplicate keys, NaN and
Infinity, nesting, every field's type, length, range and enum value, missing and
unknown fields, and whether this kind of sender may send this type at all. Anything
wrong raises :class:`RemoteProtocolError` with the code to send back.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import unicodedata
from collections.abc import Callable, Iterator
from enum import Enum, Flag, auto
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.fields import Int, Items, RequestId, Text

#: Largest frame accepted, in bytes of UTF-8. An SDP offer with audio, video and a
#: data channel and all its candidates stays well under 16 KiB.
MAX_FRAME_BYTES = 64 * 1024


class Sender(Flag):
    """Who may send a message type. The server refuses a type from the wrong sender."""

    SERVER = auto()
    DEVICE = auto()
    CONSOLE = auto()
    PEER = auto()  # the other end of a WebRTC data channel
    CLIENT = DEVICE | CONSOLE


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """Base of every message. ``rid`` is a request id a client may set on a request;
    the server echoes it in the ``ok`` or ``error`` that answers that request."""

    TYPE: ClassVar[str] = ""
    SENDERS: ClassVar[Sender] = Sender(0)

    rid: RequestId | None = None


M = TypeVar("M", bound=Message)
Convert = Callable[[Any, str], Any]


def _fail(path: str, why: str, code: ErrorCode = ErrorCode.INVALID_FIELD) -> RemoteProtocolError:
    return RemoteProtocolError(code, f"{path}: {why}")


def _shown(name: str) -> str:
    """A peer-chosen name, quoted and cut short: error messages go back to the peer in
    an ``error`` frame, whose ``message`` holds at most 500 characters."""
    return repr(name[:64])


def _text_converter(spec: Text) -> Convert:
    pattern = spec.compiled()
    allowed_controls = {"\t", "\n", "\r"} if spec.multiline else set()

    def convert(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise _fail(path, "must be a string")
        if len(value) > spec.max_len:
            raise _fail(path, f"longer than {spec.max_len} characters", ErrorCode.TOO_LARGE)
        if len(value) < spec.min_len:
            raise _fail(path, f"shorter than {spec.min_len} characters")
        for ch in value:
            category = unicodedata.category(ch)
            if (category == "Cc" and ch not in allowed_controls) or category == "Cs":
                raise _fail(path, f"contains the control character U+{ord(ch):04X}")
        if pattern is not None and not pattern.fullmatch(value):
            raise _fail(path, "has characters that are not allowed")
        return value

    return convert


def _int_converter(spec: Int) -> Convert:
    def convert(value: Any, path: str) -> int:
        # bool is an int in Python but not on the wire.
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(path, "must be an integer")
        if not spec.min <= value <= spec.max:
            raise _fail(path, f"must be between {spec.min} and {spec.max}")
        return value

    return convert


def _bool_converter(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, "must be true or false")
    return value


def _enum_converter(enum: type[Enum]) -> Convert:
    by_value = {member.value: member for member in enum}
    choices = ", ".join(sorted(str(v) for v in by_value))

    def convert(value: Any, path: str) -> Enum:
        if isinstance(value, str) and value in by_value:
            return by_value[value]
        raise _fail(path, f"must be one of: {choices}")

    return convert


def _tuple_converter(item: Convert, spec: Items) -> Convert:
    def convert(value: Any, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _fail(path, "must be a list")
        if len(value) > spec.max_items:
            raise _fail(path, f"more than {spec.max_items} items", ErrorCode.TOO_LARGE)
        if len(value) < spec.min_items:
            raise _fail(path, f"fewer than {spec.min_items} items")
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))

    return convert


def _optional_converter(inner: Convert) -> Convert:
    def convert(value: Any, path: str) -> Any:
        return None if value is None else inner(value, path)

    return convert


class _ObjectSchema:
    """How to build one dataclass from a JSON object: a converter per field."""

    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls
        hints = get_type_hints(cls, include_extras=True)
        self.converters: dict[str, Convert] = {}
        self.required: set[str] = set()
        for field in dataclasses.fields(cls):
            self.converters[field.name] = _converter(hints[field.name])
            no_default = field.default is dataclasses.MISSING
            if no_default and field.default_factory is dataclasses.MISSING:
                self.required.add(field.name)

    def build(self, obj: Any, path: str) -> Any:
        if not isinstance(obj, dict):
            raise _fail(path, "must be an object")
        unknown = obj.keys() - self.converters.keys()
        if unknown:
            raise _fail(path, f"unknown field {_shown(sorted(unknown)[0])}")
        missing = self.required - obj.keys()
        if missing:
            raise _fail(path, f"missing field {sorted(missing)[0]!r}")
        values = {
            name: self.converters[name](value, f"{path}.{name}" if path else name)
            for name, value in obj.items()
        }
        return self.cls(**values)


def _converter(hint: Any, constraint: Any = None) -> Convert:
    origin = get_origin(hint)
    if origin is Annotated:
        base, *extras = get_args(hint)
        return _converter(base, extras[0] if extras else None)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(hint) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"unsupported union {hint!r}")
        return _optional_converter(_converter(members[0], constraint))
    if origin is tuple:
        item_hint, ellipsis = get_args(hint)
        assert ellipsis is Ellipsis, "tuple fields are homogeneous: tuple[X, ...]"
        return _tuple_converter(_converter(item_hint), constraint or Items())
    if hint is bool:
        return _bool_converter
    if hint is int:
        return _int_converter(constraint or Int())
    if hint is str:
        return _text_converter(constraint or Text())
    if isinstance(hint, type) and issubclass(hint, Enum):
        return _enum_converter(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        schema = _ObjectSchema(hint)
        return schema.build
    raise TypeError(f"unsupported field type {hint!r}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_shown(key)}")
        result[key] = value
    return result


def _to_wire(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _to_wire(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        }
    return value


_RID = re.compile(r'"rid"\s*:\s*(\d{1,10})\s*[,}]')


def peek_rid(frame: str | bytes) -> int | None:
    """The request id of a frame that may not decode, so that its refusal can still
    name the request. Best effort, never raises; the frame itself stays untrusted."""
    if isinstance(frame, bytes | bytearray):
        frame = bytes(frame[:MAX_FRAME_BYTES]).decode("utf-8", "replace")
    found = _RID.search(frame[:MAX_FRAME_BYTES])
    if found is None:
        return None
    rid = int(found.group(1))
    return rid if rid < 2**31 else None


def wire_size(value: Any) -> int:
    """Bytes of ``value`` (a message or a nested value object) once encoded as JSON.
    Used to split long lists over several frames without going over the frame limit."""
    return len(json.dumps(_to_wire(value), ensure_ascii=False, separators=(",", ":")).encode())


def to_wire_dict(message: Message) -> dict[str, Any]:
    """The JSON object of a message, ``type`` first. ``None`` fields are left out."""
    body = _to_wire(message)
    assert isinstance(body, dict)
    return {"type": message.TYPE, **body}


class Registry:
    """The set of message types one channel speaks (signaling, or the chat channel)."""

    def __init__(self, name: str, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.name = name
        self.max_frame_bytes = max_frame_bytes
        self._classes: dict[str, type[Message]] = {}
        self._schemas: dict[str, _ObjectSchema] = {}

    def register(self, wire_type: str, senders: Sender) -> Callable[[type[M]], type[M]]:
        def decorate(cls: type[M]) -> type[M]:
            if wire_type in self._classes:
                raise ValueError(f"{wire_type!r} is registered twice")
            cls.TYPE = wire_type
            cls.SENDERS = senders
            self._classes[wire_type] = cls
            self._schemas[wire_type] = _ObjectSchema(cls)
            return cls

        return decorate

    def __iter__(self) -> Iterator[type[Message]]:
        return iter(self._classes.values())

    def __contains__(self, wire_type: object) -> bool:
        return wire_type in self._classes

    def message_class(self, wire_type: str) -> type[Message]:
        return self._classes[wire_type]

    # -- encoding -------------------------------------------------------------------

    def encode(self, message: Message) -> str:
        """One text frame. Raises LocalProtocolError if *we* built an invalid message."""
        if self._classes.get(message.TYPE) is not type(message):
            raise LocalProtocolError(
                ErrorCode.UNKNOWN_TYPE, f"{type(message).__name__} is not a {self.name} message"
            )
        try:
            frame = json.dumps(to_wire_dict(message), ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            # A field holding something JSON cannot carry (bytes, an integer too long
            # to print): our bug, reported like every other invalid message we build.
            raise LocalProtocolError(
                ErrorCode.INVALID_FIELD, f"{message.TYPE} cannot be encoded: {exc}"
            ) from None
        # Check our own output with the same rules the peer will apply: a message we
        # could not decode ourselves must never leave.
        try:
            self._decode_object(json.loads(frame), None)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(exc.code, exc.message) from None
        if len(frame.encode("utf-8")) > self.max_frame_bytes:
            raise LocalProtocolError(ErrorCode.TOO_LARGE, f"{message.TYPE} frame is too large")
        return frame

    # -- decoding -------------------------------------------------------------------

    def decode(self, frame: str | bytes, sender: Sender | None = None) -> Message:
        """Decode one text frame from ``sender`` (``None``: do not check the sender)."""
        if isinstance(frame, bytes | bytearray):
            if len(frame) > self.max_frame_bytes:
                raise RemoteProtocolError(ErrorCode.TOO_LARGE, "frame is too large")
            try:
                frame = bytes(frame).decode("utf-8")
            except UnicodeDecodeError:
                raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame is not UTF-8") from None
        # A character is at most 4 bytes: check cheaply before encoding a huge string.
        if len(frame) > self.max_frame_bytes or (
            len(frame) * 4 > self.max_frame_bytes
            and len(frame.encode("utf-8", "surrogatepass")) > self.max_frame_bytes
        ):
            raise RemoteProtocolError(
                ErrorCode.TOO_LARGE, f"frame is over {self.max_frame_bytes} bytes"
            )
        try:
            obj = json.loads(
                frame, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
            )
        except (ValueError, RecursionError) as exc:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"not valid JSON: {exc}") from None
        return self._decode_object(obj, sender)

    def _decode_object(self, obj: Any, sender: Sender | None) -> Message:
        if not isinstance(obj, dict):
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "a frame must be a JSON object")
        wire_type = obj.get("type")
        if not isinstance(wire_type, str):
            raise RemoteProtocolError(ErrorCode.UNKNOWN_TYPE, "missing message type")
        cls = self._classes.get(wire_type)
        if cls is None:
            raise RemoteProtocolError(
                ErrorCode.UNKNOWN_TYPE, f"unknown message type {_shown(wire_type)}"
            )
        if sender is not None and not (cls.SENDERS & sender):
            raise RemoteProtocolError(
                ErrorCode.UNKNOWN_TYPE, f"{wire_type!r} may not be sent by a {sender.name}"
            )
        body = {k: v for k, v in obj.items() if k != "type"}
        message = self._schemas[wire_type].build(body, "")
        assert isinstance(message, Message)
        return message
