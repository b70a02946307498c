"""The README is true: the configuration reference names every key, the walk-through runs as
written, and the command table and exit codes match the command line."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from ota_daemon.config import Config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _keys(annotation, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_key_is_documented() -> None:
    """Each key of every section (the installer tables are documented in config/) is in the README."""
    keys = [k for k in _keys(Config) if not k.startswith("installer.") or k == "installer.kind"]
    missing = [k for k in keys if f"`{k}`" not in README]
    assert missing == []


# --------------------------------------------------------------------------- walk-through


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else len(README)]


def _commands(block: str) -> list[tuple[str, int]]:
    """Shell commands of a ```sh block (a here-document is part of its command), each with the
    exit code its ``# exit N`` comment promises (0 without one)."""
    out: list[tuple[str, int]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            body = [line]
            while i < len(lines) and lines[i] != heredoc.group(1):
                body.append(lines[i])
                i += 1
            body.append(lines[i])
            i += 1
            out.append(("\n".join(body), 0))
            continue
        code = re.search(r"#\s*exit (\d+)", line)
        out.append((line, int(code.group(1)) if code else 0))
    return out


def test_first_repository_walk_through_runs(tmp_path: Path) -> None:
    """Every command of "Your first repository" runs as written, in an empty folder, with the
    exit code the README gives; the device ends on 1.1.0 committed and sees 1.2.0."""
    section = _section("Your first repository")
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    outputs: list[str] = []
    for command, expected in _commands(blocks[0]):
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert result.returncode == expected, (command, result.returncode, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        outputs.append(result.stdout + result.stderr)
    text = "\n".join(outputs)
    assert "published as my-board.img" in text  # the second publish named its image
    assert "completed: 1.1.0 committed" in text
    assert "running version:  1.1.0 (slot b, committed)" in text
    assert outputs[-1].startswith("update_available: ") and "1.2.0" in outputs[-1]


# --------------------------------------------------------------------------- CLI reference


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    out: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    for action in subs:
        for name, sub in action.choices.items():
            out.update(_leaves(sub, (*path, name)))
    return out


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def test_cli_reference_matches_the_parser() -> None:
    """Each command (and subcommand) has a row in the README's command table, and a row names
    exactly the options its command takes (global options aside)."""
    from ota_daemon.cli import build_parser
    from ota_daemon.signing.cli import COMMANDS as SIGNED

    rows = [m.group(1).replace("\\|", "|") for m in re.finditer(r"^\| `(ota-daemon [^`]+)` \|", _section("Command line"), re.M)]
    leaves = _leaves(build_parser())
    for path, parser in leaves.items():
        if path[0] == "repo" and (path[1] in SIGNED or path[1] == "rollout"):
            assert any(row.startswith("ota-daemon repo ") and path[1] in row for row in rows), path
            continue
        matching = [row for row in rows if row.split()[1 : 1 + len(path)] == list(path)]
        assert matching, f"no README row for ota-daemon {' '.join(path)}"
        documented = set(re.findall(r"--[a-z][a-z0-9-]*", matching[0]))
        assert documented == _options(parser), (path, documented, _options(parser))


def test_exit_code_table_matches_the_code() -> None:
    """The README's exit-code table lists the codes the CLI uses, and each result of a pass
    maps to the code its row describes."""
    from ota_daemon import cli
    from ota_daemon.engine import EXIT_CODES, Result

    table = dict(re.findall(r"^\| (\d) \| (.+) \|$", _section("Command line"), re.M))
    assert sorted(int(k) for k in table) == [cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_AVAILABLE, cli.EXIT_BLOCKED]
    words = {
        Result.UP_TO_DATE: "up to date", Result.COMPLETED: "done", Result.REBOOTING: "rebooting",
        Result.REBOOT_PENDING: "waiting for its reboot", Result.UPDATE_AVAILABLE: "available",
        Result.FAILED: "failed", Result.ROLLED_BACK: "rolled back", Result.BLOCKED: "blocked",
    }
    for result, code in EXIT_CODES.items():
        assert words[result] in table[str(code)], (result, code, table[str(code)])


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4])
def test_each_exit_code_happens_as_documented(tmp_path: Path, code: int) -> None:
    """A command ends with each code in the situation the table names."""
    from ota_daemon.testing import SimWorld

    world = SimWorld(tmp_path)
    world.create_device("1.0.0")
    world.publish("1.0.0")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ota_daemon", "--config", str(world.toml()), *args], env=env, capture_output=True, text=True, timeout=120, check=False)

    if code == 0:
        result = run("check")  # up to date
    elif code == 2:
        result = run("check", "--no-such-option")
    elif code == 3:
        world.publish("1.1.0")
        result = run("check", "--dry-run")
    elif code == 1:
        published = world.publish("1.1.0")
        asset = world.repo_dir / "fleet" / published.document["assets"][0]["url"]
        data = bytearray(asset.read_bytes())
        data[-1] ^= 0xFF
        asset.write_bytes(bytes(data))
        result = run("check")  # the image does not match its digest: failed (backing off)
    else:
        world.publish("1.1.0", system="other-board", build_info=False)
        run("check")  # the installer refuses the image: failed, quarantined
        result = run("check")  # the quarantined version is refused: blocked
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr


def test_every_installer_key_is_in_its_example() -> None:
    """Each key of installer.<kind> appears, set or commented, in config/<kind>.toml (where the
    README sends readers for the installer tables)."""
    from ota_daemon.config import InstallerConfig

    root = Path(__file__).resolve().parent.parent / "config"
    missing: list[str] = []
    for kind in ("simulated", "rugix", "rauc", "swupdate"):
        model = InstallerConfig.model_fields[kind].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        text = (root / f"{kind}.toml").read_text()
        missing += [f"installer.{kind}.{key}" for key in model.model_fields if not re.search(rf"^\s*#?\s*{key}\s*=", text, re.M)]
    assert missing == []
