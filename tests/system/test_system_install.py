"""scripts/install-debian.sh into a throw-away root: venv, units, config, enablement."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ota_daemon.config import build_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-debian.sh"
PREFIX = "/opt/ota-daemon"
UNITS = ("ota-daemon.service", "ota-daemon-guard.service", "ota-daemon-guard.timer")


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the script with this interpreter; its site-packages provide the dependencies (pip
    fetches only the build backend, as configured for this machine)."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    return subprocess.run(
        [
            "bash", str(SCRIPT), "--root", str(root), "--python", sys.executable, "--system-site-packages",
            "--pip-arg=--quiet", *args,
        ],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One install (about 5 s), shared by the checks below."""
    root = tmp_path_factory.mktemp("image-root")
    result = install(root, "--installer", "simulated", "--hub", "static", "--path", "demo/sys/stable", "--guard-timeout", "45m")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_system_install_venv_imports_the_package(root: Path, tmp_path: Path) -> None:
    """The venv's Python imports ota_daemon from the venv (not from the source tree) and runs
    the guard's CLI; the venv's scripts point at PREFIX, not the build root."""
    python = root / PREFIX.lstrip("/") / "bin" / "python"
    code = "import ota_daemon, ota_daemon.config, ota_daemon.guard; print(ota_daemon.__file__)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.strip().startswith(str(root / PREFIX.lstrip("/")))
    helped = subprocess.run([str(python), "-m", "ota_daemon.guard", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "ota-daemon-guard" in helped.stdout
    for script in ("ota-daemon", "ota-daemon-guard"):
        first = (root / PREFIX.lstrip("/") / "bin" / script).read_text().splitlines()[0]
        assert first == f"#!{PREFIX}/bin/python"
    assert str((root / "usr/local/bin/ota-daemon").readlink()) == f"{PREFIX}/bin/ota-daemon"


def test_system_install_units(root: Path) -> None:
    """The three units land in /etc/systemd/system with ExecStart in the venv and the
    timer's OnBootSec set to --guard-timeout; the service and the timer are enabled."""
    unit_dir = root / "etc/systemd/system"
    texts = {name: (unit_dir / name).read_text() for name in UNITS}
    assert f"ExecStart={PREFIX}/bin/ota-daemon run\n" in texts["ota-daemon.service"]
    assert f"ExecStart={PREFIX}/bin/ota-daemon-guard\n" in texts["ota-daemon-guard.service"]
    assert "\nOnBootSec=45m\n" in texts["ota-daemon-guard.timer"]
    assert all("/usr/bin/ota-daemon" not in text for text in texts.values())
    wants = {
        root / "etc/systemd/system/multi-user.target.wants/ota-daemon.service": "/etc/systemd/system/ota-daemon.service",
        root / "etc/systemd/system/timers.target.wants/ota-daemon-guard.timer": "/etc/systemd/system/ota-daemon-guard.timer",
    }
    assert {link: str(link.readlink()) for link in wants} == wants


def test_system_install_config_is_valid_for_the_daemon(root: Path) -> None:
    """The config written for a new install carries the chosen installer, hub, path and
    guard timeout, and the daemon's own schema accepts it."""
    path = root / "etc/ota-daemon/config.toml"
    data = tomllib.loads(path.read_text())
    config = build_config(data, source=str(path), env={})
    assert (config.installer.kind, config.hub.kind, config.hub.path, config.guard.timeout) == (
        "simulated", "static", "demo/sys/stable", 2700.0
    )
    assert str(config.cache_dir) == "/var/cache/ota-daemon"
    assert (root / "etc/ota-daemon/hooks.d").is_dir()


@pytest.mark.parametrize("kind", ["rugix", "rauc", "swupdate", "simulated"])
def test_system_install_template_valid_for_every_installer(kind: str) -> None:
    """images/config.toml, rendered as the installers render it (no path given), is a valid
    daemon configuration for each installer kind."""
    text = (REPO / "images/config.toml").read_text()
    text = text.replace("@HUB_KIND@", "nexigon").replace("@INSTALLER_KIND@", kind).replace("@GUARD_TIMEOUT@", "30m")
    text = text.replace('path = "@HUB_PATH@"', '# path = "repository/package/tag"')
    assert "@" not in text.replace("# ", "")
    config = build_config(tomllib.loads(text), source="images/config.toml", env={})
    assert (config.installer.kind, config.hub.path, config.guard.timeout) == (kind, None, 1800.0)


def test_system_install_again_keeps_the_config(root: Path) -> None:
    """A second run (an upgrade) replaces the package and the units but never an existing
    configuration file."""
    path = root / "etc/ota-daemon/config.toml"
    edited = path.read_text() + '\n[log]\nlevel = "debug"\n'
    path.write_text(edited)
    unit = root / "etc/systemd/system/ota-daemon.service"
    unit.write_text("# stale\n")
    result = install(root, "--installer", "rugix")
    assert result.returncode == 0, result.stderr[-3000:]
    assert path.read_text() == edited
    assert "kept the existing" in result.stderr
    assert unit.read_text().startswith("# ota-daemon: keeps this device up to date")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--installer", "raucc"], "--installer 'raucc': expected rugix, rauc, swupdate or simulated"),
        (["--path", "only/two"], "--path 'only/two': expected repository/package/tag"),
        (["--guard-timeout", "soon"], "--guard-timeout 'soon': expected a duration"),
        (["--bogus"], "unknown option '--bogus'"),
    ],
)
def test_system_install_rejects_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    """Bad options stop the script before anything is written, naming the option."""
    result = install(tmp_path / "root", *args)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "root" / "opt").exists()
