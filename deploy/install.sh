#!/bin/sh
# Install fvagent on a terminal (Debian/Ubuntu with systemd), as root, from a checkout or an
# unpacked release bundle (fvagent-VERSION-linux-ARCH.tar.gz: then with no network at all):
#
#   sudo sh deploy/install.sh            # user, venv, config skeleton, unit, udev rules, enable
#   sudo sh deploy/install.sh --start    # ... and start it now (once the config is filled in)
#   sudo sh deploy/install.sh --demo     # ... with the demo extra (fvagent demo on the terminal)
#
# From a bundle, pip installs only from the bundle's wheels/ (--no-index), after checking every
# file against SHA256SUMS; bundle.txt names the Python versions it covers. FVAGENT_PYTHON picks
# the interpreter (default python3), e.g. FVAGENT_PYTHON=python3.11 where python3 is older.
# Run it again after changing [platform] base_url: it rewrites the unit's network allow-list.
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
# no systemctl, no udevadm; used by the tests), FVAGENT_PIP_ARGS (extra pip arguments),
# FVAGENT_PYTHON (the interpreter for the venv), FVAGENT_IP_ALLOW (more addresses the service may
# talk to, space-separated, e.g. the Prometheus server or the LAN of a networked local API).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
prefix=${FVAGENT_PREFIX:-/opt/fvagent}
destdir=${DESTDIR:-}
start=no
skip_venv=no
with_demo=no
python=${FVAGENT_PYTHON:-python3}
for arg in "$@"; do
    case "$arg" in
        --start) start=yes ;;
        --demo) with_demo=yes ;;
        --no-venv) skip_venv=yes ;;          # files only (the tests; an existing venv)
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
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
bundle_value() { sed -n "s/^$1=//p" "$src/bundle.txt"; }
install -d -m 0755 "$destdir$prefix" "$destdir$prefix/docs"
if [ "$skip_venv" = no ] && [ -f "$src/bundle.txt" ]; then
    # A release bundle: its own wheels only, never the network or the host's pip configuration.
    version=$(bundle_value version); arch=$(bundle_value arch); pythons=$(bundle_value pythons)
    say "bundle fvagent $version for linux-$arch covers Python $pythons"
    if [ "$(uname -m)" != "$arch" ]; then
        echo "install.sh: this bundle is for $arch, this machine is $(uname -m): use fvagent-$version-linux-$(uname -m).tar.gz" >&2
        exit 1
    fi
    have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || have=none
    case " $pythons " in
        *" $have "*) ;;
        *) echo "install.sh: $python is Python $have; this bundle covers Python $pythons." >&2
           echo "install.sh: install one of those (docs/operations.md lists the OS releases that have one) and set FVAGENT_PYTHON=python3.X" >&2
           exit 1 ;;
    esac
    if command -v sha256sum >/dev/null; then
        (cd "$src" && sha256sum --check --quiet --strict SHA256SUMS) || {
            echo "install.sh: the bundle's files do not match SHA256SUMS: copy the bundle again" >&2; exit 1; }
    fi
    "$python" -m venv "$destdir$prefix/venv"
    spec="fvagent==$version"
    [ "$with_demo" = yes ] && spec="fvagent[demo]==$version"
    # shellcheck disable=SC2086
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_INDEX_URL= PIP_EXTRA_INDEX_URL= \
        "$destdir$prefix/venv/bin/pip" install --quiet --disable-pip-version-check --no-index \
        --find-links "$src/wheels" ${FVAGENT_PIP_ARGS:-} "$spec"
    say "installed fvagent $version (Python $have) into $prefix/venv from the bundle, offline"
    say "journald fields: not in the bundle (systemd-python builds from source); logs reach the journal via stderr"
elif [ "$skip_venv" = no ]; then
    "$python" -m venv "$destdir$prefix/venv"
    "$destdir$prefix/venv/bin/pip" install --quiet --upgrade pip
    extra="journald"
    if ! pkg-config --exists libsystemd 2>/dev/null; then
        extra=""
        say "libsystemd-dev not found: installing without journald support (logs still reach the journal via stderr)"
    fi
    [ "$with_demo" = yes ] && extra="${extra:+$extra,}demo"
    # shellcheck disable=SC2086
    "$destdir$prefix/venv/bin/pip" install --quiet ${FVAGENT_PIP_ARGS:-} "$src${extra:+[$extra]}"
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

# 4b. the network allow-list: the unit denies every address (IPAddressDeny=any) but these, the
# platform's (from [platform] base_url, resolved now), the DNS servers' and FVAGENT_IP_ALLOW.
config="$destdir/etc/fvagent/fvagent.toml"
platform_host=$("$python" -c 'import sys, tomllib, urllib.parse
doc = tomllib.load(open(sys.argv[1], "rb"))
print(urllib.parse.urlsplit(doc.get("platform", {}).get("base_url", "")).hostname or "")' "$config" 2>/dev/null) || platform_host=""
allow=""
if [ -n "$platform_host" ]; then
    allow=$(getent ahosts "$platform_host" 2>/dev/null | awk '{print $1}' | sort -u | tr '\n' ' ')
    if [ -z "$allow" ]; then
        say "warning: cannot resolve the platform host $platform_host now: the service may not reach it until"
        say "warning: you run install.sh again where it resolves, or list its address in FVAGENT_IP_ALLOW"
    fi
else
    say "warning: no [platform] base_url readable in /etc/fvagent/fvagent.toml: only loopback is allowed; run install.sh again once it is set"
fi
dns=$(awk '$1 == "nameserver" {print $2}' /etc/resolv.conf 2>/dev/null | tr '\n' ' ')
install -d -m 0755 "$destdir/etc/systemd/system/fvagent.service.d"
{
    echo "# Written by deploy/install.sh: the addresses fvagent may talk to (the unit denies all others)."
    echo "# Platform host: ${platform_host:-none}. Rewritten by each install.sh run; local additions: FVAGENT_IP_ALLOW."
    echo "[Service]"
    echo "IPAddressAllow=localhost"
    for address in $allow $dns ${FVAGENT_IP_ALLOW:-}; do echo "IPAddressAllow=$address"; done
} > "$destdir/etc/systemd/system/fvagent.service.d/10-network.conf"
chmod 0644 "$destdir/etc/systemd/system/fvagent.service.d/10-network.conf"
say "allowed network peers: localhost ${allow}${dns}${FVAGENT_IP_ALLOW:-}"

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
