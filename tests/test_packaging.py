"""pyproject.toml builds without deprecation warnings: the licence is an SPDX expression."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_license_is_an_spdx_expression() -> None:
    """`license` is a string (PEP 639), not the deprecated table; the build backend knows it."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "MIT OR Apache-2.0"
    assert "setuptools>=77" in data["build-system"]["requires"]


@pytest.mark.slow
def test_build_has_no_setuptools_deprecation_warning(tmp_path: Path) -> None:
    """Building the wheel prints no SetuptoolsDeprecationWarning, and the metadata carries
    License-Expression."""
    import shutil
    import zipfile

    source = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "ota_daemon", source / "ota_daemon", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "SetuptoolsDeprecationWarning" not in result.stdout + result.stderr
    wheel = next(tmp_path.glob("ota_daemon-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(zf.read(n).decode() for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT OR Apache-2.0" in metadata
