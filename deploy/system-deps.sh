#!/bin/sh
# Installs the Debian packages that `make demo` (demo) or `make test` (test) needs and that a fresh
# Debian machine with only python3 and make lacks. Installs only what is missing; needs root for that.
set -eu
want="$1"
missing=""

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# A venv needs ensurepip, which Debian splits into python3-venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing="$missing python3-venv"
fi
if [ "$want" = test ]; then
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
    command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
    # tests/system: a loopback in private network namespaces (ip), setpriv and unshare (util-linux).
    command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
    command -v cc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
    command -v pkg-config >/dev/null 2>&1 || missing="$missing pkg-config"
    # The audit tests tamper with the outbox through the sqlite3 command line, as an intruder would.
    command -v sqlite3 >/dev/null 2>&1 || missing="$missing sqlite3"
    # The SM2 signatures of audit exports are checked against OpenSSL's own SM2.
    command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
    have_pkg libsystemd-dev || missing="$missing libsystemd-dev"
    # The operator page is Chinese: without a CJK font chromium's screenshots show empty boxes.
    have_pkg fonts-wqy-microhei || missing="$missing fonts-wqy-microhei"
    # The power-cut test mounts a FUSE file system that drops unsynced writes (mfusepy loads libfuse3).
    have_pkg fuse3 || missing="$missing fuse3"
    # The full-disk test formats a small ext4 image and loop-mounts it.
    command -v mkfs.ext4 >/dev/null 2>&1 || missing="$missing e2fsprogs"
    # systemd-python compiles against the interpreter's headers.
    python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || missing="$missing python3-dev"
fi

[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "fvagent setup: missing Debian packages:$missing" >&2
    echo "fvagent setup: run as root, or: sudo apt-get install -y$missing" >&2
    exit 1
fi
echo "fvagent setup: installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
