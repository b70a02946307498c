"""The image recipes: the Rugix Bakery step run into a throw-away root, the Yocto recipe's
install function run outside bitbake, and both checked against the units and the config."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from ota_daemon.config import build_config

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "images" / "rugix-bakery" / "recipes" / "ota-daemon"
BB = REPO / "images" / "yocto" / "ota-daemon_0.1.0.bb"
UNITS = ("ota-daemon.service", "ota-daemon-guard.service", "ota-daemon-guard.timer")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTA_DAEMON_", "RECIPE_", "RUGIX_"))}


# =========================================================================== Rugix Bakery


def source_tar(path: Path) -> Path:
    """What ``git archive --prefix=ota-daemon-src/ HEAD`` gives, for the files the step uses."""
    def skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if "__pycache__" in info.name or info.name.endswith(".pyc") else info

    with tarfile.open(path, "w") as tar:
        for name in ("pyproject.toml", "README.md", "ota_daemon", "systemd", "images/config.toml", "scripts/install-debian.sh"):
            if (REPO / name).exists():
                tar.add(REPO / name, arcname=f"ota-daemon-src/{name}", filter=skip)
    return path


def recipe_params() -> dict[str, str]:
    params = tomllib.loads((RECIPE / "recipe.toml").read_text())["parameters"]
    return {name: str(spec["default"]) for name, spec in params.items()}


def test_system_rugix_recipe_parameters_are_declared() -> None:
    """Every RECIPE_PARAM_* the step reads is declared (with a default) in recipe.toml, and
    the packages step installs Python with venv."""
    used = set(re.findall(r"RECIPE_PARAM_([A-Z_]+)", (RECIPE / "steps" / "10-install.sh").read_text()))
    assert used == {name.upper() for name in recipe_params()}
    assert (RECIPE / "steps" / "00-packages").read_text().split() == ["python3", "python3-venv"]
    assert os.access(RECIPE / "steps" / "10-install.sh", os.X_OK)


def test_system_rugix_step_installs_into_a_root(tmp_path: Path) -> None:
    """The Bakery install step, run as Bakery would (RECIPE_DIR, RECIPE_PARAM_* defaults, the
    project's .env) into a throw-away root: units in /lib/systemd/system and enabled, a
    config for rugix + nexigon whose path comes from NEXIGON_REPOSITORY/NEXIGON_PACKAGE and
    the tag, valid for the daemon, and the state directory persisted by Rugix."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    recipe = tmp_path / "recipe"
    shutil.copytree(RECIPE, recipe)
    source_tar(recipe / "files" / "ota-daemon-src.tar")
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env").write_text("NEXIGON_REPOSITORY=fleet\nNEXIGON_PACKAGE=gateway\n")
    rebuild = tmp_path / "rebuild-if-changed"
    root = tmp_path / "root"
    env = clean_env() | {f"RECIPE_PARAM_{k.upper()}": v for k, v in recipe_params().items()}
    env |= {
        "RECIPE_DIR": str(recipe),
        "RUGIX_PROJECT_DIR": str(project),
        "LAYER_REBUILD_IF_CHANGED": str(rebuild),
        "OTA_DAEMON_ROOT": str(root),
        "RECIPE_PARAM_INSTALL_ARGS": f"--python {sys.executable} --system-site-packages --pip-arg=--quiet",
    }
    result = subprocess.run([str(recipe / "steps" / "10-install.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    unit_dir = root / "lib/systemd/system"
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted(UNITS)
    assert "ExecStart=/opt/ota-daemon/bin/ota-daemon run\n" in (unit_dir / "ota-daemon.service").read_text()
    link = root / "etc/systemd/system/multi-user.target.wants/ota-daemon.service"
    assert str(link.readlink()) == "/lib/systemd/system/ota-daemon.service"
    data = tomllib.loads((root / "etc/ota-daemon/config.toml").read_text())
    config = build_config(data, source="image config", env={})
    assert (config.installer.kind, config.hub.kind, config.hub.path, config.guard.timeout) == (
        "rugix", "nexigon", "fleet/gateway/stable", 1800.0
    )
    state = tomllib.loads((root / "etc/rugix/state/ota-daemon.toml").read_text())
    assert state == {"persist": [{"directory": "/var/lib/ota-daemon"}]}
    assert rebuild.read_text().split() == [".env"]


def test_system_rugix_step_names_the_missing_source(tmp_path: Path) -> None:
    """Without files/ota-daemon-src.tar the step fails at once and says how to make it."""
    recipe = tmp_path / "recipe"
    shutil.copytree(RECIPE, recipe)
    env = clean_env() | {f"RECIPE_PARAM_{k.upper()}": v for k, v in recipe_params().items()}
    env |= {"RECIPE_DIR": str(recipe), "OTA_DAEMON_ROOT": str(tmp_path / "root")}
    result = subprocess.run([str(recipe / "steps" / "10-install.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "ota-daemon-src.tar is missing" in result.stderr and "git -C" in result.stderr
    assert not (tmp_path / "root").exists()


# =========================================================================== Yocto


def bb_defaults() -> dict[str, str]:
    return dict(re.findall(r'^(OTA_DAEMON_[A-Z_]+) \?\?= "(.*)"$', BB.read_text(), flags=re.MULTILINE))


def run_do_install(tmp_path: Path, **overrides: str) -> Path:
    """The recipe's do_install:append, with bitbake's variables expanded as bitbake would."""
    text = BB.read_text()
    body = re.search(r"^do_install:append\(\) \{\n(.*?)^\}", text, flags=re.MULTILINE | re.DOTALL)
    assert body is not None
    d = tmp_path / "image"
    values = bb_defaults() | overrides | {
        "S": str(REPO), "D": str(d), "systemd_system_unitdir": "/usr/lib/systemd/system",
        "bindir": "/usr/bin", "sysconfdir": "/etc",
    }

    def expand(match: re.Match[str]) -> str:
        return values[match.group(1)]

    script = re.sub(r"\$\{([A-Za-z_]+)\}", expand, body.group(1))
    subprocess.run(["bash", "-euc", script], check=True, capture_output=True, text=True)
    return d


@pytest.mark.parametrize(("path", "expected"), [("", None), ("fleet/gateway/stable", "fleet/gateway/stable")])
def test_system_yocto_install_function(tmp_path: Path, path: str, expected: str | None) -> None:
    """The Yocto recipe installs the three units (ExecStart in ${bindir}, OnBootSec from
    OTA_DAEMON_GUARD_TIMEOUT) and a config the daemon accepts with the recipe's installer,
    hub, path and guard timeout."""
    d = run_do_install(tmp_path, OTA_DAEMON_PATH=path, OTA_DAEMON_GUARD_TIMEOUT="20m")
    unit_dir = d / "usr/lib/systemd/system"
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted(UNITS)
    assert "ExecStart=/usr/bin/ota-daemon run\n" in (unit_dir / "ota-daemon.service").read_text()
    assert "\nOnBootSec=20m\n" in (unit_dir / "ota-daemon-guard.timer").read_text()
    config = build_config(tomllib.loads((d / "etc/ota-daemon/config.toml").read_text()), source="yocto", env={})
    assert (config.installer.kind, config.hub.kind, config.hub.path, config.guard.timeout) == ("rauc", "nexigon", expected, 1200.0)
    assert (d / "etc/ota-daemon/hooks.d").is_dir()


def test_system_yocto_recipe_declares_the_units() -> None:
    """SYSTEMD_SERVICE enables the daemon and the timer (each with an [Install] section); the
    guard service (started by the timer) is packaged through FILES; the config is a CONFFILE."""
    text = BB.read_text()
    services = re.search(r'^SYSTEMD_SERVICE:\$\{PN\} = "(.*)"$', text, flags=re.MULTILINE)
    assert services is not None and services.group(1).split() == ["ota-daemon.service", "ota-daemon-guard.timer"]
    for unit in services.group(1).split():
        assert "\n[Install]\n" in (REPO / "systemd" / unit).read_text()
    assert "${systemd_system_unitdir}/ota-daemon-guard.service" in text
    assert 'CONFFILES:${PN} = "${sysconfdir}/ota-daemon/config.toml"' in text
    assert "inherit python_setuptools_build_meta systemd" in text
