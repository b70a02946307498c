#!/bin/bash
# Runs inside the image's root (Rugix Bakery install step): venv, units, config, enable.
# OTA_DAEMON_ROOT (default /) exists to try the step outside Bakery, e.g. in tests.
set -euo pipefail
ROOT="${OTA_DAEMON_ROOT:-/}"

SRC_TAR="${RECIPE_DIR}/files/ota-daemon-src.tar"
if [ ! -f "${SRC_TAR}" ]; then
    echo "[ERROR] ${SRC_TAR} is missing; create it with:" >&2
    echo "  git -C <ota-daemon checkout> archive --format=tar --prefix=ota-daemon-src/ HEAD > ${SRC_TAR}" >&2
    exit 1
fi
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT
tar -xf "${SRC_TAR}" -C "${WORK}"

HUB_PATH="${RECIPE_PARAM_PATH}"
if [ -z "${HUB_PATH}" ] && [ -f "${RUGIX_PROJECT_DIR}/.env" ]; then
    echo ".env" >> "${LAYER_REBUILD_IF_CHANGED}"
    # shellcheck disable=SC1091
    . "${RUGIX_PROJECT_DIR}/.env"
    if [ -n "${NEXIGON_REPOSITORY:-}" ] && [ -n "${NEXIGON_PACKAGE:-}" ]; then
        HUB_PATH="${NEXIGON_REPOSITORY}/${NEXIGON_PACKAGE}/${RECIPE_PARAM_TAG}"
    fi
fi

args=(
    --root "${ROOT}"
    --unit-dir /lib/systemd/system
    --installer "${RECIPE_PARAM_INSTALLER}"
    --hub "${RECIPE_PARAM_HUB}"
    --guard-timeout "${RECIPE_PARAM_GUARD_TIMEOUT}"
)
[ -n "${HUB_PATH}" ] && args+=(--path "${HUB_PATH}")
[ -n "${RECIPE_PARAM_EXTRAS}" ] && args+=(--extras "${RECIPE_PARAM_EXTRAS}")
# Offline builds: wheels for ota-daemon's dependencies (for the image's architecture) here.
[ -d "${RECIPE_DIR}/files/wheels" ] && args+=(--wheelhouse "${RECIPE_DIR}/files/wheels")
# Anything else for install-debian.sh (split at spaces), e.g. "--pip-arg=--index-url=..."
read -ra extra <<< "${RECIPE_PARAM_INSTALL_ARGS}"
args+=("${extra[@]}")

bash "${WORK}/ota-daemon-src/scripts/install-debian.sh" "${args[@]}"

# Rugix state management: the root file system's changes are discarded at boot; the daemon's
# journal must survive reboots *and* slot switches (it is how a trial boot is recognised).
STATE_CONF="${ROOT%/}/etc/rugix/state/ota-daemon.toml"
mkdir -p "$(dirname "${STATE_CONF}")"
{
    echo "# ota-daemon: journal, status, events spool, guard record"
    echo "[[persist]]"
    echo 'directory = "/var/lib/ota-daemon"'
    if [ "${RECIPE_PARAM_PERSIST_CACHE}" = "true" ]; then
        echo ""
        echo "# ota-daemon: partial downloads resume after a reboot"
        echo "[[persist]]"
        echo 'directory = "/var/cache/ota-daemon"'
    fi
} > "${STATE_CONF}"
