"""Hypothesis strategies derived from the messages' own type hints.

A message class is its own schema (``Annotated[type, constraint]``), so valid examples
are built by reading the same hints the codec reads: a new field or a changed limit is
picked up here without touching the tests.
"""

from __future__ import annotations

import base64
import dataclasses
import string
import types
from enum import Enum
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from hypothesis import strategies as st

from protocol.codec import Message
from protocol.fields import Int, Items, Text

#: Strings kept short so that a thousand examples stay fast; the limits themselves
#: are tested one by one in test_codec.
MAX_TEXT = 40
MAX_ITEMS = 3

_B64_PATTERNS = {r"^[A-Za-z0-9+/]+={0,2}$", r"^[A-Za-z0-9+/]*={0,2}$"}
_FINGERPRINT_PATTERN = r"^[A-Za-z0-9-]+ [0-9A-Fa-f:]+$"
_ICE_URL_PATTERN = r"^(stun|stuns|turn|turns):[^\s]+$"
#: Patterns that are one character class repeated: the class spelled out.
_CHAR_CLASSES = {
    r"^[A-Za-z0-9_.:-]+$": string.ascii_letters + string.digits + "_.:-",
    r"^[A-Za-z0-9_.:-]*$": string.ascii_letters + string.digits + "_.:-",
    r"^[A-Za-z0-9_.~-]+$": string.ascii_letters + string.digits + "_.~-",
    r"^[A-Za-z0-9_.+-]+$": string.ascii_letters + string.digits + "_.+-",
}


def _free_text(spec: Text) -> st.SearchStrategy[str]:
    # Any character but controls and surrogates, which the codec refuses.
    characters = st.characters(
        exclude_categories=("Cc", "Cs"),
        include_characters="\t\n\r" if spec.multiline else None,
    )
    return st.text(characters, min_size=spec.min_len, max_size=min(spec.max_len, MAX_TEXT))


def _b64(spec: Text) -> st.SearchStrategy[str]:
    # n bytes make 4 * ceil(n / 3) characters.
    most = min(spec.max_len, MAX_TEXT * 2) // 4 * 3
    least = 1 if spec.min_len else 0
    return st.binary(min_size=least, max_size=most).map(
        lambda raw: base64.b64encode(raw).decode("ascii")
    )


def _fingerprint() -> st.SearchStrategy[str]:
    digest = st.binary(min_size=32, max_size=32).map(lambda raw: raw.hex(":").upper())
    return digest.map(lambda hexed: f"sha-256 {hexed}")


def _ice_url() -> st.SearchStrategy[str]:
    scheme = st.sampled_from(["stun", "stuns", "turn", "turns"])
    rest = st.text(st.sampled_from(string.ascii_letters + string.digits + ".:?=-"), min_size=1)
    return st.tuples(scheme, rest).map(lambda parts: f"{parts[0]}:{parts[1][:MAX_TEXT]}")


def text_strategy(spec: Text) -> st.SearchStrategy[str]:
    if spec.pattern is None:
        return _free_text(spec)
    if spec.pattern == _ICE_URL_PATTERN:
        return _ice_url()
    if spec.pattern in _B64_PATTERNS:
        return _b64(spec)
    if spec.pattern == _FINGERPRINT_PATTERN:
        return _fingerprint()
    alphabet = _CHAR_CLASSES.get(spec.pattern)
    if alphabet is not None:
        return st.text(
            st.sampled_from(alphabet),
            min_size=spec.min_len,
            max_size=min(spec.max_len, max(spec.min_len, MAX_TEXT)),
        )
    raise AssertionError(f"teach tests/protocol/strategies.py the pattern {spec.pattern!r}")


def strategy_for(hint: Any, constraint: Any = None) -> st.SearchStrategy[Any]:
    """Valid values of one field type, read the way ``protocol.codec._converter`` reads it."""
    origin = get_origin(hint)
    if origin is Annotated:
        base, *extras = get_args(hint)
        return strategy_for(base, extras[0] if extras else None)
    if origin in (Union, types.UnionType):
        (member,) = [a for a in get_args(hint) if a is not type(None)]
        return st.none() | strategy_for(member, constraint)
    if origin is tuple:
        item_hint, _ = get_args(hint)
        items = constraint if isinstance(constraint, Items) else Items()
        return st.lists(
            strategy_for(item_hint),
            min_size=items.min_items,
            max_size=min(items.max_items, max(items.min_items, MAX_ITEMS)),
        ).map(tuple)
    if hint is bool:
        return st.booleans()
    if hint is int:
        bounds = constraint if isinstance(constraint, Int) else Int()
        return st.integers(bounds.min, bounds.max)
    if hint is str:
        return text_strategy(constraint if isinstance(constraint, Text) else Text())
    if isinstance(hint, type) and issubclass(hint, Enum):
        return st.sampled_from(list(hint))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return dataclass_strategy(hint)
    raise AssertionError(f"no strategy for {hint!r}")


def dataclass_strategy(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


def messages(cls: type[Message]) -> st.SearchStrategy[Message]:
    strategy: st.SearchStrategy[Message] = dataclass_strategy(cls)
    return strategy
