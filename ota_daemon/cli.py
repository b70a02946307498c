"""The command line: builds objects, calls the engine or the daemon, maps outcomes to exit codes.

Exit codes: 0 done or up to date, 1 failure, 2 usage or configuration error, 3 an update is
available (``check --dry-run``), 4 deferred or blocked. Only :class:`OtaError` (and a user's
bad file argument) is caught and printed as one line; anything else keeps its traceback (a
bug, to be reported).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from ota_daemon import __version__
from ota_daemon.errors import ConfigError, OtaError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AVAILABLE, EXIT_BLOCKED = 0, 1, 2, 3, 4
#: image file extensions a device looks for (``hub.image_asset`` = ``{system}.{ext}``)
IMAGE_EXTS = ("rugixb", "raucb", "swu", "img")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with one line, as our other usage errors
        self.print_usage(sys.stderr)
        sys.stderr.write(f"ota-daemon: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


# --------------------------------------------------------------------------- argument types


def _sha256(text: str) -> str:
    digest = text.strip().lower().removeprefix("sha256:").removeprefix("sha256_")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise argparse.ArgumentTypeError(f"expected 64 hexadecimal digits (a SHA-256 digest), got {text[:80]!r}")
    return digest


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {value}")
    return value


def _source(text: str) -> str:
    """``install SOURCE``: a path that exists is a file (or a folder with a signed repository);
    ``http(s)://`` and ``file://`` are URLs."""
    if "://" in text:
        scheme = urlsplit(text).scheme.lower()
        if scheme not in ("http", "https", "file"):
            raise argparse.ArgumentTypeError(f"{text[:80]!r}: expected a file, or an http://, https:// or file:// URL")
        if scheme == "file":
            text = urlsplit(text).path
        else:
            return text
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not (path.is_file() or path.is_dir()):
        raise argparse.ArgumentTypeError(f"{text}: not a regular file")
    return str(path.resolve())  # a folder: a signed repository on a USB stick (hub.verify = "tuf")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ota-daemon", description="A/B system updates for embedded Linux devices.")
    parser.add_argument("--version", action="version", version=f"ota-daemon {__version__}")
    parser.add_argument("--config", "-c", metavar="PATH", help="configuration file (default: $OTA_DAEMON_CONFIG or /etc/ota-daemon/config.toml)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log.level")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], help="override log.format")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    sub.add_parser("run", help="run as a daemon: poll, update, report", description="Run as a daemon: poll, update, report (systemd Type=notify). SIGUSR1 checks now, SIGHUP reloads the configuration.")
    check = sub.add_parser("check", help="one full reconcile pass", description="One full reconcile pass: check, download, install, reboot or commit as due.")
    check.add_argument("--dry-run", action="store_true", help="decide only: no download, no install (exit 3: update available)")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    status = sub.add_parser("status", help="journal, slots, versions, last and next check, last error, quarantine", description="Show the journal, slots, versions, last and next check, last error, quarantine and recent events. Read-only: creates nothing.")
    status.add_argument("--json", action="store_true", help="print everything as one JSON document (camelCase keys, ISO 8601 times)")
    status.add_argument("--events", type=_count, default=10, metavar="N", help="show the last N events (default 10)")
    install = sub.add_parser("install", help="install a local file or URL (the USB-stick update)", description="Install a local image file or an http(s):// URL (the USB-stick update), with the same verification, journal and reboot handling as an update from the hub.")
    install.add_argument("source", type=_source, metavar="SOURCE", help="image file (a path that exists), a folder carrying the signed repository (hub.verify = 'tuf'), or an http://, https:// or file:// URL")
    install.add_argument("--sha256", type=_sha256, metavar="HEX", help="expected SHA-256 of the image (required for http(s) URLs)")
    install.add_argument("--image-version", dest="image_version", metavar="V", help="the version the image carries (default: read from the image where the installer can)")
    install.add_argument("--json", action="store_true", help="print the result as JSON")
    commit = sub.add_parser("commit", help="commit the booted trial slot", description="Commit the booted trial slot.")
    commit.add_argument("--check", action="store_true", help="run the health gate first")
    sub.add_parser("reboot", help="reboot into an installed update that waits for its reboot (reboot policy manual/window)", description="Reboot into an installed update that waits for its reboot (reboot policy manual or window).")
    retry = sub.add_parser("retry", help="clear a version's quarantine so it may be installed again", description="Clear a version's quarantine so that it may be installed again.")
    retry.add_argument("version", metavar="VERSION", help="the quarantined version (as 'ota-daemon status' lists it)")
    sub.add_parser("demo", help="a whole A/B update on a throw-away simulated device", description="A whole A/B update on a throw-away simulated device; leaves nothing behind.")
    from ota_daemon.inhibit import add_inhibit_arguments

    add_inhibit_arguments(sub.add_parser("inhibit", help="hold back updates (install, reboot) while COMMAND runs", description="Hold back updates (install, reboot) while COMMAND runs."))

    repo = sub.add_parser("repo", help="build a static repository", description="Build and maintain a static repository in a local folder.").add_subparsers(
        dest="repo_command", required=True, parser_class=_Parser, metavar="SUBCOMMAND"
    )
    pub = repo.add_parser("publish", help="publish files as a new version and move the tag to it", description="Publish files as a new version and move the tag to it (assets first, the tag last). With --system, an image FILE is published as <system>.<ext>, the name devices look for.")
    pub.add_argument("root", type=Path, metavar="ROOT", help="repository root folder")
    pub.add_argument("path", metavar="PATH", help="repository/package/tag")
    pub.add_argument("--image-version", dest="image_version", required=True, metavar="V", help="version of the release (imageVersion)")
    pub.add_argument("--system", metavar="NAME", help="system name: adds <system>.build-info.json and names an image <system>.<ext>")
    pub.add_argument("--tag", action="append", default=[], metavar="TAG", help="another floating tag to point at it")
    pub.add_argument("--keys", type=Path, metavar="DIR", help="signed repository: folder of the signing keys")
    pub.add_argument("--bundle-hash", action="append", default=[], metavar="NAME=HEX", help="signed repository: the Rugix bundle hash of file NAME (signed; handed to the installer)")
    pub.add_argument("files", nargs="+", metavar="FILE", help="FILE or NAME=FILE (the asset name devices ask for, e.g. my-board.raucb=build/out.raucb)")
    tag = repo.add_parser("tag", help="point a tag at a version", description="Point a tag at a version, atomically.")
    tag.add_argument("root", type=Path, metavar="ROOT", help="repository root folder")
    tag.add_argument("path", metavar="PATH", help="repository/package/tag")
    tag.add_argument("target", metavar="VERSION", help="version id (pkg_v_...) or version string")
    from ota_daemon.signing.cli import add_commands as add_signed_commands

    add_signed_commands(repo)

    sim = sub.add_parser("sim", help="simulated device tools (tests, rig)", description="Simulated-device tools for tests, the demo and the rig.").add_subparsers(
        dest="sim_command", required=True, parser_class=_Parser, metavar="SUBCOMMAND"
    )
    create = sim.add_parser("create", help="create a simulated device", description="Create a simulated device: two slots, the first running --image-version.")
    create.add_argument("device", type=Path, metavar="DIR", help="device folder")
    create.add_argument("--name", required=True, help="system name")
    create.add_argument("--image-version", dest="image_version", required=True, metavar="V", help="version in slot a")
    boot = sim.add_parser("boot", help="power on / reboot: apply the bootloader's decision", description="Power on or reboot the simulated device: apply the bootloader's decision.")
    boot.add_argument("device", type=Path, metavar="DIR", help="device folder")
    image = sim.add_parser("image", help="write a simulated image file", description="Write a simulated image file.")
    image.add_argument("output", type=Path, metavar="FILE", help="image file to write")
    image.add_argument("--name", required=True, help="system name the image is for")
    image.add_argument("--image-version", dest="image_version", required=True, metavar="V", help="version the image carries")
    image.add_argument("--size", type=_count, default=1 << 20, metavar="BYTES", help="payload bytes (default 1 MiB)")
    return parser


# --------------------------------------------------------------------------- commands


def _config(args: argparse.Namespace) -> Any:
    from ota_daemon.config import load_config

    config = load_config(args.config)
    if args.log_level:
        config.log.level = args.log_level
    if args.log_format:
        config.log.format = args.log_format
    return config


async def _status(args: argparse.Namespace, out: TextIO) -> int:
    """Read-only: no lock, no state directory created; the installer unreachable is shown."""
    from ota_daemon.config import has_config, where_looked
    from ota_daemon.console import print_status, read_status

    if not has_config(args.config):
        raise ConfigError(
            f"no configuration: looked for {where_looked(args.config)} and found no OTA_DAEMON_* variables; "
            "nothing to show (the configuration names the state directory and the installer)"
        )
    config = _config(args)
    from ota_daemon import logs

    logs.configure(config.log.level, config.log.format)
    view = await read_status(config, events=args.events)
    if args.json:
        out.write(json.dumps(view.document(), indent=2) + "\n")
    else:
        print_status(view, out)
    if not config.state.dir.is_dir():
        sys.stderr.write(f"ota-daemon: note: no state in {config.state.dir} yet (no pass has run)\n")
    return EXIT_OK


async def _with_engine(args: argparse.Namespace, command: str, out: TextIO) -> int:
    from ota_daemon import logs
    from ota_daemon.app import open_engine
    from ota_daemon.console import ProgressBar
    from ota_daemon.installers.simulated import RebootRequested
    from ota_daemon.state import StateLock

    config = _config(args)
    logs.configure(config.log.level, config.log.format)
    with StateLock(config.state.dir, command):
        async with open_engine(config) as engine:
            bar = ProgressBar(out)
            engine.telemetry.progress_listeners.append(bar.update)
            if bar.tty:
                # the bar shows progress: no progress log lines, and log lines clear the bar first
                engine.telemetry.log_progress = False
                logs.set_interrupter(bar.interrupt)
            try:
                if command == "check":
                    result = await engine.reconcile(dry_run=args.dry_run)
                elif command == "install":
                    result = await engine.install_local(args.source, version=args.image_version, sha256=args.sha256)
                elif command == "commit":
                    result = await engine.commit_now(run_health=args.check)
                elif command == "reboot":
                    result = await engine.reboot_now()
                elif command == "retry":
                    cleared = await engine.retry(args.version)
                    out.write(f"{args.version}: {'quarantine cleared' if cleared else 'was not quarantined'}\n")
                    return EXIT_OK
                else:  # pragma: no cover
                    raise UsageError(command)
            except RebootRequested:
                bar.finish()
                out.write("reboot requested\n")
                return EXIT_OK
            finally:
                logs.set_interrupter(None)
                bar.finish()
                await engine.telemetry.flush()
    if getattr(args, "json", False):
        out.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        out.write(f"{result.result.value}: {result.message}\n")
    return result.exit_code


def asset_name(file: Path, system: str | None) -> tuple[str, str | None]:
    """The asset name for a FILE given without NAME= and a warning, if any.

    With ``--system``, an image (``.rugixb``, ``.raucb``, ``.swu``, ``.img``) is named
    ``<system>.<ext>`` — the name a device looks for (``hub.image_asset``)."""
    ext = file.name.rsplit(".", 1)[-1].lower() if "." in file.name else ""
    if system and ext in IMAGE_EXTS:
        name = f"{system}.{ext}"
        return name, (None if file.name == name else f"{file} published as {name} (the name a device with system {system!r} looks for)")
    if ext in IMAGE_EXTS:
        return file.name, f"{file.name}: devices look for <system>.{ext}; name it with NAME=FILE (e.g. my-board.{ext}={file}) or --system"
    return file.name, None


def _check_name(name: str, system: str | None) -> str | None:
    """A warning when an image asset named NAME= is not one a device of ``system`` looks for."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if system and ext in IMAGE_EXTS and name != f"{system}.{ext}":
        return f"{name}: a device with system {system!r} looks for {system}.{ext} (hub.image_asset = '{{system}}.{{ext}}'); it will not find {name}"
    return None


def _repo(args: argparse.Namespace, out: TextIO) -> int:
    from ota_daemon.repo import move_tag, publish
    from ota_daemon.signing import cli as signed

    if args.repo_command in signed.COMMANDS:
        return signed.run(args, out)
    signed.refuse_unsigned(args)
    if args.repo_command == "publish":
        files = []
        for item in args.files:
            name, sep, file = item.partition("=")
            if not Path(file if sep else item).is_file():
                raise UsageError(f"repo publish: {file if sep else item}: no such file")
            if sep:
                warning = _check_name(name, args.system)
                files.append((name, Path(file)))
            else:
                name, warning = asset_name(Path(item), args.system)
                files.append((name, Path(item)))
            if warning:
                sys.stderr.write(f"ota-daemon: warning: {warning}\n")
        if args.keys is not None:
            return signed.signed_publish(args, files, out)
        published = publish(args.root, args.path, version=args.image_version, files=files, system=args.system, extra_tags=args.tag)
        names = ", ".join(a["filename"] for a in published.document["assets"])
        out.write(f"published {args.image_version} as {published.version_id} ({names}); {args.path} -> it\n")
    else:
        target = move_tag(args.root, args.path, args.target)
        out.write(f"{args.path} -> {args.target} ({target})\n")
    return EXIT_OK


def _sim(args: argparse.Namespace, out: TextIO) -> int:
    from ota_daemon.installers.simulated import SimulatedDevice, make_image

    if args.sim_command == "create":
        SimulatedDevice.create(args.device, name=args.name, version=args.image_version)
        out.write(f"created simulated device {args.device} running {args.image_version}\n")
    elif args.sim_command == "boot":
        if not args.device.is_dir():
            raise UsageError(f"{args.device}: no simulated device here (create one with 'ota-daemon sim create')")
        slot = SimulatedDevice(args.device).boot()
        out.write(f"booted slot {slot}\n")
    else:
        args.output.write_bytes(make_image(args.name, args.image_version, b"\0" * args.size))
        out.write(f"wrote {args.output}\n")
    return EXIT_OK


#: errors about a file the user named: a usage error (exit 2), one line
_USER_FILE_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EEXIST, errno.EROFS, errno.ENAMETOOLONG}


@contextlib.contextmanager
def _user_files() -> Iterator[None]:
    """For commands whose files the user names (repo, sim): a bad path is a usage error."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _USER_FILE_ERRNOS:
            raise
        name = exc.filename if exc.filename is not None else ""
        raise UsageError(f"{name}: {exc.strerror}" if name else str(exc.strerror or exc)) from None


def _run(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "run":
        from ota_daemon.daemon import run_daemon

        return run_daemon(args.config, log_level=args.log_level, log_format=args.log_format)
    if args.command == "demo":
        from ota_daemon.demo import run_demo

        return asyncio.run(run_demo(out))
    if args.command == "inhibit":
        from ota_daemon.inhibit import run_inhibit_parsed

        return run_inhibit_parsed(args, config_path=args.config)
    if args.command == "repo":
        with _user_files():
            return _repo(args, out)
    if args.command == "sim":
        with _user_files():
            return _sim(args, out)
    if args.command == "status":
        return asyncio.run(_status(args, out))
    return asyncio.run(_with_engine(args, args.command, out))


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "install" and "://" in args.source and not args.sha256:
        parser.error(f"install {args.source[:80]}: installing from a URL needs --sha256 HEX (the image's SHA-256)")
    try:
        return _run(args, out)
    except OtaError as exc:
        from ota_daemon.config import locate_error
        from ota_daemon.redact import redact_text

        message = str(exc)
        if isinstance(exc, ConfigError):
            message = locate_error(message, args.config)
        sys.stderr.write(f"ota-daemon: {type(exc).__name__}: {redact_text(message)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`ota-daemon status | head -3`): stop quietly, as other tools do
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
