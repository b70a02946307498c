"""Every example configuration under config/ loads, so the documentation cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from ota_daemon.config import load_config

EXAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("config").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_loads(path: Path) -> None:
    """The example is valid TOML with known keys and good values."""
    config = load_config(path, env={})
    assert config.installer.kind in ("rugix", "rauc", "swupdate", "simulated")


def test_there_are_examples_for_each_installer() -> None:
    """A commented example exists for every installer kind."""
    kinds = {load_config(p, env={}).installer.kind for p in EXAMPLES}
    assert {"rugix", "rauc", "swupdate", "simulated"} <= kinds
