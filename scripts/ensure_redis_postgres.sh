#!/usr/bin/env bash
# Makes sure redis-server and PostgreSQL's server binaries (initdb, pg_ctl) are present:
# the multi-node test (tests/scale/test_multinode.py) starts its own redis-server and
# its own PostgreSQL cluster on free loopback ports. Installed from the Debian packages
# when we are root and they are missing (one `apt-get update`); otherwise the exact
# command to run is printed. The packages' own services are not used.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "missing for the multi-node test: ${missing[*]}: installing the Debian packages" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "Run as root:  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d 101: the packages' services are not started (the tests start their own).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}"
if [ "$created_policy" -eq 1 ]; then
    rm -f "$policy"
fi
command -v redis-server >/dev/null 2>&1 || { echo "redis-server still missing" >&2; exit 1; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "PostgreSQL's initdb still missing" >&2; exit 1; }
