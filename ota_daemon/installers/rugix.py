"""Rugix Ctrl (``rugix-ctrl``) as an installer.

What is called (facts: ``installer-backends.md`` §1 and §4)::

    slot_info   rugix-ctrl system info --json
    install     rugix-ctrl update install --reboot no [--bundle-hash H] [extra_args] <abs path | - | URL>
    commit      rugix-ctrl system commit                 (a no-op when already the default)
    reboot      rugix-ctrl system reboot [--spare]
    mark_bad    nothing, or rugix-ctrl boot mark-bad G    (see below)

Boot groups are the slots: ``booted`` is ``boot.activeGroup``, ``primary`` is
``boot.defaultGroup``. Rugix records no version per group, so every slot's version is
``None`` and the engine keeps its own record of what it installed. The boot id comes from
``/proc/sys/kernel/random/boot_id`` (``installer.rugix.boot_id_file``).

``--reboot no`` always: the engine owns the reboot. Progress comes from the JSON lines
``{"event":"UpdateProgress","progress":x}`` that rugix-ctrl prints when its stdout is a pipe
(it always is here); for a stream of known size whose tool prints none (stdin), progress is
the share of bytes piped in. A stream is piped chunk by chunk, never held whole; if the
stream fails (a digest mismatch found by the daemon, a cut connection) the tool is killed
before it sees the end of its input, so it never finishes an install we did not verify.

Rugix refuses to install while the booted group is not committed; that refusal, like every
failure of the tool, becomes an :class:`InstallerError` carrying the tool's own words
(redacted: the tool may print the URL it was given).

``mark_bad``: Rugix's boot flows are try-once. After ``update install --reboot no`` nothing is
armed, and a group tried with ``system reboot --spare`` boots once: any reboot without a
commit returns to the default group. So marking the not-default group bad needs no action;
with ``installer.rugix.mark_bad_command`` the backend also runs ``rugix-ctrl boot mark-bad G``
for boot flows that implement it. The default group cannot be marked bad: Rugix can only
make the *booted* group the default, so undoing a committed update is
``reboot(spare=True)`` and a commit after that boot, never ``mark_bad``; the backend says so
in an :class:`InstallerError`.

0.8 (``installer.rugix.dialect = "0.8"``) names the hash flag ``--verify-bundle`` and has no
``--insecure-skip-bundle-verification`` (0.8 does not demand verification).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import structlog

from ota_daemon.clock import Clock, SystemClock
from ota_daemon.errors import HubError, InstallerError
from ota_daemon.installers.base import ImageFacts, InstallOutcome, map_installer_errors, tail
from ota_daemon.model import (
    FileSource,
    InstallSource,
    Progress,
    ProgressCallback,
    SlotInfo,
    SlotState,
    SourceKind,
    StreamSource,
    UrlSource,
    report_progress,
)
from ota_daemon.redact import redact_text, redact_url
from ota_daemon.traits import TRAITS, InstallerTraits

BACKEND = "rugix"
DEFAULT_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
#: how much of the tool's stderr is kept for messages
_STDERR_KEEP = 64 * 1024
#: log lines (tracing) on stderr, skipped when picking the error summary
_LOG_LINE = re.compile(r"^\s*(?:\S+\s+)?(?:TRACE|DEBUG|INFO|WARN|WARNING)\b")
#: exit by these signals while rebooting means the system is going down, as asked
_SHUTDOWN_SIGNALS = {-signal.SIGTERM, -signal.SIGKILL, -signal.SIGHUP}

log = structlog.get_logger("ota_daemon.installers.rugix").bind(component="installer.rugix")


def parse_system_info(text: str, *, boot_id: str = "") -> SlotInfo:
    """``rugix-ctrl system info`` JSON as :class:`SlotInfo` (a pure function).

    Raises :class:`InstallerError` naming what is missing.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise InstallerError(
            f"rugix: status: 'rugix-ctrl system info --json' printed no usable JSON ({reason}): {text[:120]!r}",
            backend=BACKEND,
            phase="status",
        ) from None
    if not isinstance(data, dict):
        raise InstallerError(
            "rugix: status: 'rugix-ctrl system info --json' printed JSON that is not an object",
            backend=BACKEND,
            phase="status",
        )
    boot = data.get("boot")
    if not isinstance(boot, dict):
        raise InstallerError(
            "rugix: status: 'rugix-ctrl system info' has no 'boot' section; expected a boot flow "
            "configured in /etc/rugix/system.toml",
            backend=BACKEND,
            phase="status",
        )
    active, default = boot.get("activeGroup"), boot.get("defaultGroup")
    if not isinstance(active, str) or not active:
        raise InstallerError(
            "rugix: status: rugix-ctrl could not determine the active boot group (boot.activeGroup is missing)",
            backend=BACKEND,
            phase="status",
        )
    if not isinstance(default, str) or not default:
        raise InstallerError(
            "rugix: status: rugix-ctrl reports no default boot group (boot.defaultGroup is missing)",
            backend=BACKEND,
            phase="status",
        )
    groups_raw = boot.get("groups")
    groups = sorted(groups_raw) if isinstance(groups_raw, dict) and groups_raw else sorted({active, default})
    if active not in groups or default not in groups:
        groups = sorted({*groups, active, default})
    if len(groups) != 2:
        raise InstallerError(
            f"rugix: status: expected two boot groups (A/B), rugix-ctrl reports {len(groups)}: {', '.join(groups)}",
            backend=BACKEND,
            phase="status",
        )
    slots = {g: SlotState(name=g, version=None, bootable=True, good=(g == default)) for g in groups}
    extra: dict[str, Any] = {"bootFlow": boot.get("bootFlow"), "slots": data.get("slots"), "state": data.get("state")}
    return SlotInfo(booted=active, primary=default, slots=slots, boot_id=boot_id, pending=None, extra=extra)


def parse_progress_line(line: str) -> tuple[float | None, dict[str, Any] | None]:
    """One line of ``rugix-ctrl update install`` stdout (a pure function; never raises).

    Returns ``(percent, event)``: ``percent`` in 0..100 for an ``UpdateProgress`` event with a
    finite number, else ``None``; ``event`` is the line's JSON object, or ``None`` when the
    line is not one (log text, garbage, JSON nested too deeply).
    """
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(event, dict):
        return None, None
    if event.get("event") != "UpdateProgress":
        return None, event
    value = event.get("progress")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, event
    try:
        percent = float(value)
    except OverflowError:  # an integer beyond any float
        percent = math.inf if value > 0 else -math.inf
    if math.isnan(percent):
        return None, event
    return max(0.0, min(100.0, percent)), event


def error_summary(stderr: str, lines: int = 3, limit: int = 400) -> str:
    """The tool's error report from its stderr: the last lines that are not log lines."""
    kept = [line.strip() for line in stderr.splitlines() if line.strip() and not _LOG_LINE.match(line)]
    if not kept:
        kept = [line.strip() for line in stderr.splitlines() if line.strip()]
    return " / ".join(kept[-lines:])[-limit:]


class _Progress:
    """Monotonic 0..100 reports to the engine's callback; the tool's numbers win over ours."""

    def __init__(self, callback: ProgressCallback | None, target: str, total: int | None) -> None:
        self.callback = callback
        self.target = target
        self.total = total
        self.last = -1.0
        self.from_tool = False

    async def report(self, percent: float, *, done: int | None = None) -> None:
        percent = max(0.0, min(100.0, percent))
        if percent <= self.last:
            return
        self.last = percent
        if self.callback is None:
            return
        await report_progress(self.callback, Progress("installing", percent, f"writing boot group {self.target}", done, self.total))


class RugixInstaller:
    kind: ClassVar[str] = "rugix"
    image_ext: ClassVar[str] = "rugixb"
    traits: ClassVar[InstallerTraits] = TRAITS["rugix"]

    def __init__(
        self,
        *,
        bin: str = "rugix-ctrl",
        use_bundle_hash: bool = False,
        insecure_skip_bundle_verification: bool = False,
        extra_args: Sequence[str] = (),
        dialect: str = "1.x",
        boot_id_file: Path = DEFAULT_BOOT_ID_FILE,
        command_timeout: float = 120.0,
        mark_bad_command: bool = False,
        clock: Clock | None = None,
    ) -> None:
        if dialect not in ("1.x", "0.8"):
            raise ValueError(f"rugix dialect {dialect!r}; valid: 0.8, 1.x")
        self.bin = bin
        self.use_bundle_hash = use_bundle_hash
        self.insecure_skip_bundle_verification = insecure_skip_bundle_verification
        self.extra_args = list(extra_args)
        self.dialect = dialect
        self.boot_id_file = boot_id_file
        self.command_timeout = command_timeout
        self.mark_bad_command = mark_bad_command
        self.clock = clock or SystemClock()
        self.source_kinds = frozenset({SourceKind.FILE, SourceKind.URL, SourceKind.STREAM})

    @classmethod
    def from_config(cls, *, config: Any, clock: Clock | None = None, **_: Any) -> RugixInstaller:
        r = config.installer.rugix
        return cls(
            bin=r.bin,
            use_bundle_hash=r.use_bundle_hash,
            insecure_skip_bundle_verification=r.insecure_skip_bundle_verification,
            extra_args=r.extra_args,
            dialect=r.dialect,
            boot_id_file=r.boot_id_file,
            command_timeout=r.command_timeout,
            mark_bad_command=r.mark_bad_command,
            clock=clock,
        )

    # ------------------------------------------------------------------ queries

    async def slot_info(self) -> SlotInfo:
        out, _ = await self._run(("system", "info", "--json"), phase="status")
        with map_installer_errors(BACKEND, "status"):
            boot_id = self.boot_id_file.read_text().strip()
        return parse_system_info(out, boot_id=boot_id)

    # ------------------------------------------------------------------ install

    async def install(
        self,
        source: InstallSource,
        *,
        progress: ProgressCallback | None = None,
        version: str | None = None,
        bundle_hash: str | None = None,
    ) -> InstallOutcome:
        """``update install --reboot no`` into the group that is not booted. Never reboots."""
        if self.use_bundle_hash and not bundle_hash:
            raise InstallerError(
                "rugix: installing: installer.rugix.use_bundle_hash is set but the image came without "
                "a bundle hash (expected asset metadata rugix.bundleHash)",
                backend=BACKEND,
                phase="installing",
            )
        info = await self.slot_info()
        target = info.other(info.booted)
        args: list[str] = ["update", "install", "--reboot", "no"]
        if bundle_hash:
            args += ["--bundle-hash" if self.dialect == "1.x" else "--verify-bundle", bundle_hash]
        if self.insecure_skip_bundle_verification and self.dialect == "1.x":
            args.append("--insecure-skip-bundle-verification")
        args += self.extra_args
        total: int | None = None
        if isinstance(source, FileSource):
            # absolute: rugix-ctrl takes any argument starting with "http" for a URL
            args.append(str(source.path.absolute()))
        elif isinstance(source, UrlSource):
            if not source.url.startswith(("http://", "https://")):
                raise InstallerError(
                    f"rugix: installing: rugix-ctrl fetches http:// and https:// URLs only, not {redact_url(source.url)!r}",
                    backend=BACKEND,
                    phase="installing",
                )
            args.append(source.url)
            total = source.size
        else:
            args.append("-")
            total = source.size
        log.info("rugix install", target=target, source=source.kind.value, bundle_hash=bool(bundle_hash))
        await self._install_process(args, source, _Progress(progress, target, total))
        return InstallOutcome(target_slot=target, needs_reboot=True, version=version)

    async def _install_process(self, args: list[str], source: InstallSource, reporter: _Progress) -> None:
        phase = "installing"
        streaming = isinstance(source, StreamSource)
        with map_installer_errors(BACKEND, phase):
            proc = await asyncio.create_subprocess_exec(
                self.bin,
                *args,
                stdin=asyncio.subprocess.PIPE if streaming else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=1 << 20,
            )
        stderr = bytearray()
        other_stdout: list[str] = []

        async def read_stdout() -> None:
            assert proc.stdout is not None
            while True:
                try:
                    raw = await proc.stdout.readline()
                except ValueError:  # a line beyond the limit: not a progress line
                    continue
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").strip()
                percent, event = parse_progress_line(line)
                if event is not None and event.get("event") == "UpdateProgress":
                    if percent is not None:
                        reporter.from_tool = True
                        await reporter.report(percent)
                    continue
                if line:
                    other_stdout.append(line)
                    del other_stdout[:-20]
                    if isinstance(event, dict) and event.get("event"):
                        log.info("rugix event", rugix_event=event.get("event"), detail=redact_text(line[:300]))

        async def read_stderr() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.read(65536):
                stderr.extend(chunk)
                del stderr[:-_STDERR_KEEP]

        readers = [asyncio.create_task(read_stdout()), asyncio.create_task(read_stderr())]
        cut_short = False
        try:
            if isinstance(source, StreamSource):
                cut_short = await self._feed(proc, source.chunks, reporter)
            await asyncio.gather(*readers)
            returncode = await proc.wait()
        except BaseException:
            # the stream failed (or we are cancelled): the tool must not see a clean end of input
            await _kill(proc)
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            raise
        if returncode != 0:
            raise self._failed(("update", "install"), phase, returncode, bytes(stderr), other_stdout)
        if cut_short:
            raise InstallerError(
                "rugix: installing: rugix-ctrl exited (status 0) before it had read the whole stream",
                backend=BACKEND,
                phase=phase,
                returncode=0,
                stderr_tail=tail(redact_text(bytes(stderr).decode("utf-8", "replace"))),
            )
        await reporter.report(100.0)

    @staticmethod
    async def _feed(proc: asyncio.subprocess.Process, chunks: AsyncIterator[bytes], reporter: _Progress) -> bool:
        """Pipe ``chunks`` into the tool's stdin, one at a time. True if the tool stopped reading."""
        assert proc.stdin is not None
        fed = 0
        cut_short = False
        try:
            async for chunk in chunks:
                try:
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    cut_short = True  # the tool exited; its exit status says why
                    break
                fed += len(chunk)
                if reporter.total and not reporter.from_tool:
                    # bytes handed over, not yet written: 100 is reported once the tool succeeds
                    await reporter.report(min(99.9, 100.0 * fed / reporter.total), done=fed)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.close()
            await proc.stdin.wait_closed()
        return cut_short

    # ------------------------------------------------------------------ boot control

    async def reboot(self, *, spare: bool) -> None:
        """``system reboot --spare`` (try the other group once) or a plain ``system reboot``."""
        args = ("system", "reboot", "--spare") if spare else ("system", "reboot")
        log.info("rugix reboot", spare=spare)
        try:
            await self._run(args, phase="rebooting")
        except InstallerError as exc:
            if exc.returncode in _SHUTDOWN_SIGNALS:
                return  # killed by the shutdown it started
            raise

    async def commit(self) -> None:
        """``system commit``: the booted group becomes the default (a no-op when it is)."""
        await self._run(("system", "commit"), phase="committing")

    async def mark_bad(self, slot: str) -> None:
        """See the module docstring: try-once needs nothing; the default group is refused."""
        info = await self.slot_info()
        if slot not in info.slots:
            raise InstallerError(
                f"rugix: rollback: no boot group {slot!r}; groups: {', '.join(sorted(info.slots))}",
                backend=BACKEND,
                phase="rollback",
            )
        if slot == info.primary:
            raise InstallerError(
                f"rugix: rollback: boot group {slot!r} is the default group and cannot be marked bad: "
                "Rugix only makes the booted group the default (undo a committed update with a spare "
                "reboot and a commit)",
                backend=BACKEND,
                phase="rollback",
            )
        if self.mark_bad_command:
            await self._run(("boot", "mark-bad", slot), phase="rollback")
        log.info("rugix mark bad", slot=slot, command=self.mark_bad_command)

    async def image_facts(self, path: Path) -> ImageFacts:
        """Nothing: a Rugix bundle carries no version ``rugix-ctrl`` reports."""
        return ImageFacts()

    def bundle_hash(self, metadata: Mapping[str, Any]) -> str | None:
        """``metadata.rugix.bundleHash`` of the asset, when ``use_bundle_hash`` is set."""
        if not self.use_bundle_hash:
            return None
        rugix = metadata.get("rugix")
        if isinstance(rugix, dict) and isinstance(rugix.get("bundleHash"), str) and rugix["bundleHash"]:
            return str(rugix["bundleHash"])
        raise HubError("the asset has no metadata.rugix.bundleHash, and installer.rugix.use_bundle_hash is set")

    def hub_config(self) -> dict[str, Any]:
        return {"rugix": {"useBundleHash": self.use_bundle_hash}}

    async def aclose(self) -> None:
        return None

    # ------------------------------------------------------------------ processes

    async def _run(self, args: Sequence[str], *, phase: str) -> tuple[str, str]:
        with map_installer_errors(BACKEND, phase):
            proc = await asyncio.create_subprocess_exec(
                self.bin,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.command_timeout)
        except TimeoutError:
            await _kill(proc)
            raise InstallerError(
                f"rugix: {phase}: 'rugix-ctrl {' '.join(args)}' did not finish within {self.command_timeout:g} s",
                backend=BACKEND,
                phase=phase,
            ) from None
        except BaseException:
            await _kill(proc)
            raise
        assert proc.returncode is not None
        if proc.returncode != 0:
            raise self._failed(args, phase, proc.returncode, err, [])
        return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def _failed(
        self, args: Sequence[str], phase: str, returncode: int, stderr: bytes, stdout_lines: list[str]
    ) -> InstallerError:
        text = redact_text(stderr.decode("utf-8", "replace"))
        if stdout_lines:
            text = text + "\n" + redact_text("\n".join(stdout_lines))
        command = " ".join(a for a in args if not a.startswith(("http://", "https://")))
        how = f"exit {returncode}" if returncode >= 0 else f"killed by signal {-returncode}"
        summary = error_summary(text)
        message = f"rugix: {phase}: 'rugix-ctrl {command}' failed ({how})" + (f": {summary}" if summary else "")
        return InstallerError(message, backend=BACKEND, phase=phase, returncode=returncode, stderr_tail=tail(text))


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    if proc.stdin is not None:
        proc.stdin.close()
    with contextlib.suppress(Exception):
        await proc.wait()
