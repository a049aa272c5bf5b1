"""The technician's profile: the name and photo device users see when called."""

from __future__ import annotations

import asyncio
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from peer.signaling import RequestError
from tech_console.admin_api import AdminApi, Profile
from tech_console.ui.session_window import plain

#: The photo is shown this big in the device's prompt.
PHOTO_PX = 96


class ProfileDialog(QDialog):
    """Loads the profile when opened; Save sends the name and, if changed, the photo.
    The server checks the photo (PNG or JPEG, small enough for the invite) and its
    refusal is shown here."""

    def __init__(self, api: AdminApi, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.api = api
        self.setWindowTitle("Your profile")
        self.setObjectName("profileDialog")
        self.display_name = QLineEdit(self)
        self.display_name.setObjectName("displayName")
        self.display_name.setAccessibleName("Display name")
        self.display_name.setMaxLength(128)
        self.photo_label = QLabel(self)
        self.photo_label.setObjectName("photo")
        self.photo_label.setFixedSize(PHOTO_PX, PHOTO_PX)
        self.photo_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.photo_label.setAccessibleName("Photo")
        self.choose_button = QPushButton("Choose photo…", self)
        self.choose_button.clicked.connect(self._choose)
        self.remove_button = QPushButton("Remove photo", self)
        self.remove_button.clicked.connect(lambda: self.set_photo(b""))
        self.status = plain(parent=self)
        self.status.setObjectName("profileStatus")
        self.status.setWordWrap(True)
        self.save_button = QPushButton("Save", self)
        self.save_button.setObjectName("save")
        self.save_button.clicked.connect(self.submit)
        photo_row = QHBoxLayout()
        photo_row.addWidget(self.photo_label)
        photo_row.addWidget(self.choose_button)
        photo_row.addWidget(self.remove_button)
        form = QFormLayout()
        form.addRow("Display name", self.display_name)
        form.addRow("Photo", photo_row)
        layout = QVBoxLayout(self)
        layout.addWidget(plain("Device users see this name and photo when you call.", self))
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(self.save_button)
        self.profile: Profile | None = None
        self._photo: bytes | None = None  # None: unchanged
        self._file_dialog: QFileDialog | None = None
        self._task: asyncio.Task[None] | None = None

    def load(self) -> asyncio.Task[None]:
        self.status.setText("Loading…")
        self.save_button.setEnabled(False)
        self._task = asyncio.ensure_future(self._load())
        return self._task

    async def _load(self) -> None:
        try:
            profile = await self.api.me()
        except RequestError as exc:
            self.status.setText(f"Could not load your profile: {exc}")
            return
        self.profile = profile
        self.display_name.setText(profile.display_name)
        self._show_photo(profile.photo)
        self._photo = None
        self.status.setText(f"{profile.username} · {profile.role.value}")
        self.save_button.setEnabled(True)

    def _show_photo(self, photo: bytes) -> None:
        pixmap = QPixmap()
        if photo and pixmap.loadFromData(photo):
            self.photo_label.setPixmap(
                pixmap.scaled(
                    PHOTO_PX,
                    PHOTO_PX,
                    Qt.AspectRatioMode.KeepAspectRatio,
                    Qt.TransformationMode.SmoothTransformation,
                )
            )
        else:
            self.photo_label.clear()
            self.photo_label.setText("No photo")

    def set_photo(self, photo: bytes) -> None:
        """Use these image bytes (b"": no photo) from the next Save."""
        self._photo = photo
        self._show_photo(photo)

    def _choose(self) -> None:
        # open(), not getOpenFileName(): no nested event loop under asyncio.
        dialog = QFileDialog(
            self, "Choose a photo", str(Path.home()), "Images (*.png *.jpg *.jpeg)"
        )
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
        dialog.fileSelected.connect(self.use_file)
        self._file_dialog = dialog
        dialog.open()

    def use_file(self, path: str) -> None:
        try:
            self.set_photo(Path(path).read_bytes())
        except OSError as exc:
            self.status.setText(f"Could not read {path}: {exc.strerror}")

    def submit(self) -> None:
        name = self.display_name.text().strip()
        if not name:
            self.status.setText("Enter the name device users should see.")
            return
        if self._task is not None and not self._task.done():
            return
        self.status.setText("Saving…")
        self.save_button.setEnabled(False)
        self._task = asyncio.ensure_future(self._save(name))

    async def _save(self, name: str) -> None:
        try:
            profile = await self.api.update_profile(display_name=name, photo=self._photo)
        except RequestError as exc:
            self.status.setText(f"Not saved: {exc}")
            self.save_button.setEnabled(True)
            return
        self.profile = profile
        self._photo = None
        self.status.setText("Saved. Device users see it from your next call.")
        self.save_button.setEnabled(True)
