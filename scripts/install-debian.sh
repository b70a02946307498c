#!/bin/bash
# Install ota-daemon from this source tree on a Debian-based system or into an image root.
#
#   scripts/install-debian.sh [options]
#
# What it does (ROOT is --root, default /):
#   1. a virtualenv at ROOT/PREFIX (default /opt/ota-daemon) with ota-daemon installed from
#      the source tree (built from a temporary copy: the tree itself is left untouched);
#   2. the units ota-daemon.service, ota-daemon-guard.service and ota-daemon-guard.timer
#      into ROOT/UNIT_DIR (default /etc/systemd/system), ExecStart pointing into the venv,
#      OnBootSec of the timer set to --guard-timeout;
#   3. ROOT/etc/ota-daemon/config.toml from images/config.toml — only when there is none:
#      an existing configuration is never overwritten — and ROOT/etc/ota-daemon/hooks.d/;
#   4. links ROOT/usr/local/bin/ota-daemon{,-guard} for the operator;
#   5. enables ota-daemon.service and ota-daemon-guard.timer: `systemctl enable` when ROOT
#      is /, `systemctl --root=ROOT enable` (or the same symlinks by hand) otherwise.
#
# With --root other than /, the venv is built with this machine's Python and its scripts are
# rewritten to point at PREFIX; it runs on the target only if the target has the same Python
# at the same path (same Debian release and architecture). For other targets run this script
# inside the target (chroot, Rugix Bakery step, qemu-user) with --root /.
#
# Needs: python3 >= 3.11 with venv (Debian: apt-get install python3 python3-venv); pip
# reaches PyPI for the dependencies unless --wheelhouse DIR (offline) or
# --system-site-packages with the dependencies already installed.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: install-debian.sh [options]
  --root DIR              install into this root (default /)
  --prefix DIR            virtualenv location inside ROOT (default /opt/ota-daemon)
  --unit-dir DIR          unit directory inside ROOT (default /etc/systemd/system;
                          images use /lib/systemd/system)
  --source DIR            ota-daemon source tree (default: this script's tree)
  --installer KIND        installer.kind for a new config: rugix|rauc|swupdate|simulated (default rugix)
  --hub KIND              hub.kind for a new config: nexigon|static (default nexigon)
  --path REPO/PKG/TAG     hub.path for a new config (default: unset)
  --guard-timeout DUR     guard.timeout and the timer's OnBootSec, e.g. 30m, 1h (default 30m)
  --extras LIST           pip extras, e.g. rauc (D-Bus for the RAUC installer)
  --python PY             interpreter for the venv (default python3)
  --system-site-packages  let the venv see the system's site-packages
  --wheelhouse DIR        install offline from wheels in DIR (pip --no-index --find-links); DIR
                          needs setuptools and wheel too (ota-daemon is built from source):
                          pip wheel -w DIR setuptools wheel 'SRC[EXTRAS]' (sdnotify has no wheel
                          on PyPI, so pip download --only-binary cannot fill DIR)
  --pip-arg ARG           extra argument for pip install (repeatable)
  --no-enable             do not enable the units
  -h, --help              this text
EOF
}

die() { echo "install-debian.sh: error: $*" >&2; exit 1; }
note() { echo "install-debian.sh: $*" >&2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT=/
PREFIX=/opt/ota-daemon
UNIT_DIR=/etc/systemd/system
SOURCE="$(dirname "$HERE")"
INSTALLER=rugix
HUB=nexigon
HUB_PATH=""
GUARD_TIMEOUT=30m
EXTRAS=""
PY=python3
SYSTEM_SITE=0
WHEELHOUSE=""
PIP_ARGS=()
ENABLE=1

need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;; esac   # --opt=value
    case "$1" in
        --root) need "$@"; ROOT="$2"; shift 2 ;;
        --prefix) need "$@"; PREFIX="$2"; shift 2 ;;
        --unit-dir) need "$@"; UNIT_DIR="$2"; shift 2 ;;
        --source) need "$@"; SOURCE="$2"; shift 2 ;;
        --installer) need "$@"; INSTALLER="$2"; shift 2 ;;
        --hub) need "$@"; HUB="$2"; shift 2 ;;
        --path) need "$@"; HUB_PATH="$2"; shift 2 ;;
        --guard-timeout) need "$@"; GUARD_TIMEOUT="$2"; shift 2 ;;
        --extras) need "$@"; EXTRAS="$2"; shift 2 ;;
        --python) need "$@"; PY="$2"; shift 2 ;;
        --system-site-packages) SYSTEM_SITE=1; shift ;;
        --wheelhouse) need "$@"; WHEELHOUSE="$2"; shift 2 ;;
        --pip-arg) need "$@"; PIP_ARGS+=("$2"); shift 2 ;;
        --no-enable) ENABLE=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

case "$INSTALLER" in rugix|rauc|swupdate|simulated) ;; *) die "--installer '$INSTALLER': expected rugix, rauc, swupdate or simulated" ;; esac
case "$HUB" in nexigon|static) ;; *) die "--hub '$HUB': expected nexigon or static" ;; esac
case "$PREFIX" in /*) ;; *) die "--prefix '$PREFIX': expected an absolute path" ;; esac
case "$UNIT_DIR" in /*) ;; *) die "--unit-dir '$UNIT_DIR': expected an absolute path" ;; esac
[[ "$GUARD_TIMEOUT" =~ ^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w)?)+$ ]] \
    || die "--guard-timeout '$GUARD_TIMEOUT': expected a duration such as 30m, 1h or 1800"
[[ -z "$HUB_PATH" || "$HUB_PATH" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$ ]] \
    || die "--path '$HUB_PATH': expected repository/package/tag"
[ -f "$SOURCE/pyproject.toml" ] && [ -d "$SOURCE/ota_daemon" ] \
    || die "--source '$SOURCE': expected the ota-daemon tree (pyproject.toml and ota_daemon/)"
for unit in ota-daemon.service ota-daemon-guard.service ota-daemon-guard.timer; do
    [ -f "$SOURCE/systemd/$unit" ] || die "$SOURCE/systemd/$unit: missing"
done
[ -f "$SOURCE/images/config.toml" ] || die "$SOURCE/images/config.toml: missing"
command -v "$PY" >/dev/null || die "--python '$PY': not found (Debian: apt-get install python3 python3-venv)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PY is Python $("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); ota-daemon needs 3.11 or newer"

ROOT="$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)"
R="${ROOT%/}"                      # "" when ROOT is /
VENV="$R$PREFIX"

# ---------------------------------------------------------------- 1. the virtualenv
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
mkdir -p "$BUILD/src"
cp "$SOURCE/pyproject.toml" "$BUILD/src/"
(cd "$SOURCE" && tar --exclude='__pycache__' --exclude='*.pyc' -cf - ota_daemon) | tar -xf - -C "$BUILD/src"
for f in README.md LICENSE LICENSE-MIT LICENSE-APACHE; do
    [ -f "$SOURCE/$f" ] && cp "$SOURCE/$f" "$BUILD/src/"
done
[ -f "$BUILD/src/README.md" ] || echo "ota-daemon" > "$BUILD/src/README.md"

if [ ! -x "$VENV/bin/python" ]; then
    venv_args=()
    [ "$SYSTEM_SITE" = 1 ] && venv_args+=(--system-site-packages)
    note "creating the virtualenv $VENV"
    "$PY" -m venv "${venv_args[@]}" "$VENV" \
        || die "'$PY -m venv' failed (Debian: apt-get install python3-venv)"
else
    note "updating the virtualenv $VENV"
fi
pip_args=(--disable-pip-version-check --no-cache-dir)
[ -n "$WHEELHOUSE" ] && pip_args+=(--no-index --find-links "$WHEELHOUSE")
target="$BUILD/src"
[ -n "$EXTRAS" ] && target="$BUILD/src[$EXTRAS]"
"$VENV/bin/python" -m pip install "${pip_args[@]}" "${PIP_ARGS[@]}" "$target" \
    || die "pip install of ota-daemon into $VENV failed"

if [ -n "$R" ]; then
    # Scripts carry the build-time path in their #! line: point them at PREFIX.
    for f in "$VENV"/bin/*; do
        [ -f "$f" ] && [ ! -L "$f" ] || continue
        if head -c 2 "$f" | grep -q '^#!'; then
            sed -i "s#$VENV/#$PREFIX/#g; s#$VENV\$#$PREFIX#g" "$f"
        fi
    done
    sed -i "s#$VENV#$PREFIX#g" "$VENV/pyvenv.cfg"
    home="$(sed -n 's/^home *= *//p' "$VENV/pyvenv.cfg")"
    [ -d "$R$home" ] || note "warning: $ROOT has no $home (the venv's Python); the venv runs only where that interpreter exists (see --root in the header)"
fi

# ---------------------------------------------------------------- 2. units
mkdir -p "$R$UNIT_DIR"
for unit in ota-daemon.service ota-daemon-guard.service ota-daemon-guard.timer; do
    sed -e "s#/usr/bin/ota-daemon#$PREFIX/bin/ota-daemon#g" \
        -e "s#^OnBootSec=30min\$#OnBootSec=$GUARD_TIMEOUT#" \
        "$SOURCE/systemd/$unit" > "$R$UNIT_DIR/$unit.tmp"
    chmod 0644 "$R$UNIT_DIR/$unit.tmp"
    mv "$R$UNIT_DIR/$unit.tmp" "$R$UNIT_DIR/$unit"
done
note "units installed in $R$UNIT_DIR"

# ---------------------------------------------------------------- 3. configuration
CONF_DIR="$R/etc/ota-daemon"
mkdir -p "$CONF_DIR/hooks.d"
chmod 0755 "$CONF_DIR" "$CONF_DIR/hooks.d"
if [ -e "$CONF_DIR/config.toml" ]; then
    note "kept the existing $CONF_DIR/config.toml (never overwritten)"
else
    path_line="path = \"$HUB_PATH\""
    [ -n "$HUB_PATH" ] || path_line='# path = "repository/package/tag"'
    sed -e "s#@HUB_KIND@#$HUB#" -e "s#@INSTALLER_KIND@#$INSTALLER#" -e "s#@GUARD_TIMEOUT@#$GUARD_TIMEOUT#" \
        -e "s|^path = \"@HUB_PATH@\"\$|$path_line|" \
        "$SOURCE/images/config.toml" > "$CONF_DIR/config.toml.tmp"
    chmod 0644 "$CONF_DIR/config.toml.tmp"
    mv "$CONF_DIR/config.toml.tmp" "$CONF_DIR/config.toml"
    note "wrote $CONF_DIR/config.toml (installer.kind = $INSTALLER, hub.kind = $HUB)"
fi

# ---------------------------------------------------------------- 4. commands on PATH
mkdir -p "$R/usr/local/bin"
ln -sfn "$PREFIX/bin/ota-daemon" "$R/usr/local/bin/ota-daemon"
ln -sfn "$PREFIX/bin/ota-daemon-guard" "$R/usr/local/bin/ota-daemon-guard"

# ---------------------------------------------------------------- 5. enable
if [ "$ENABLE" = 1 ]; then
    if [ -z "$R" ]; then
        [ -d /run/systemd/system ] && systemctl daemon-reload
        systemctl enable ota-daemon.service ota-daemon-guard.timer
        note "enabled; start now with: systemctl start ota-daemon.service ota-daemon-guard.timer"
    elif command -v systemctl >/dev/null && systemctl --root="$ROOT" enable ota-daemon.service ota-daemon-guard.timer 2>/dev/null; then
        note "enabled in $ROOT (systemctl --root)"
    else
        mkdir -p "$R/etc/systemd/system/multi-user.target.wants" "$R/etc/systemd/system/timers.target.wants"
        ln -sfn "$UNIT_DIR/ota-daemon.service" "$R/etc/systemd/system/multi-user.target.wants/ota-daemon.service"
        ln -sfn "$UNIT_DIR/ota-daemon-guard.timer" "$R/etc/systemd/system/timers.target.wants/ota-daemon-guard.timer"
        note "enabled in $ROOT (wants symlinks)"
    fi
else
    note "not enabled; to enable: systemctl${R:+ --root=$ROOT} enable ota-daemon.service ota-daemon-guard.timer"
fi
note "done: $PREFIX/bin/ota-daemon, config $R/etc/ota-daemon/config.toml"
