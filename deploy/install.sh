#!/bin/sh
# Install fvagent on a terminal (Debian/Ubuntu with systemd), as root, from a checkout or an
# unpacked release:
#
#   sudo sh deploy/install.sh            # user, venv, config skeleton, unit, udev rules, enable
#   sudo sh deploy/install.sh --start    # ... and start it now (once the config is filled in)
#
# What it does (docs/operations.md explains each step):
#   1. the system user and group `fvagent` (no login, home /var/lib/fvagent), in dialout/video/plugdev;
#   2. a venv under /opt/fvagent/venv with fvagent installed (with systemd-python for journald
#      when libsystemd-dev is present), and the docs under /opt/fvagent/docs;
#   3. /etc/fvagent/fvagent.toml from deploy/fvagent.example.toml unless one exists (never
#      overwritten), root:fvagent 0640; /etc/credstore for secrets (0700);
#   4. /etc/systemd/system/fvagent.service and /etc/udev/rules.d/70-fvagent.rules;
#   5. systemctl daemon-reload, enable (and --start: start).
#
# Environment: FVAGENT_PREFIX (default /opt/fvagent), DESTDIR (stage into a directory: no user,
# no systemctl, no udevadm; used by the tests), FVAGENT_PIP_ARGS (extra pip arguments, e.g. a
# local wheel house: --no-index --find-links /media/usb/wheels).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
prefix=${FVAGENT_PREFIX:-/opt/fvagent}
destdir=${DESTDIR:-}
start=no
skip_venv=no
for arg in "$@"; do
    case "$arg" in
        --start) start=yes ;;
        --no-venv) skip_venv=yes ;;          # files only (the tests; an existing venv)
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

staged() { [ -n "$destdir" ]; }
say() { echo "fvagent install: $*"; }

if ! staged && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo sh deploy/install.sh)" >&2
    exit 1
fi

# 1. user and group
if staged; then
    owner_args=""
else
    if ! getent group fvagent >/dev/null; then
        groupadd --system fvagent
    fi
    if ! getent passwd fvagent >/dev/null; then
        useradd --system --gid fvagent --home-dir /var/lib/fvagent --no-create-home \
            --shell /usr/sbin/nologin --comment "fvagent verification agent" fvagent
        say "created the system user fvagent"
    fi
    for g in dialout video plugdev; do
        if getent group "$g" >/dev/null; then usermod -a -G "$g" fvagent; fi
    done
    owner_args="-o root -g fvagent"
fi

# 2. venv and docs
install -d -m 0755 "$destdir$prefix" "$destdir$prefix/docs"
if [ "$skip_venv" = no ]; then
    python3 -m venv "$destdir$prefix/venv"
    "$destdir$prefix/venv/bin/pip" install --quiet --upgrade pip
    extra=""
    if pkg-config --exists libsystemd 2>/dev/null; then
        extra="[journald]"
    else
        say "libsystemd-dev not found: installing without journald support (logs still reach the journal via stderr)"
    fi
    # shellcheck disable=SC2086
    "$destdir$prefix/venv/bin/pip" install --quiet ${FVAGENT_PIP_ARGS:-} "$src$extra"
    say "installed fvagent into $prefix/venv"
fi
for doc in "$src"/docs/*.md; do
    [ -f "$doc" ] && install -m 0644 "$doc" "$destdir$prefix/docs/"
done

# 3. configuration skeleton and credential store
# shellcheck disable=SC2086
install -d -m 0750 $owner_args "$destdir/etc/fvagent"
if [ -e "$destdir/etc/fvagent/fvagent.toml" ]; then
    say "keeping the existing /etc/fvagent/fvagent.toml"
else
    # shellcheck disable=SC2086
    install -m 0640 $owner_args "$here/fvagent.example.toml" "$destdir/etc/fvagent/fvagent.toml"
    say "wrote /etc/fvagent/fvagent.toml from the example: fill in [device] and [platform]"
fi
install -d -m 0700 "$destdir/etc/credstore"

# 4. unit and udev rules (the unit's paths follow FVAGENT_PREFIX)
install -d -m 0755 "$destdir/etc/systemd/system" "$destdir/etc/udev/rules.d"
sed "s|/opt/fvagent|$prefix|g" "$here/fvagent.service" > "$destdir/etc/systemd/system/fvagent.service"
chmod 0644 "$destdir/etc/systemd/system/fvagent.service"
install -m 0644 "$here/70-fvagent.rules" "$destdir/etc/udev/rules.d/70-fvagent.rules"

# 5. enable
if staged; then
    say "staged into $destdir (no user, systemctl or udevadm)"
    exit 0
fi
if command -v udevadm >/dev/null; then
    udevadm control --reload || true
    udevadm trigger --subsystem-match=usb --subsystem-match=tty --subsystem-match=video4linux || true
fi
systemctl daemon-reload
systemctl enable fvagent.service
if [ "$start" = yes ]; then
    systemctl restart fvagent.service
    say "started: systemctl status fvagent; fvagent status"
else
    say "enabled. Next: edit /etc/fvagent/fvagent.toml, put secrets in /etc/credstore/fvagent.<key> (0600),"
    say "run: $prefix/venv/bin/fvagent doctor --config /etc/fvagent/fvagent.toml, then: systemctl start fvagent"
fi
