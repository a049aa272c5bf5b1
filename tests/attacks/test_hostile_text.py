"""Hostile text: markup, bidirectional controls and megabyte strings in names, chat,
notifications and answers.

The server holds every field to its protocol limit (``protocol/fields.py``) and keeps
what fits as it was typed; each end shows it display-safe (``peer/ui/text.py``): plain
text, bidi controls escaped as ``[U+202E]``, capped with a visible ``…``. Here: the
server's limits over real websockets and REST, the helper itself, and each console
and device widget that shows such text (``tests/attacks/ui/`` drives the device's
prompt and pop-up and the console's inventory and answers end to end).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from peer.chat import ChatLog
from peer.ui.chat import ChatPanel, ChatRole
from peer.ui.text import (
    CUT_MARKER,
    NAME_LIMIT,
    TEXT_LIMIT,
    PlainLabel,
    display_name,
    display_text,
)
from protocol.chat import CHAT
from protocol.codec import MAX_FRAME_BYTES
from protocol.enums import LiveSupportStatus, Mode, NotificationState
from protocol.errors import CloseCode, ErrorCode, RemoteProtocolError
from protocol.messages import DeviceInfo, Error
from tech_console.client import ConsoleClient, NotificationProgress
from tech_console.ui.history import RecordModel
from tech_console.ui.inventory import DEVICE_ROLE, InventoryModel
from tech_console.ui.notifications import ProgressModel
from tech_console.ui.session_window import plain
from tests.conftest import Lab
from tests.signaling_server.wire import Wire, clients, enrol, login, post

MARKUP = "<b>bold</b> <img src='https://evil.example/x.png'> <a href='https://evil.example'>ok</a>"
#: "Invoice" then an override that makes "fdp.exe" read "exe.pdf".
SPOOF = "Invoice \u202efdp.exe"
ISOLATES = (
    "\u2066left\u2069 \u2067right\u2069 \u202aembed\u202c \u202bembed\u202c \u202doverride\u202c"
)
MEGABYTE = "A" * 1_000_000
RTL = "שלום עולם مرحبا"


def shows_no_bidi_controls(text: str) -> bool:
    return not any(ch in text for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# --- the helper ---------------------------------------------------------------------------


def test_markup_is_kept_as_characters() -> None:
    # Plain text shows markup as typed: nothing to escape, nothing to strip.
    assert display_text(MARKUP) == MARKUP


def test_bidi_controls_are_shown_escaped() -> None:
    assert display_name(SPOOF) == "Invoice [U+202E]fdp.exe"
    shown = display_text(ISOLATES)
    assert shows_no_bidi_controls(shown)
    for code in ("2066", "2067", "2069", "202A", "202B", "202C", "202D"):
        assert f"[U+{code}]" in shown


def test_right_to_left_text_without_controls_is_untouched() -> None:
    assert display_name(RTL) == RTL
    assert display_text("a\u200fb\u200ec") == "a\u200fb\u200ec"  # marks reorder nothing


def test_control_characters_and_line_breaks() -> None:
    assert display_text("a\x00b\x1b[31m") == "a[U+0000]b[U+001B][31m"
    assert display_text("one\r\ntwo\tthree") == "one\ntwo\tthree"
    assert display_name("one\ntwo\u2028three") == "one[U+000A]two[U+2028]three"


def test_megabyte_strings_are_capped_with_a_visible_marker() -> None:
    shown = display_text(MEGABYTE)
    assert len(shown) == TEXT_LIMIT
    assert shown.endswith(CUT_MARKER)
    name = display_name(MEGABYTE)
    assert len(name) == NAME_LIMIT
    assert name.endswith(CUT_MARKER)
    # Escapes count towards the cap: a megabyte of overrides is capped as well.
    assert len(display_name("\u202e" * 1_000_000)) == NAME_LIMIT
    # Text at the protocol's own limits is never cut.
    assert display_name("n" * NAME_LIMIT) == "n" * NAME_LIMIT
    assert display_text("t" * TEXT_LIMIT) == "t" * TEXT_LIMIT


# --- the server's field limits ------------------------------------------------------------


async def refused_raw(wire: Wire, frame: Mapping[str, object], code: ErrorCode) -> None:
    """Send a frame our own encoder would refuse to build; expect its typed refusal."""
    rid = 4242
    await wire.send(json.dumps({**frame, "rid": rid}))
    error = await wire.expect(Error, where=lambda e: e.rid == rid)
    assert error.code is code, error


async def test_the_server_caps_every_field_and_keeps_what_fits_as_typed(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        wire = await c.device(device)
        console = await c.console("tech")

        # A device name over 128 characters, or with a line break, is refused...
        report = {"type": "status.report", "service_installed": True, "service_enabled": True}
        await refused_raw(wire, {**report, "name": "n" * 129}, ErrorCode.TOO_LARGE)
        await refused_raw(wire, {**report, "name": "a\nb"}, ErrorCode.INVALID_FIELD)
        # ...markup and bidi controls within the limit are kept as typed (each end
        # shows them escaped).
        hostile = (MARKUP[:60] + SPOOF)[:128]
        await wire.report(name=hostile)
        stored = await lab.store.device(device.device_id)
        assert stored is not None
        assert stored.name == hostile

        # A notification body over 4,000 characters, and an answer over it.
        notify = {"type": "notify.send", "device_ids": [device.device_id], "title": "t"}
        await refused_raw(console, {**notify, "body": "b" * 4001}, ErrorCode.TOO_LARGE)
        answer = {"type": "notify.answer", "notification_id": "ntf-x", "text": "a" * 4001}
        await refused_raw(wire, answer, ErrorCode.TOO_LARGE)

        # A megabyte string is over the frame limit: that connection is closed (1009),
        # and nothing of it is stored.
        frame = json.dumps(
            {
                "type": "status.report",
                "service_installed": True,
                "service_enabled": True,
                "name": MEGABYTE,
            }
        )
        await wire.send(frame)
        assert await wire.wait_closed() == CloseCode.TOO_BIG
        stored = await lab.store.device(device.device_id)
        assert stored is not None
        assert stored.name == hostile
        await console.round_trip()  # the console is unaffected

        # Technician names (what a device user trusts) refuse bidi controls outright.
        token = await login(lab, "tech")
        status, reply = await post(lab, "/api/v1/me/profile", {"display_name": SPOOF}, token=token)
        assert (status, reply["error"]) == (400, "invalid_field")
        status, reply = await post(
            lab, "/api/v1/me/profile", {"display_name": MEGABYTE}, token=token
        )
        assert status == 413
        assert reply["error"] == "too_large"
        status, reply = await post(
            lab, "/api/v1/me/profile", {"display_name": MARKUP[:128]}, token=token
        )
        assert status == 200, reply
        tech = await lab.store.technician(lab.tech.id)
        assert tech is not None
        assert tech.display_name == MARKUP[:128]


def test_chat_messages_over_the_limit_are_refused_by_the_peer() -> None:
    frame = json.dumps(
        {
            "type": "chat.message",
            "message_id": "m1",
            "text": "x" * 4001,
            "author": "A",
            "sent_at_ms": 1,
        }
    )
    with pytest.raises(RemoteProtocolError) as info:
        CHAT.decode(frame)
    assert info.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(RemoteProtocolError) as info:
        CHAT.decode(json.dumps({"type": "chat.message", "text": MEGABYTE}))
    assert info.value.code is ErrorCode.TOO_LARGE
    assert len(MEGABYTE) > MAX_FRAME_BYTES


# --- the widgets, at both ends ------------------------------------------------------------


def test_labels_for_peer_text_are_plain_escaped_and_capped(qtbot: QtBot) -> None:
    label = plain(MARKUP)  # the console's helper (session window, history, notifications)
    qtbot.addWidget(label)
    assert isinstance(label, PlainLabel)
    assert label.textFormat() is Qt.TextFormat.PlainText
    assert label.text() == MARKUP
    label.setText(SPOOF)  # later changes go through it too
    assert label.text() == "Invoice [U+202E]fdp.exe"
    label.setText(MEGABYTE)
    assert len(label.text()) == TEXT_LIMIT
    assert label.text().endswith(CUT_MARKER)


def _device(name: str, **extra: str) -> DeviceInfo:
    return DeviceInfo(
        device_id="dev-1",
        name=name,
        group_id="grp-1",
        group_name=extra.get("group_name", "Tablets"),
        model=extra.get("model", ""),
        os=extra.get("os", ""),
        status=LiveSupportStatus.DISCONNECTED,
        online=True,
        allowed_modes=(Mode.TEXT,),
        public_key="AAAA",
    )


def test_the_inventory_shows_device_text_escaped_and_capped(qtbot: QtBot) -> None:
    model = InventoryModel()
    model.set_devices([_device(SPOOF, group_name=MARKUP[:128], model=ISOLATES, os=MEGABYTE)])
    cells = [model.data(model.index(0, column)) for column in range(model.columnCount())]
    assert cells[0] == "Invoice [U+202E]fdp.exe"
    assert MARKUP[:128] in cells  # a table cell never interprets markup
    assert all(shows_no_bidi_controls(str(cell)) for cell in cells)
    longest = max((str(cell) for cell in cells), key=len)
    assert len(longest) == NAME_LIMIT
    assert longest.endswith(CUT_MARKER)
    # The model keeps the device itself as it came (a console acts on the real name).
    device = model.data(model.index(0, 0), DEVICE_ROLE)
    assert isinstance(device, DeviceInfo)
    assert device.name == SPOOF


def test_the_chat_shows_the_peers_text_and_name_escaped_and_capped(qtbot: QtBot) -> None:
    log = ChatLog()
    panel = ChatPanel(log, peer_name=SPOOF)
    qtbot.addWidget(panel)
    log.add_incoming(
        message_id="m-1", author=SPOOF, text=MARKUP + "\n" + ISOLATES, sent_at_ms=1_700_000_000_000
    )
    log.add_incoming(message_id="m-2", author=MEGABYTE, text=MEGABYTE, sent_at_ms=1_700_000_000_001)
    model = panel.model
    assert model.rowCount() == 2

    def shown(row: int, role: int) -> str:
        value = model.data(model.index(row, 0), role)
        assert isinstance(value, str)
        return value

    display, author = int(Qt.ItemDataRole.DisplayRole), int(ChatRole.AUTHOR)
    text = shown(0, display)
    assert text.startswith(MARKUP + "\n")
    assert shows_no_bidi_controls(text)
    assert shown(0, author) == "Invoice [U+202E]fdp.exe"
    assert shows_no_bidi_controls(shown(0, int(Qt.ItemDataRole.AccessibleTextRole)))
    assert len(shown(1, display)) == TEXT_LIMIT
    assert shown(1, display).endswith(CUT_MARKER)
    assert len(shown(1, author)) == NAME_LIMIT
    panel.set_peer_name(SPOOF)
    typing = panel._typing_label
    assert typing.textFormat() is Qt.TextFormat.PlainText
    assert typing.text() == "Invoice [U+202E]fdp.exe is typing…"


def test_notification_answers_are_shown_escaped_and_capped(qtbot: QtBot) -> None:
    client = ConsoleClient("https://127.0.0.1:1", "sha-256 " + ":".join(["AB"] * 32))
    client.devices["dev-1"] = _device(SPOOF)
    client.devices["dev-2"] = dataclasses.replace(_device("Quiet"), device_id="dev-2")
    model = ProgressModel(client)
    progress = NotificationProgress(
        notification_id="ntf-1",
        device_ids=("dev-1", "dev-2"),
        states={"dev-1": NotificationState.ANSWERED, "dev-2": NotificationState.ANSWERED},
        title=SPOOF,
        answers={"dev-1": MARKUP + " " + SPOOF, "dev-2": MEGABYTE},
    )
    model.show_progress(progress)
    rows = {
        str(model.data(model.index(row, 0))): str(model.data(model.index(row, 2)))
        for row in range(model.rowCount())
    }
    assert rows["Invoice [U+202E]fdp.exe"] == MARKUP + " Invoice [U+202E]fdp.exe"
    assert len(rows["Quiet"]) == TEXT_LIMIT
    assert rows["Quiet"].endswith(CUT_MARKER)


def test_history_cells_are_escaped_and_capped(qtbot: QtBot) -> None:
    model: RecordModel[tuple[str, str]] = RecordModel(("Device", "Reason"), lambda r: r)
    model.set_records([(SPOOF, MARKUP), ("Tablet", MEGABYTE)])
    cells = model.cell_texts()
    assert cells[0] == ["Invoice [U+202E]fdp.exe", MARKUP]
    assert len(cells[1][1]) == TEXT_LIMIT
    assert cells[1][1].endswith(CUT_MARKER)
    assert model.data(model.index(0, 0)) == "Invoice [U+202E]fdp.exe"
