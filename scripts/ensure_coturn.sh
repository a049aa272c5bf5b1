#!/usr/bin/env bash
# Makes sure coturn's `turnserver` is present: the relay tests (tests/relay/) and the
# relay benchmark start a real TURN server. Installed from the Debian package when we
# are root and it is missing; otherwise the exact command to run is printed.
set -euo pipefail
if command -v turnserver >/dev/null 2>&1; then
    exit 0
fi
echo "coturn's turnserver is missing: installing the Debian package coturn" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "Run as root:  apt-get update && apt-get install -y coturn" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The tests start their own turnserver on a free port; the package's service (off
# by default in /etc/default/coturn) is not used.
apt-get install -y -qq --no-install-recommends coturn
command -v turnserver >/dev/null 2>&1 || { echo "turnserver still missing after installing coturn" >&2; exit 1; }
