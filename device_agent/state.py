"""What the device agent keeps on disk: its identity and its service configuration.

Nothing else. In particular nothing of a conversation: no chat, no notification
answer, no media; the tests check every file under these folders for canary strings.

Layout of the state folder::

    identity.json     device id, server address, pinned server fingerprint
    device-key.pem    the Ed25519 private key (mode 0600)
    service.json      the Live Support service: installed, enabled, chat services
    agent-status.json while an agent runs: its pid, status, online, whether a session
                      is open (metadata only; removed when the agent stops)

The files are the truth: the admin utility (``device_agent.admin``) changes them and
the running agent picks the change up by itself.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import identity
from protocol.enums import Mode


def default_state_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "livesupport-agent"


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    device_id: str
    server: str
    fingerprint: str
    group_id: str


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The local Live Support service, as the admin utility leaves it."""

    installed: bool = True
    enabled: bool = True
    chat_services: tuple[Mode, ...] = field(default=tuple(Mode))


#: The running agent's status, for the admin utility (see ``AgentState.save_runtime``).
RUNTIME_FILE = "agent-status.json"


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


class AgentState:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def enrolled(self) -> bool:
        return (self.folder / "identity.json").exists() and (
            self.folder / "device-key.pem"
        ).exists()

    def new_key(self) -> Ed25519PrivateKey:
        """A fresh device key, written before enrolment so a crash cannot lose it."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = identity.generate_key()
        _write_private(self.folder / "device-key.pem.pending", identity.private_key_to_pem(key))
        return key

    def save_identity(self, device: DeviceIdentity) -> None:
        pending = self.folder / "device-key.pem.pending"
        if pending.exists():
            pending.replace(self.folder / "device-key.pem")
        _write_private(self.folder / "identity.json", json.dumps(asdict(device)).encode())

    def load(self) -> tuple[DeviceIdentity, Ed25519PrivateKey]:
        data = json.loads((self.folder / "identity.json").read_text())
        key = identity.private_key_from_pem((self.folder / "device-key.pem").read_bytes())
        return DeviceIdentity(**data), key

    def service(self) -> ServiceConfig:
        path = self.folder / "service.json"
        if not path.exists():
            return ServiceConfig()
        data = json.loads(path.read_text())
        return ServiceConfig(
            installed=bool(data.get("installed", True)),
            enabled=bool(data.get("enabled", True)),
            chat_services=tuple(
                Mode(m) for m in data.get("chat_services", [m.value for m in Mode])
            ),
        )

    def save_service(self, config: ServiceConfig) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {
            "installed": config.installed,
            "enabled": config.enabled,
            "chat_services": [m.value for m in config.chat_services],
        }
        _write_private(self.folder / "service.json", json.dumps(data).encode())

    def discard_pending_key(self) -> None:
        """Forget the key of an enrolment that failed (the identity is unchanged)."""
        (self.folder / "device-key.pem.pending").unlink(missing_ok=True)

    def save_runtime(self, data: dict[str, Any]) -> None:
        """Write the running agent's status: metadata only (pid, status, online, whether
        a session is open, when), never anything of a conversation or notification."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.folder / RUNTIME_FILE, json.dumps(data).encode())

    def load_runtime(self) -> dict[str, Any] | None:
        """What the agent last wrote, or None (no agent has run, or it stopped)."""
        try:
            data = json.loads((self.folder / RUNTIME_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def clear_runtime(self) -> None:
        (self.folder / RUNTIME_FILE).unlink(missing_ok=True)


def device_description() -> tuple[str, str, str]:
    """(name, model, os) of this machine, as shown on the console."""
    name = platform.node() or "device"
    model = platform.machine() or ""
    os_name = f"{platform.system()} {platform.release()}".strip()
    return name[:128], model[:128], os_name[:128]
