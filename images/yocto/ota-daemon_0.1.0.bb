SUMMARY = "ota-daemon: A/B system update daemon with a rollback guard"
DESCRIPTION = "Keeps the device up to date from a Nexigon or static hub through Rugix Ctrl, \
RAUC or SWUpdate; reboots, health-checks, commits or rolls back, and reports status."
LICENSE = "MIT | Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302 \
                    file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Where the source comes from. Pin SRCREV for reproducible images; for a local checkout use
# externalsrc instead (see images/README.md).
OTA_DAEMON_GIT ?= "git://github.com/example/ota-daemon.git;protocol=https;branch=main"
SRC_URI = "${OTA_DAEMON_GIT}"
SRCREV ?= "${AUTOREV}"
PV = "0.1.0+git"
S = "${WORKDIR}/git"

# pyproject.toml: setuptools.build_meta, Python >= 3.11 (tomllib) -> scarthgap (5.0) or newer.
inherit python_setuptools_build_meta systemd

# The configuration baked into the image (/etc/ota-daemon/config.toml, a CONFFILE).
OTA_DAEMON_INSTALLER ??= "rauc"
OTA_DAEMON_HUB ??= "nexigon"
OTA_DAEMON_PATH ??= ""
# guard.timeout and OnBootSec of ota-daemon-guard.timer ("30m" means the same to both)
OTA_DAEMON_GUARD_TIMEOUT ??= "30m"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    for unit in ota-daemon.service ota-daemon-guard.service ota-daemon-guard.timer; do
        sed -e 's#/usr/bin/ota-daemon#${bindir}/ota-daemon#g' \
            -e 's#^OnBootSec=30min$#OnBootSec=${OTA_DAEMON_GUARD_TIMEOUT}#' \
            ${S}/systemd/$unit > ${D}${systemd_system_unitdir}/$unit
        chmod 0644 ${D}${systemd_system_unitdir}/$unit
    done

    install -d -m 0755 ${D}${sysconfdir}/ota-daemon ${D}${sysconfdir}/ota-daemon/hooks.d
    if [ -n "${OTA_DAEMON_PATH}" ]; then
        path_line='path = "${OTA_DAEMON_PATH}"'
    else
        path_line='# path = "repository/package/tag"'
    fi
    sed -e 's#@HUB_KIND@#${OTA_DAEMON_HUB}#' \
        -e 's#@INSTALLER_KIND@#${OTA_DAEMON_INSTALLER}#' \
        -e 's#@GUARD_TIMEOUT@#${OTA_DAEMON_GUARD_TIMEOUT}#' \
        -e "s|^path = \"@HUB_PATH@\"\$|$path_line|" \
        ${S}/images/config.toml > ${D}${sysconfdir}/ota-daemon/config.toml
    chmod 0644 ${D}${sysconfdir}/ota-daemon/config.toml
}

# The guard service has no [Install] section: the timer starts it.
SYSTEMD_SERVICE:${PN} = "ota-daemon.service ota-daemon-guard.timer"
SYSTEMD_AUTO_ENABLE = "enable"

FILES:${PN} += "${systemd_system_unitdir}/ota-daemon-guard.service ${sysconfdir}/ota-daemon"
CONFFILES:${PN} = "${sysconfdir}/ota-daemon/config.toml"

# Third-party modules: httpx, pydantic, structlog, tenacity and semver are in meta-python;
# pydantic-settings, sdnotify and dbus-fast may need recipes of your own (devtool add
# https://files.pythonhosted.org/... or pipoe). python3-modules is the whole standard
# library; replace it with the split packages you verified if image size matters.
RDEPENDS:${PN} = " \
    python3-core \
    python3-modules \
    python3-httpx \
    python3-pydantic \
    python3-pydantic-settings \
    python3-structlog \
    python3-tenacity \
    python3-sdnotify \
    python3-semver \
    ${@'python3-dbus-fast' if d.getVar('OTA_DAEMON_INSTALLER') == 'rauc' else ''} \
    ${@'libubootenv-bin' if d.getVar('OTA_DAEMON_INSTALLER') == 'swupdate' else ''} \
"
