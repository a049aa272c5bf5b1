"""Administration in the console (admins only): technicians, device groups and their
policy, enrolment codes (as text and as a QR code) and devices (revocation).

Every action is one async call of :class:`AdminApi`; the status label tells progress
and the server's message when it refuses; the tables load again after a success.
Names typed by people elsewhere are shown as plain text (models' DisplayRole, plain
labels)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import TypeVar

import segno
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QImage, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from protocol.enums import Mode, Role
from tech_console.admin_api import (
    AdminApi,
    DeviceRecord,
    EnrolmentTokenIssued,
    GroupRecord,
    TechnicianRecord,
)
from tech_console.ui.history import MODE_LABELS, RecordModel, TaskRunner, local_time, make_table
from tech_console.ui.session_window import plain

R = TypeVar("R", TechnicianRecord, GroupRecord, DeviceRecord)

#: Roles an admin can give (a device is not a technician).
ROLES = (Role.TECHNICIAN, Role.SUPERVISOR, Role.VIEWER, Role.ADMIN)
ROLE_LABELS = {
    Role.ADMIN: "Admin",
    Role.SUPERVISOR: "Supervisor",
    Role.TECHNICIAN: "Technician",
    Role.VIEWER: "Viewer",
}

LIFETIMES = (("1 hour", 3600), ("1 day", 24 * 3600), ("7 days", 7 * 24 * 3600))

#: How long the "Confirm revoke" button stays armed.
REVOKE_CONFIRM_MS = 5000


def yes_no(value: bool) -> str:
    return "Yes" if value else "No"


def qr_image(text: str, scale: int = 4) -> QImage:
    """``text`` as a QR code (error correction M, a quiet zone of 4 modules)."""
    matrix = segno.make(text, error="m", micro=False).matrix
    border = 4
    side = len(matrix) + 2 * border
    image = QImage(side, side, QImage.Format.Format_RGB32)
    image.fill(0xFFFFFF)
    for y, row in enumerate(matrix):
        for x, dark in enumerate(row):
            if dark:
                image.setPixel(x + border, y + border, 0)
    return image.scaled(side * scale, side * scale, mode=Qt.TransformationMode.FastTransformation)


class Checklist(QListWidget):
    """Checkable items, each holding an id."""

    def set_items(self, items: Iterable[tuple[str, str]], checked: Iterable[str] = ()) -> None:
        chosen = set(checked)
        self.clear()
        for item_id, label in items:
            item = QListWidgetItem(label, self)
            item.setData(Qt.ItemDataRole.UserRole, item_id)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(
                Qt.CheckState.Checked if item_id in chosen else Qt.CheckState.Unchecked
            )

    def checked(self) -> list[str]:
        return [
            str(self.item(i).data(Qt.ItemDataRole.UserRole))
            for i in range(self.count())
            if self.item(i).checkState() == Qt.CheckState.Checked
        ]

    def check(self, item_id: str, on: bool = True) -> None:
        for i in range(self.count()):
            if self.item(i).data(Qt.ItemDataRole.UserRole) == item_id:
                self.item(i).setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)


def _buttons(dialog: QDialog, ok: str) -> QDialogButtonBox:
    buttons = QDialogButtonBox(
        QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, dialog
    )
    buttons.button(QDialogButtonBox.StandardButton.Ok).setText(ok)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    return buttons


class TechnicianDialog(QDialog):
    """A new technician: username, display name, password, role, organisation, groups."""

    def __init__(self, groups: Sequence[GroupRecord], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Add technician")
        self.setObjectName("technicianDialog")
        self.username = QLineEdit(self)
        self.username.setMaxLength(64)
        self.display_name = QLineEdit(self)
        self.display_name.setMaxLength(128)
        self.password = QLineEdit(self)
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.role = QComboBox(self)
        for role in ROLES:
            self.role.addItem(ROLE_LABELS[role], role)
        self.organisation = QLineEdit(self)
        self.organisation.setMaxLength(128)
        self.groups = Checklist(self)
        self.groups.set_items((g.group_id, g.name) for g in groups)
        form = QFormLayout()
        form.addRow("Username", self.username)
        form.addRow("Display name", self.display_name)
        form.addRow("Password", self.password)
        form.addRow("Role", self.role)
        form.addRow("Organisation", self.organisation)
        form.addRow("Groups", self.groups)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(_buttons(self, "Add"))

    def selected_role(self) -> Role:
        return Role(self.role.currentData())


class GroupsDialog(QDialog):
    """Which groups a technician may see."""

    def __init__(
        self,
        technician: TechnicianRecord,
        groups: Sequence[GroupRecord],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Groups of {technician.display_name}")
        self.setObjectName("groupsDialog")
        self.technician = technician
        self.groups = Checklist(self)
        self.groups.set_items(
            ((g.group_id, g.name) for g in groups), (g.id for g in technician.groups)
        )
        layout = QVBoxLayout(self)
        layout.addWidget(self.groups)
        layout.addWidget(_buttons(self, "Save"))


class GroupDialog(QDialog):
    """A new group (name, modes, service) or an existing group's policy."""

    def __init__(self, group: GroupRecord | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.group = group
        self.setObjectName("groupDialog")
        self.setWindowTitle("Add group" if group is None else f"Policy of {group.name}")
        self.name = QLineEdit(self)
        self.name.setMaxLength(128)
        self.modes = {m: QCheckBox(MODE_LABELS[m], self) for m in Mode}
        for mode, box in self.modes.items():
            box.setChecked(group is None or mode in group.allowed_modes)
        self.service = QCheckBox("Live support service enabled", self)
        self.service.setChecked(group is None or group.service_enabled)
        form = QFormLayout()
        if group is None:
            form.addRow("Name", self.name)
        modes = QHBoxLayout()
        for box in self.modes.values():
            modes.addWidget(box)
        form.addRow("Allowed", modes)
        form.addRow("", self.service)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(_buttons(self, "Add" if group is None else "Save"))

    def allowed_modes(self) -> list[Mode]:
        return [m for m, box in self.modes.items() if box.isChecked()]


def _technician_cells(t: TechnicianRecord) -> tuple[str, ...]:
    return (
        t.username,
        t.display_name,
        ROLE_LABELS.get(t.role, t.role.value),
        t.organisation,
        ", ".join(g.name for g in t.groups),
        "Disabled" if t.disabled else "Active",
    )


def _group_cells(g: GroupRecord) -> tuple[str, ...]:
    return (
        g.name,
        ", ".join(MODE_LABELS[m] for m in g.allowed_modes) or "(none)",
        "On" if g.service_enabled else "Off",
        str(g.device_count),
    )


def _device_cells(d: DeviceRecord) -> tuple[str, ...]:
    return (
        d.name,
        d.group_name,
        d.model,
        d.os,
        local_time(d.enrolled_at_ms),
        local_time(d.last_seen_ms) or "Never",
        yes_no(d.online),
        yes_no(d.revoked),
    )


class AdminView(QWidget):
    """Technicians, groups, enrolment and devices, as sub-tabs; one status label."""

    #: Emitted after each successful refresh (the main window may listen).
    refreshed = Signal()

    def __init__(self, api: AdminApi, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.api = api
        self.setObjectName("adminView")
        self.groups: list[GroupRecord] = []
        self.dialog: QDialog | None = None
        self.issued: EnrolmentTokenIssued | None = None
        self._revoke_armed: str | None = None

        self.status = plain(parent=self)
        self.status.setObjectName("adminStatus")
        self.status.setWordWrap(True)
        self.runner = TaskRunner(self.status)
        self.refresh_button = QPushButton("Refresh", self)
        self.refresh_button.clicked.connect(lambda: self.refresh())

        self.tabs = QTabWidget(self)
        self.tabs.addTab(self._technicians_page(), "Technicians")
        self.tabs.addTab(self._groups_page(), "Groups")
        self.tabs.addTab(self._enrolment_page(), "Enrolment")
        self.tabs.addTab(self._devices_page(), "Devices")
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.refresh_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 1)
        layout.addLayout(bottom)

        self._disarm_timer = QTimer(self)
        self._disarm_timer.setSingleShot(True)
        self._disarm_timer.timeout.connect(self.disarm_revoke)
        self._update_buttons()

    # -- pages -----------------------------------------------------------------------------

    def _technicians_page(self) -> QWidget:
        page = QWidget(self)
        self.technician_model: RecordModel[TechnicianRecord] = RecordModel(
            ("Username", "Name", "Role", "Organisation", "Groups", "State"),
            _technician_cells,
            parent=self,
        )
        self.technician_table = make_table(self.technician_model, "technicianTable", page)
        self.add_technician_button = QPushButton("Add technician…", page)
        self.add_technician_button.clicked.connect(lambda: self.open_add_technician())
        self.role_combo = QComboBox(page)
        self.role_combo.setAccessibleName("Role")
        for role in ROLES:
            self.role_combo.addItem(ROLE_LABELS[role], role)
        self.set_role_button = QPushButton("Change role", page)
        self.set_role_button.clicked.connect(
            lambda: self.set_role(Role(self.role_combo.currentData()))
        )
        self.groups_button = QPushButton("Groups…", page)
        self.groups_button.clicked.connect(lambda: self.open_technician_groups())
        self.disable_button = QPushButton("Disable", page)
        self.disable_button.clicked.connect(lambda: self.toggle_disabled())
        actions = QHBoxLayout()
        actions.addWidget(self.add_technician_button)
        actions.addStretch(1)
        actions.addWidget(self.role_combo)
        actions.addWidget(self.set_role_button)
        actions.addWidget(self.groups_button)
        actions.addWidget(self.disable_button)
        layout = QVBoxLayout(page)
        layout.addWidget(self.technician_table, 1)
        layout.addLayout(actions)
        self.technician_table.selectionModel().selectionChanged.connect(
            lambda *_: self._update_buttons()
        )
        return page

    def _groups_page(self) -> QWidget:
        page = QWidget(self)
        self.group_model: RecordModel[GroupRecord] = RecordModel(
            ("Name", "Allowed", "Service", "Devices"), _group_cells, parent=self
        )
        self.group_table = make_table(self.group_model, "groupTable", page)
        self.add_group_button = QPushButton("Add group…", page)
        self.add_group_button.clicked.connect(lambda: self.open_add_group())
        self.policy_button = QPushButton("Policy…", page)
        self.policy_button.clicked.connect(lambda: self.open_policy())
        actions = QHBoxLayout()
        actions.addWidget(self.add_group_button)
        actions.addStretch(1)
        actions.addWidget(self.policy_button)
        layout = QVBoxLayout(page)
        layout.addWidget(self.group_table, 1)
        layout.addLayout(actions)
        self.group_table.selectionModel().selectionChanged.connect(
            lambda *_: self._update_buttons()
        )
        return page

    def _enrolment_page(self) -> QWidget:
        page = QWidget(self)
        self.enrol_group = QComboBox(page)
        self.enrol_group.setAccessibleName("Group")
        self.lifetime = QComboBox(page)
        self.lifetime.setAccessibleName("Valid for")
        for label, seconds in LIFETIMES:
            self.lifetime.addItem(label, seconds)
        self.lifetime.setCurrentIndex(1)
        self.issue_button = QPushButton("Issue code", page)
        self.issue_button.clicked.connect(lambda: self.issue_code())
        self.code_text = plain(parent=page)
        self.code_text.setObjectName("enrolmentCode")
        self.code_text.setWordWrap(True)
        self.code_text.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
            | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        self.code_expiry = plain(parent=page)
        self.qr_label = QLabel(page)
        self.qr_label.setObjectName("enrolmentQr")
        self.qr_label.setAccessibleName("Enrolment code as a QR code")
        self.copy_button = QPushButton("Copy code", page)
        self.copy_button.clicked.connect(lambda: self.copy_code())
        form = QFormLayout()
        form.addRow("Group", self.enrol_group)
        form.addRow("Valid for", self.lifetime)
        layout = QVBoxLayout(page)
        layout.addLayout(form)
        layout.addWidget(self.issue_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.code_text)
        layout.addWidget(self.code_expiry)
        layout.addWidget(self.copy_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.qr_label, 1, Qt.AlignmentFlag.AlignCenter)
        return page

    def _devices_page(self) -> QWidget:
        page = QWidget(self)
        self.device_model: RecordModel[DeviceRecord] = RecordModel(
            ("Name", "Group", "Model", "OS", "Enrolled", "Last seen", "Online", "Revoked"),
            _device_cells,
            parent=self,
        )
        self.device_table = make_table(self.device_model, "deviceTable", page)
        self.revoke_button = QPushButton("Revoke…", page)
        self.revoke_button.setObjectName("revokeButton")
        self.revoke_button.clicked.connect(lambda: self.click_revoke())
        layout = QVBoxLayout(page)
        layout.addWidget(self.device_table, 1)
        layout.addWidget(self.revoke_button, 0, Qt.AlignmentFlag.AlignRight)
        self.device_table.selectionModel().selectionChanged.connect(
            lambda *_: self._device_selected()
        )
        return page

    # -- loading ---------------------------------------------------------------------------

    def refresh(self) -> asyncio.Task[bool]:
        """Load technicians, groups and devices again."""
        return self.runner.run("Loading…", self._reload(None), "Could not load")

    async def _reload(self, done: str | None) -> str:
        technicians = await self.api.technicians()
        groups = await self.api.groups()
        devices = await self.api.devices()
        self.groups = groups
        self._keep_selection(self.technician_table, self.technician_model, technicians)
        self._keep_selection(self.group_table, self.group_model, groups)
        self._keep_selection(self.device_table, self.device_model, devices)
        current = self.enrol_group.currentData()
        self.enrol_group.clear()
        for g in groups:
            self.enrol_group.addItem(g.name, g.group_id)
        if current is not None and (i := self.enrol_group.findData(current)) >= 0:
            self.enrol_group.setCurrentIndex(i)
        self._update_buttons()
        self.refreshed.emit()
        return done or (
            f"{len(technicians)} technicians, {len(groups)} groups, {len(devices)} devices."
        )

    def _keep_selection(
        self, table: QTableView, model: RecordModel[R], records: Sequence[R]
    ) -> None:
        selected = self._selected_key(table, model)
        model.set_records(records)
        if selected is not None:
            self._select(table, model, selected)

    @staticmethod
    def _key(record: TechnicianRecord | GroupRecord | DeviceRecord) -> str:
        if isinstance(record, TechnicianRecord):
            return record.technician_id
        if isinstance(record, GroupRecord):
            return record.group_id
        return record.device_id

    def _selected_key(self, table: QTableView, model: RecordModel[R]) -> str | None:
        rows = table.selectionModel().selectedRows()
        record = model.record(rows[0].row()) if rows else None
        return self._key(record) if record is not None else None

    def _select(self, table: QTableView, model: RecordModel[R], key: str) -> bool:
        for row, record in enumerate(model.records):
            if self._key(record) == key:
                table.selectRow(row)
                return True
        return False

    # -- selection -------------------------------------------------------------------------

    def select_technician(self, technician_id: str) -> bool:
        return self._select(self.technician_table, self.technician_model, technician_id)

    def select_group(self, group_id: str) -> bool:
        return self._select(self.group_table, self.group_model, group_id)

    def select_device(self, device_id: str) -> bool:
        return self._select(self.device_table, self.device_model, device_id)

    def selected_technician(self) -> TechnicianRecord | None:
        rows = self.technician_table.selectionModel().selectedRows()
        return self.technician_model.record(rows[0].row()) if rows else None

    def selected_group(self) -> GroupRecord | None:
        rows = self.group_table.selectionModel().selectedRows()
        return self.group_model.record(rows[0].row()) if rows else None

    def selected_device(self) -> DeviceRecord | None:
        rows = self.device_table.selectionModel().selectedRows()
        return self.device_model.record(rows[0].row()) if rows else None

    def _update_buttons(self) -> None:
        tech = self.selected_technician()
        for button in (self.set_role_button, self.groups_button, self.disable_button):
            button.setEnabled(tech is not None)
        self.role_combo.setEnabled(tech is not None)
        if tech is not None:
            self.disable_button.setText("Enable" if tech.disabled else "Disable")
            self.role_combo.setCurrentIndex(max(0, self.role_combo.findData(tech.role)))
        self.policy_button.setEnabled(self.selected_group() is not None)
        device = self.selected_device()
        self.revoke_button.setEnabled(device is not None and not device.revoked)
        self.issue_button.setEnabled(self.enrol_group.count() > 0)
        self.copy_button.setEnabled(self.issued is not None)

    # -- technicians -----------------------------------------------------------------------

    def _open(self, dialog: QDialog) -> None:
        dialog.finished.connect(lambda _result: dialog.deleteLater())
        self.dialog = dialog
        dialog.open()

    def open_add_technician(self) -> TechnicianDialog:
        dialog = TechnicianDialog(self.groups, self)
        dialog.accepted.connect(lambda: self._add_technician(dialog))
        self._open(dialog)
        return dialog

    def _add_technician(self, d: TechnicianDialog) -> None:
        username = d.username.text().strip()
        display_name = d.display_name.text().strip() or username
        password, role = d.password.text(), d.selected_role()
        organisation, groups = d.organisation.text().strip(), d.groups.checked()

        async def run() -> str:
            await self.api.create_technician(
                username=username,
                display_name=display_name,
                password=password,
                role=role,
                organisation=organisation,
                groups=groups,
            )
            return await self._reload(f"Added technician {username}.")

        self.runner.run(f"Adding technician {username}…", run(), "Not added")

    def _update_technician(
        self,
        busy: str,
        done: str,
        *,
        role: Role | None = None,
        groups: Sequence[str] | None = None,
        disabled: bool | None = None,
    ) -> None:
        tech = self.selected_technician()
        if tech is None:
            self.status.setText("Select a technician first.")
            return
        technician_id = tech.technician_id

        async def run() -> str:
            await self.api.update_technician(
                technician_id, role=role, groups=groups, disabled=disabled
            )
            return await self._reload(done)

        self.runner.run(busy, run(), "Not changed")

    def set_role(self, role: Role) -> None:
        """Give the selected technician ``role``."""
        tech = self.selected_technician()
        name = tech.username if tech else ""
        self._update_technician(
            f"Changing the role of {name}…",
            f"{name} is now {ROLE_LABELS.get(role, role.value).lower()}.",
            role=role,
        )

    def open_technician_groups(self) -> GroupsDialog | None:
        tech = self.selected_technician()
        if tech is None:
            self.status.setText("Select a technician first.")
            return None
        dialog = GroupsDialog(tech, self.groups, self)
        dialog.accepted.connect(lambda: self.set_groups(dialog.groups.checked()))
        self._open(dialog)
        return dialog

    def set_groups(self, group_ids: Sequence[str]) -> None:
        """Replace the selected technician's groups."""
        tech = self.selected_technician()
        name = tech.username if tech else ""
        self._update_technician(
            f"Changing the groups of {name}…",
            f"Changed the groups of {name}.",
            groups=list(group_ids),
        )

    def toggle_disabled(self) -> None:
        """Disable the selected technician, or enable them again."""
        tech = self.selected_technician()
        if tech is None:
            self.status.setText("Select a technician first.")
            return
        disable = not tech.disabled
        verb = "Disabl" if disable else "Enabl"
        self._update_technician(
            f"{verb}ing {tech.username}…", f"{verb}ed {tech.username}.", disabled=disable
        )

    # -- groups ----------------------------------------------------------------------------

    def open_add_group(self) -> GroupDialog:
        dialog = GroupDialog(None, self)
        dialog.accepted.connect(lambda: self._add_group(dialog))
        self._open(dialog)
        return dialog

    def _add_group(self, d: GroupDialog) -> None:
        name = d.name.text().strip()
        modes, service = d.allowed_modes(), d.service.isChecked()

        async def run() -> str:
            await self.api.create_group(name, allowed_modes=modes, service_enabled=service)
            return await self._reload(f"Added group {name}.")

        self.runner.run(f"Adding group {name}…", run(), "Not added")

    def open_policy(self) -> GroupDialog | None:
        group = self.selected_group()
        if group is None:
            self.status.setText("Select a group first.")
            return None
        dialog = GroupDialog(group, self)
        dialog.accepted.connect(lambda: self._set_policy(group, dialog))
        self._open(dialog)
        return dialog

    def _set_policy(self, group: GroupRecord, d: GroupDialog) -> None:
        modes, service = d.allowed_modes(), d.service.isChecked()

        async def run() -> str:
            await self.api.set_group_policy(
                group.group_id, allowed_modes=modes, service_enabled=service
            )
            return await self._reload(f"Changed the policy of {group.name}.")

        self.runner.run(f"Changing the policy of {group.name}…", run(), "Not changed")

    # -- enrolment -------------------------------------------------------------------------

    def issue_code(self) -> asyncio.Task[bool] | None:
        """Issue a one-time enrolment code for the chosen group and lifetime."""
        group_id = self.enrol_group.currentData()
        if group_id is None:
            self.status.setText("Choose a group first.")
            return None
        ttl_s = int(self.lifetime.currentData())
        name = self.enrol_group.currentText()

        async def run() -> str:
            issued = await self.api.issue_enrolment_token(str(group_id), ttl_s=ttl_s)
            self.show_code(issued)
            return f"Issued an enrolment code for {name}."

        return self.runner.run(f"Issuing a code for {name}…", run(), "Not issued")

    def show_code(self, issued: EnrolmentTokenIssued) -> None:
        self.issued = issued
        self.code_text.setText(issued.code)
        self.code_expiry.setText(f"Valid until {local_time(issued.expires_at_ms)}, once.")
        self.qr_label.setPixmap(QPixmap.fromImage(qr_image(issued.code)))
        self._update_buttons()

    def copy_code(self) -> None:
        if self.issued is not None:
            QGuiApplication.clipboard().setText(self.issued.code)
            self.status.setText("Copied the enrolment code.")

    # -- devices ---------------------------------------------------------------------------

    def click_revoke(self) -> None:
        """First click arms (the button asks to confirm for 5 s); the second revokes."""
        device = self.selected_device()
        if device is None:
            self.status.setText("Select a device first.")
            return
        if self._revoke_armed != device.device_id:
            self._revoke_armed = device.device_id
            self.revoke_button.setText(f"Confirm revoke of {device.name}")
            self._disarm_timer.start(REVOKE_CONFIRM_MS)
            return
        self.disarm_revoke()
        self.revoke(device)

    def _device_selected(self) -> None:
        self.disarm_revoke()
        self._update_buttons()

    def disarm_revoke(self) -> None:
        self._revoke_armed = None
        self._disarm_timer.stop()
        self.revoke_button.setText("Revoke…")

    def revoke(self, device: DeviceRecord) -> asyncio.Task[bool]:
        async def run() -> str:
            await self.api.revoke_device(device.device_id)
            return await self._reload(f"Revoked {device.name}.")

        return self.runner.run(f"Revoking {device.name}…", run(), "Not revoked")

    def dispose(self) -> None:
        self.disarm_revoke()
        self.runner.cancel()
