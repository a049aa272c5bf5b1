#!/usr/bin/env bash
# Makes sure iproute2's `ip` is present: the path-loss tests and benchmark
# (tests/integration/test_path_loss.py, bench/faults/path_loss.py) cut a call's path
# with blackhole routes for loopback addresses of their own. Debian installs it by
# default; installed from the Debian package when we are root and it is missing,
# otherwise the exact command to run is printed.
set -euo pipefail
if command -v ip >/dev/null 2>&1; then
    exit 0
fi
echo "iproute2's ip is missing: installing the Debian package iproute2" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "Run as root:  apt-get update && apt-get install -y iproute2" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends iproute2
command -v ip >/dev/null 2>&1 || { echo "ip still missing after installing iproute2" >&2; exit 1; }
