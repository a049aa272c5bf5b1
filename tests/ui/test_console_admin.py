"""The console's history and administration views, driven with pytest-qt against the
real lab server: each action must take effect on the server, and the history must
show a real session's metadata (consent, reason, summary) and never its chat."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QLineEdit
from pytestqt.qtbot import QtBot

from device_agent.agent import enrol
from device_agent.state import AgentState
from peer.signaling import RequestError, api_post
from protocol.enums import Mode, Role, SessionState
from tech_console.admin_api import AdminApi
from tech_console.ui.admin import AdminView
from tech_console.ui.history import CONSENT_COLUMN, SUMMARY_COLUMN, HistoryView
from tests.conftest import PASSWORD, Lab
from tests.integration.harness import make_pair, until


async def login(lab: Lab, username: str, password: str = PASSWORD) -> AdminApi:
    reply = await api_post(
        lab.url, lab.fingerprint, "/api/v1/login", {"username": username, "password": password}
    )
    return AdminApi(lab.url, lab.fingerprint, str(reply["token"]))


async def finished(view: AdminView | HistoryView) -> None:
    """Wait for the view's latest action and insist that it succeeded."""
    task = view.runner.task
    assert task is not None
    assert await task, view.status.text()


@pytest.fixture
async def admin_view(lab: Lab, qtbot: QtBot) -> AdminView:
    view = AdminView(await login(lab, "admin"))
    qtbot.addWidget(view)
    view.show()
    view.refresh()
    await finished(view)
    return view


async def test_technicians_are_added_changed_and_disabled(lab: Lab, admin_view: AdminView) -> None:
    view = admin_view
    assert view.technician_model.rowCount() == 5
    dialog = view.open_add_technician()
    assert dialog.isVisible()
    dialog.username.setText("newbie")
    dialog.display_name.setText("<b>New</b> Person")
    dialog.password.setText("a long enough password")
    dialog.role.setCurrentIndex(dialog.role.findData(Role.TECHNICIAN))
    dialog.organisation.setText("Test IT")
    dialog.groups.check(lab.tablets.id)
    dialog.accept()
    await finished(view)
    assert "Added technician newbie" in view.status.text()
    newbie = next(t for t in await lab.store.technicians() if t.username == "newbie")
    assert newbie.role is Role.TECHNICIAN
    assert newbie.groups == frozenset({lab.tablets.id})
    # The new technician can log in; the name shows as typed (plain text).
    await (await login(lab, "newbie", "a long enough password")).me()
    cells = [row for row in view.technician_model.cell_texts() if row[0] == "newbie"]
    assert len(cells) == 1
    assert cells[0][1] == "<b>New</b> Person"

    # Role.
    assert view.select_technician(newbie.id)
    view.role_combo.setCurrentIndex(view.role_combo.findData(Role.SUPERVISOR))
    view.set_role_button.click()
    await finished(view)
    changed = await lab.store.technician(newbie.id)
    assert changed is not None
    assert changed.role is Role.SUPERVISOR

    # Groups: desktops instead of tablets.
    groups = view.open_technician_groups()
    assert groups is not None
    groups.groups.check(lab.tablets.id, False)
    groups.groups.check(lab.desktops.id)
    groups.accept()
    await finished(view)
    changed = await lab.store.technician(newbie.id)
    assert changed is not None
    assert changed.groups == frozenset({lab.desktops.id})

    # Disabled: cannot log in; enabled again: can.
    assert view.selected_technician() is not None
    assert view.disable_button.text() == "Disable"
    view.disable_button.click()
    await finished(view)
    assert view.disable_button.text() == "Enable"
    assert await lab.store.technician(newbie.id) is None  # disabled
    with pytest.raises(RequestError):
        await login(lab, "newbie", "a long enough password")
    view.disable_button.click()
    await finished(view)
    await login(lab, "newbie", "a long enough password")


async def test_refusals_are_shown(lab: Lab, admin_view: AdminView) -> None:
    view = admin_view
    dialog = view.open_add_technician()
    dialog.username.setText("tech")  # taken
    dialog.password.setText("a long enough password")
    dialog.accept()
    task = view.runner.task
    assert task is not None
    assert not await task
    assert view.status.text().startswith("Not added: ")


async def test_groups_are_added_and_their_policy_changed(lab: Lab, admin_view: AdminView) -> None:
    view = admin_view
    dialog = view.open_add_group()
    dialog.name.setText("Kiosks")
    dialog.modes[Mode.VIDEO].setChecked(False)
    dialog.accept()
    await finished(view)
    kiosks = next(g for g in await lab.store.groups() if g.name == "Kiosks")
    assert set(kiosks.allowed_modes) == {Mode.TEXT, Mode.VOICE}
    assert kiosks.service_enabled
    assert any(row[0] == "Kiosks" for row in view.group_model.cell_texts())

    assert view.select_group(kiosks.id)
    policy = view.open_policy()
    assert policy is not None
    assert not policy.modes[Mode.VIDEO].isChecked()
    policy.modes[Mode.VOICE].setChecked(False)
    policy.service.setChecked(False)
    policy.accept()
    await finished(view)
    kiosks = next(g for g in await lab.store.groups() if g.name == "Kiosks")
    assert kiosks.allowed_modes == (Mode.TEXT,)
    assert not kiosks.service_enabled
    row = next(r for r in view.group_model.cell_texts() if r[0] == "Kiosks")
    assert row[1:3] == ["Text", "Off"]


async def test_an_issued_code_enrols_a_device_that_can_be_revoked(
    lab: Lab, admin_view: AdminView, tmp_path: Path
) -> None:
    view = admin_view
    view.enrol_group.setCurrentIndex(view.enrol_group.findData(lab.desktops.id))
    assert view.issue_button.isEnabled()
    view.issue_button.click()
    await finished(view)
    assert view.issued is not None
    code = view.code_text.text()
    assert code == view.issued.code
    assert view.issued.group_id == lab.desktops.id
    assert not view.qr_label.pixmap().isNull()

    device = await enrol(AgentState(tmp_path / "a"), code, name="<i>X</i>")
    assert device.group_id == lab.desktops.id
    view.refresh()
    await finished(view)
    row = next(r for r in view.device_model.cell_texts() if r[0] == "<i>X</i>")
    assert row[1] == "Desktops"
    assert row[7] == "No"

    assert view.select_device(device.device_id)
    before = view.runner.task
    view.revoke_button.click()  # arms only: nothing is sent yet
    assert view.revoke_button.text() == "Confirm revoke of <i>X</i>"
    assert view.runner.task is before
    stored = await lab.store.device(device.device_id)
    assert stored is not None
    assert not stored.revoked
    view.revoke_button.click()
    await finished(view)
    stored = await lab.store.device(device.device_id)
    assert stored is not None
    assert stored.revoked
    row = next(r for r in view.device_model.cell_texts() if r[0] == "<i>X</i>")
    assert row[7] == "Yes"
    assert view.revoke_button.text() == "Revoke…"


async def test_a_non_admin_sees_the_refusal(lab: Lab, qtbot: QtBot) -> None:
    view = AdminView(await login(lab, "super"))
    qtbot.addWidget(view)
    task = view.refresh()
    assert not await task
    assert view.status.text().startswith("Could not load: ")


async def test_history_shows_the_session_and_never_its_chat(
    lab: Lab, tmp_path: Path, qtbot: QtBot
) -> None:
    secret = "zanzibar7319"
    async with make_pair(lab, tmp_path) as pair:
        console = pair.console
        session = await console.start_session(pair.device_id, Mode.TEXT, "ticket INC-77")
        await asyncio.wait_for(pair.answers.get(), 5)
        await until(lambda: session.call is not None and session.call.chat_open)
        await until(lambda: session.consent_verified)
        call = session.call
        assert call is not None
        await call.send_chat(f"the word is {secret}")
        await console.close_session(session.session_id)
        await console.wait_session(session, [SessionState.CLOSED])
        await console.write_summary(
            session.session_id,
            summary="Printer fixed",
            impact="none",
            expected_vs_actual="as expected",
            evidence="test page",
            next_owner="nobody",
        )
        assert console.token is not None
        tech_api = AdminApi(lab.url, lab.fingerprint, console.token)

        views = {
            "tech": HistoryView(tech_api, mine=True),
            "admin": HistoryView(await login(lab, "admin"), mine=False),
            "super": HistoryView(await login(lab, "super"), mine=False),
        }
        for who, view in views.items():
            qtbot.addWidget(view)
            view.show()
            view.refresh()
            await finished(view)
            rows = view.session_model.cell_texts()
            assert len(rows) == 1, who
            row = rows[0]
            assert row[0] == "Tech"
            assert row[1] == console.devices[pair.device_id].name
            assert row[CONSENT_COLUMN] == "Verified"
            assert "ticket INC-77" in row
            assert row[SUMMARY_COLUMN] == "Printer fixed"
            assert not any(secret in cell for cell in row)
            tooltip = view.session_model.index(0, SUMMARY_COLUMN).data(3)  # ToolTipRole
            assert "Next owner: nobody" in str(tooltip)

            csv_path = tmp_path / f"{who}.csv"
            view.export_sessions(csv_path)
            text = csv_path.read_text(encoding="utf-8")
            assert "Printer fixed" in text
            assert "ticket INC-77" in text
            assert secret not in text
            view.export_notifications(tmp_path / f"{who}-notes.csv")
            assert secret not in (tmp_path / f"{who}-notes.csv").read_text(encoding="utf-8")

        # The search narrows the rows shown, and the export follows.
        view = views["admin"]
        view.search.setText("no such ticket")
        assert view.session_model.rowCount() == 0
        view.export_sessions(tmp_path / "none.csv")
        assert "Printer fixed" not in (tmp_path / "none.csv").read_text(encoding="utf-8")
        view.search.setText("inc-77")
        assert view.session_model.rowCount() == 1

        # Export CSV… asks where, through the save dialog, then writes there.
        QTest.mouseClick(view.export_sessions_button, Qt.MouseButton.LeftButton)
        dialog = view.export_dialog
        assert dialog is not None
        await until(dialog.isVisible)
        chosen = tmp_path / "chosen.csv"
        # Typed as a person would (selectFile is overridden once the folder has loaded).
        name_edit = dialog.findChild(QLineEdit, "fileNameEdit")
        assert isinstance(name_edit, QLineEdit)
        name_edit.setText(str(chosen))
        dialog.accept()
        await until(chosen.exists)
        assert "Printer fixed" in chosen.read_text(encoding="utf-8")
        assert view.status.text() == f"Exported the sessions to {chosen}."

        # Another technician's own history does not have it.
        other = HistoryView(await login(lab, "other-tech"), mine=True)
        qtbot.addWidget(other)
        other.refresh()
        await finished(other)
        assert other.session_model.rowCount() == 0
