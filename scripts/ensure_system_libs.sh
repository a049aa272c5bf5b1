#!/usr/bin/env bash
# Makes sure the system libraries Qt (PySide6, with Qt Multimedia) needs are present.
# pulseaudio lets the tests play and record through a private, silent sound server.
# Qt is imported offscreen; if that fails, the Debian packages below are installed
# when we are root, otherwise the exact command to run is printed and we stop.
set -euo pipefail
python="${1:-python3}"
packages=(libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0 libpulse0 libxkbcommon-x11-0 pulseaudio)

qt_ok() {
    QT_QPA_PLATFORM=offscreen "$python" - <<'PY' >/dev/null 2>&1
from PySide6.QtWidgets import QApplication
from PySide6.QtGui import QImage
from PySide6.QtMultimedia import QMediaDevices  # needs libpulse0
app = QApplication([])
PY
}

if qt_ok; then
    exit 0
fi
echo "Qt cannot start: installing the system libraries it needs: ${packages[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "Run as root:  apt-get update && apt-get install -y ${packages[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}"
qt_ok || { echo "Qt still cannot start after installing ${packages[*]}" >&2; exit 1; }
