#!/bin/sh
# Remove fvagent from a terminal, as root. Keeps the outbox (/var/lib/fvagent: every verification
# not yet delivered, and its key) and the configuration (/etc/fvagent) unless asked:
#
#   sudo sh deploy/uninstall.sh                  # service, unit, udev rules, venv; keeps data and config
#   sudo sh deploy/uninstall.sh --purge --yes    # also deletes the outbox, the config, the user
#
# --purge without --yes refuses when the outbox still holds records that were not delivered.
# Environment: FVAGENT_PREFIX (default /opt/fvagent), DESTDIR (staged install, as install.sh).
set -eu

prefix=${FVAGENT_PREFIX:-/opt/fvagent}
destdir=${DESTDIR:-}
purge=no
yes=no
for arg in "$@"; do
    case "$arg" in
        --purge) purge=yes ;;
        --yes) yes=yes ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "uninstall.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done
staged() { [ -n "$destdir" ]; }
say() { echo "fvagent uninstall: $*"; }

if ! staged && [ "$(id -u)" != 0 ]; then
    echo "uninstall.sh: run as root" >&2
    exit 1
fi

state="$destdir/var/lib/fvagent"
if [ "$purge" = yes ] && [ "$yes" = no ] && [ -d "$state" ]; then
    # Count what has not been delivered before deleting anything.
    unsent=unknown
    if [ -x "$destdir$prefix/venv/bin/fvagent" ]; then
        unsent=$("$destdir$prefix/venv/bin/fvagent" queue stats --json --config "$destdir/etc/fvagent/fvagent.toml" 2>/dev/null \
            | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(int(d.get(k,0)) for k in ("pending","sending","held","rejected")))' \
            2>/dev/null) || unsent=unknown
    fi
    if [ "$unsent" != 0 ]; then
        echo "uninstall.sh: the outbox holds $unsent record(s) not delivered (or could not be read)." >&2
        echo "uninstall.sh: deliver or export them first (fvagent status; fvagent queue export), or add --yes" >&2
        exit 1
    fi
fi

if ! staged; then
    systemctl disable --now fvagent.service 2>/dev/null || true
fi
rm -f "$destdir/etc/systemd/system/fvagent.service" "$destdir/etc/udev/rules.d/70-fvagent.rules"
rm -rf "$destdir/etc/systemd/system/fvagent.service.d"
rm -rf "$destdir$prefix"
if ! staged; then
    systemctl daemon-reload || true
    if command -v udevadm >/dev/null; then udevadm control --reload || true; fi
fi
say "removed the service, the unit, the udev rules and $prefix"

if [ "$purge" = yes ]; then
    rm -rf "$state" "$destdir/etc/fvagent"
    rm -f "$destdir"/etc/credstore/fvagent.*
    if ! staged && getent passwd fvagent >/dev/null; then
        userdel fvagent || true
    fi
    say "purged the outbox, the configuration and the credentials"
else
    say "kept the outbox ($state) and the configuration (/etc/fvagent); --purge --yes deletes them"
fi
