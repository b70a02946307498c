"""The SWUpdate backend: :class:`SwupdateInstaller` (the package docstring has the facts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import structlog

from ota_daemon.clock import Clock, SystemClock
from ota_daemon.effects import effect
from ota_daemon.errors import InstallerError
from ota_daemon.installers.base import ImageFacts, InstallOutcome, map_installer_errors, tail
from ota_daemon.installers.swupdate.bootenv import (
    BACKEND,
    USTATE_FAILED,
    USTATE_INSTALLED,
    USTATE_OK,
    parse_cmdline,
    parse_env,
    parse_selection,
    slot_info_from_env,
)
from ota_daemon.installers.swupdate.output import error_summary, read_swu_version
from ota_daemon.installers.swupdate.progress import ProgressDecoder, ProgressTracker
from ota_daemon.model import (
    FileSource,
    InstallSource,
    Progress,
    ProgressCallback,
    SlotInfo,
    SourceKind,
    StreamSource,
    UrlSource,
    report_progress,
)
from ota_daemon.redact import redact_text, redact_url
from ota_daemon.state import atomic_write
from ota_daemon.traits import TRAITS, InstallerTraits

log = structlog.get_logger("ota_daemon.installers.swupdate")

#: bytes of a stream held back until the source has ended cleanly (see the package docstring)
HOLD_BACK = 64 * 1024

_emit = report_progress


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str


# --------------------------------------------------------------------------- the installer


class SwupdateInstaller:
    kind: ClassVar[str] = "swupdate"
    image_ext: ClassVar[str] = "swu"
    traits: ClassVar[InstallerTraits] = TRAITS["swupdate"]

    def __init__(
        self,
        *,
        binary: str = "swupdate",
        public_key: Path | None = None,
        hwrevision: str | None = None,
        bootloader: str = "uboot",
        selection: str = "stable,copy1|copy2",
        slots: Sequence[str] = ("A", "B"),
        slot_var: str = "rootpart",
        version_var: str | None = None,
        booted_from: str = "env",
        cmdline_path: Path = Path("/proc/cmdline"),
        cmdline_arg: str = "root",
        cmdline_map: dict[str, str] | None = None,
        boot_id_path: Path = Path("/proc/sys/kernel/random/boot_id"),
        fw_env_config: Path | None = None,
        fw_printenv_bin: str = "fw_printenv",
        fw_setenv_bin: str = "fw_setenv",
        commit_env: dict[str, str] | None = None,
        trial_env: dict[str, str] | None = None,
        verify_switch: bool = True,
        reboot_command: Sequence[str] = ("systemctl", "reboot"),
        command_prefix: Sequence[str] = (),
        tmp_dir: Path | None = None,
        state_file: Path,
        log_level: int = 4,
        timeout: float = 7200.0,
        extra_args: Sequence[str] = (),
        clock: Clock | None = None,
    ) -> None:
        if len(slots) != 2 or slots[0] == slots[1]:
            raise ValueError(f"swupdate: expected two different slot names, got {list(slots)}")
        self.bin = binary
        self.public_key = public_key
        self.hwrevision = hwrevision
        self.bootloader = bootloader
        self.software, self.modes = parse_selection(selection)
        self.slots = (slots[0], slots[1])
        self.slot_var = slot_var
        self.version_var = version_var
        self.booted_from = booted_from
        self.cmdline_path = cmdline_path
        self.cmdline_arg = cmdline_arg
        self.cmdline_map = dict(cmdline_map or {})
        self.boot_id_path = boot_id_path
        self.fw_env_config = fw_env_config
        self.fw_printenv_bin = fw_printenv_bin
        self.fw_setenv_bin = fw_setenv_bin
        self.commit_env = dict({"upgrade_available": "0", "bootcount": "0"} if commit_env is None else commit_env)
        self.trial_env = dict({"upgrade_available": "1", "bootcount": "0"} if trial_env is None else trial_env)
        self.verify_switch = verify_switch
        self.reboot_command = list(reboot_command)
        self.command_prefix = list(command_prefix)
        self.tmp_dir = tmp_dir
        self.state_file = state_file
        self.log_level = log_level
        self.timeout = timeout
        self.extra_args = list(extra_args)
        self.clock = clock or SystemClock()
        self.source_kinds = frozenset({SourceKind.FILE, SourceKind.STREAM, SourceKind.URL})

    @classmethod
    def from_config(cls, *, config: Any, clock: Clock | None = None, **_: Any) -> SwupdateInstaller:
        c = config.installer.swupdate
        return cls(
            binary=c.bin,
            public_key=c.public_key,
            hwrevision=c.hwrevision,
            bootloader=c.bootloader,
            selection=c.selection,
            slots=c.slots,
            slot_var=c.slot_var,
            version_var=c.version_var,
            booted_from=c.booted_from,
            cmdline_path=c.cmdline_path,
            cmdline_arg=c.cmdline_arg,
            cmdline_map=c.cmdline_map,
            boot_id_path=c.boot_id_path,
            fw_env_config=c.fw_env_config,
            fw_printenv_bin=c.fw_printenv_bin,
            fw_setenv_bin=c.fw_setenv_bin,
            commit_env=c.commit_env,
            trial_env=c.trial_env,
            verify_switch=c.verify_switch,
            reboot_command=c.reboot_command,
            command_prefix=c.command_prefix,
            tmp_dir=c.tmp_dir,
            state_file=c.state_file or config.state.dir / "swupdate-boot.json",
            log_level=c.log_level,
            timeout=c.timeout,
            extra_args=c.extra_args,
            clock=clock,
        )

    # ------------------------------------------------------------------ boot state
    def other(self, slot: str) -> str:
        return self.slots[1] if slot == self.slots[0] else self.slots[0]

    async def read_env(self) -> dict[str, str]:
        """The bootloader environment, as ``fw_printenv`` shows it."""
        with map_installer_errors(BACKEND, "reading the bootloader environment"):
            run = await self._run([self.fw_printenv_bin, *self._env_args()], timeout=60.0)
        if run.returncode != 0:
            raise InstallerError(
                f"swupdate: reading the bootloader environment with {self._env_tool_desc(self.fw_printenv_bin)} "
                f"failed (exit {run.returncode}): {tail(run.stderr or run.stdout, lines=3) or 'no output'}",
                backend=BACKEND,
                phase="slot_info",
                returncode=run.returncode,
                stderr_tail=tail(run.stderr or run.stdout),
            )
        return parse_env(run.stdout)

    async def write_env(self, values: dict[str, str | None], *, phase: str) -> bool:
        """Set (``None``: delete) variables in one ``fw_setenv`` write; False when nothing changed."""
        current = await self.read_env()
        changes = {k: v for k, v in values.items() if current.get(k) != v}
        if not changes:
            return False
        for name, value in changes.items():
            if "=" in name or "\n" in name or (value is not None and "\n" in value):
                raise InstallerError(f"swupdate: bootloader variable {name!r}: name or value not writable", backend=BACKEND, phase=phase)
        script = "".join(f"{name}={'' if value is None else value}\n" for name, value in changes.items())
        with map_installer_errors(BACKEND, phase):
            run = await self._run([self.fw_setenv_bin, *self._env_args(), "-s", "/dev/stdin"], stdin=script.encode(), timeout=60.0)
        if run.returncode != 0:
            raise InstallerError(
                f"swupdate: {phase}: setting {', '.join(changes)} with {self._env_tool_desc(self.fw_setenv_bin)} "
                f"failed (exit {run.returncode}): {tail(run.stderr or run.stdout, lines=3) or 'no output'}",
                backend=BACKEND,
                phase=phase,
                returncode=run.returncode,
                stderr_tail=tail(run.stderr or run.stdout),
            )
        log.info("bootloader environment written", phase=phase, values=changes)
        return True

    def _env_args(self) -> list[str]:
        return ["-c", str(self.fw_env_config)] if self.fw_env_config else []

    def _env_tool_desc(self, tool: str) -> str:
        return f"{tool} -c {self.fw_env_config}" if self.fw_env_config else tool

    def _boot_id(self) -> str:
        with map_installer_errors(BACKEND, "reading the boot id"):
            return self.boot_id_path.read_text().strip()

    def _booted(self, env: dict[str, str], boot_id: str) -> str:
        if self.booted_from == "cmdline":
            with map_installer_errors(BACKEND, "reading the kernel command line"):
                args = parse_cmdline(self.cmdline_path.read_text())
            value = args.get(self.cmdline_arg)
            slot = self.cmdline_map.get(value, value) if value is not None else None
            if slot not in self.slots:
                raise InstallerError(
                    f"swupdate: kernel argument {self.cmdline_arg}={value!r} in {self.cmdline_path} names no slot; "
                    f"expected {' or '.join(self.slots)} or a value listed in installer.swupdate.cmdline_map",
                    backend=BACKEND,
                    phase="slot_info",
                )
            assert slot is not None
            return slot
        # booted_from = "env": rootpart as the bootloader left it, pinned per boot
        with contextlib.suppress(OSError, ValueError, RecursionError):
            pinned = json.loads(self.state_file.read_text())
            if isinstance(pinned, dict) and pinned.get("bootId") == boot_id and pinned.get("booted") in self.slots:
                return str(pinned["booted"])
        value = env.get(self.slot_var)
        if value not in self.slots:
            raise InstallerError(
                f"swupdate: bootloader variable {self.slot_var}={value!r} names no slot; expected "
                f"{' or '.join(self.slots)} (installer.swupdate.slots, set by the .swu's bootenv)",
                backend=BACKEND,
                phase="slot_info",
            )
        assert value is not None
        with map_installer_errors(BACKEND, "recording the booted slot"):
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            with effect("swupdate.booted-pin"):
                atomic_write(self.state_file, json.dumps({"bootId": boot_id, "booted": value}).encode(), mode=0o644)
        return value

    def slot_info_from(self, env: dict[str, str], booted: str, boot_id: str) -> SlotInfo:
        """Slot facts from the environment and the booted slot (the table in the package docstring)."""
        return slot_info_from_env(
            env, booted, boot_id, slots=self.slots, slot_var=self.slot_var, version_var=self.version_var, watched=self._watched()
        )

    def _watched(self) -> list[str]:
        return [self.slot_var, "ustate", "recovery_status", *self.commit_env, *self.trial_env]

    async def slot_info(self) -> SlotInfo:
        env = await self.read_env()
        boot_id = self._boot_id()
        return self.slot_info_from(env, self._booted(env, boot_id), boot_id)

    # ------------------------------------------------------------------ install
    async def install(
        self,
        source: InstallSource,
        *,
        progress: ProgressCallback | None = None,
        version: str | None = None,
        bundle_hash: str | None = None,  # SWUpdate has no such thing: the signature covers the hashes
    ) -> InstallOutcome:
        info = await self.slot_info()
        if info.pending is None and not info.committed:
            raise InstallerError(
                f"swupdate: refusing to install while slot {info.booted} runs on trial (ustate={info.extra.get('ustate')}): "
                f"commit it or roll back first; the other slot is the fallback",
                backend=BACKEND,
                phase="installing",
            )
        target = info.other(info.booted)
        selection = f"{self.software},{self.modes[self.slots.index(target)]}"
        argv = [*self.command_prefix, self.bin, "-l", str(self.log_level), "-B", self.bootloader]
        if self.public_key is not None:
            argv += ["-k", str(self.public_key)]
        if self.hwrevision:
            argv += ["-H", self.hwrevision]
        argv += ["-e", selection, *self.extra_args]
        what: str
        if isinstance(source, FileSource):
            argv += ["-i", str(source.path)]
            what = str(source.path)
            if not source.path.is_file():
                raise InstallerError(f"swupdate: image {source.path} not found (expected a .swu file)", backend=BACKEND, phase="installing")
        elif isinstance(source, StreamSource):
            argv += ["-i", "/dev/stdin"]  # 2022.12 rejects "-i -"; /dev/stdin reads the pipe
            what = "a stream"
        else:
            assert isinstance(source, UrlSource)
            argv += ["-d", f"-u {source.url}"]
            what = redact_url(source.url)
        if self.version_var:
            # the slot is about to be overwritten: its recorded version is void from here on
            await self.write_env({self.version_var.format(slot=target): None}, phase="clearing the slot's version")
        log.info("installing", slot=target, selection=selection, source=what)
        await _emit(progress, Progress("installing", 0.0, f"swupdate: writing slot {target} ({selection})"))
        tracker = ProgressTracker()
        with map_installer_errors(BACKEND, "installing"):
            runtime = Path(tempfile.mkdtemp(prefix="ota-swu-", dir=self.tmp_dir))
            try:
                if len(str(runtime / "sockinstctrl").encode()) > 100:
                    raise InstallerError(
                        f"swupdate: {runtime} is too long a path for swupdate's sockets (108 bytes with the socket "
                        f"name); set installer.swupdate.tmp_dir to a shorter directory",
                        backend=BACKEND,
                        phase="installing",
                    )
                run = await self._run_install(argv, runtime, source, tracker, progress)
            finally:
                shutil.rmtree(runtime, ignore_errors=True)
        if run.returncode != 0:
            summary, _ = error_summary(run.stdout, run.stderr)
            summary = redact_text(summary)
            raise InstallerError(
                f"swupdate: installing {what} into slot {target} (-e {selection}) failed (exit {run.returncode}): {summary}",
                backend=BACKEND,
                phase="installing",
                returncode=run.returncode,
                stderr_tail=redact_text(self._failure_tail(run)),
            )
        if self.verify_switch and self.bootloader != "none":
            env = await self.read_env()
            if env.get(self.slot_var) != target:
                raise InstallerError(
                    f"swupdate: slot {target} was written (-e {selection}), but the bootloader variable "
                    f"{self.slot_var} is {env.get(self.slot_var)!r}, expected {target!r}: the .swu's bootenv for mode "
                    f"{selection.split(',', 1)[1]!r} must set {self.slot_var} = \"{target}\" (or installer.swupdate.selection/slots do not match it)",
                    backend=BACKEND,
                    phase="installing",
                )
        installed = tracker.version or version or (read_swu_version(source.path) if isinstance(source, FileSource) else None)
        if self.version_var and installed:
            await self.write_env({self.version_var.format(slot=target): installed}, phase="recording the version")
        await _emit(progress, Progress("installing", 100.0, f"slot {target} written"))
        log.info("installed", slot=target, version=installed)
        return InstallOutcome(target_slot=target, needs_reboot=True, version=installed)

    @staticmethod
    def _failure_tail(run: _Run) -> str:
        _, causes = error_summary(run.stdout, run.stderr)
        text = run.stderr.strip()
        if causes:
            text += "\n" + "\n".join(causes)
        return tail(text or run.stdout, lines=25)

    async def _run_install(
        self,
        argv: list[str],
        runtime: Path,
        source: InstallSource,
        tracker: ProgressTracker,
        progress: ProgressCallback | None,
    ) -> _Run:
        env = dict(os.environ)
        # Newer SWUpdate prefers RUNTIME_DIRECTORY, then TMPDIR, for its sockets: pin both.
        env["TMPDIR"] = str(runtime)
        env["RUNTIME_DIRECTORY"] = str(runtime)
        stream = isinstance(source, StreamSource)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stream else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        out_task = asyncio.create_task(proc.stdout.read())
        err_task = asyncio.create_task(proc.stderr.read())
        prog_task = asyncio.create_task(self._watch_progress(runtime / "swupdateprog", proc, tracker, progress))
        feed_task = asyncio.create_task(self._feed(proc, source.chunks)) if isinstance(source, StreamSource) else None
        wait_task = asyncio.create_task(proc.wait())
        try:
            async with asyncio.timeout(self.timeout):
                waiters: set[asyncio.Task[Any]] = {wait_task} if feed_task is None else {wait_task, feed_task}
                while not wait_task.done():
                    done, waiters = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    if feed_task is not None and feed_task in done:
                        feed_task.result()  # the source failed (digest, network): stop swupdate, raise that
                stdout, stderr = await out_task, await err_task
            # the socket closes when swupdate exits: let the reader take the last messages
            await asyncio.wait({prog_task}, timeout=1.0)
        except TimeoutError:
            await self._stop(proc)
            raise InstallerError(
                f"swupdate: install timed out after {self.timeout:.0f} s (installer.swupdate.timeout); swupdate was stopped",
                backend=BACKEND,
                phase="installing",
                stderr_tail=redact_text(tail(await _collect(err_task))),
            ) from None
        except BaseException:
            await self._stop(proc)
            raise
        finally:
            if feed_task is not None and not feed_task.done():
                feed_task.cancel()
                with contextlib.suppress(BaseException):
                    await feed_task
            if isinstance(source, StreamSource):
                aclose = getattr(source.chunks, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            await _finish(prog_task, out_task, err_task, wait_task)
        assert proc.returncode is not None
        return _Run(proc.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))

    @staticmethod
    async def _feed(proc: asyncio.subprocess.Process, chunks: AsyncIterator[bytes]) -> None:
        """Pipe the stream into swupdate, holding back its last bytes until the source ends cleanly."""
        assert proc.stdin is not None
        held = bytearray()
        try:
            async for chunk in chunks:
                held += chunk
                if len(held) > HOLD_BACK:
                    proc.stdin.write(bytes(held[:-HOLD_BACK]))
                    del held[:-HOLD_BACK]
                    await proc.stdin.drain()
            proc.stdin.write(bytes(held))
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            return  # swupdate stopped reading: it failed, and its exit status and text say why

    @staticmethod
    async def _stop(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                async with asyncio.timeout(wait):
                    await proc.wait()
                return
            except TimeoutError:
                continue

    @staticmethod
    async def _watch_progress(
        path: Path,
        proc: asyncio.subprocess.Process,
        tracker: ProgressTracker,
        progress: ProgressCallback | None,
    ) -> None:
        """Follow the progress socket while swupdate runs (best effort: the exit status decides)."""
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while proc.returncode is None:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.005)  # swupdate has not bound the socket yet
        if reader is None or writer is None:
            return
        decoder = ProgressDecoder()
        try:
            while True:
                data = await reader.read(65536)
                messages = decoder.feed(data) if data else decoder.finish()
                for msg in messages:
                    item = tracker.update(msg)
                    if item is not None and item.percent < 100.0:
                        await _emit(progress, item)
                if not data:
                    return
        except ValueError as exc:
            log.warning("progress socket not understood; progress reporting stops", error=str(exc))
        except OSError:
            return
        finally:
            writer.close()

    # ------------------------------------------------------------------ boot decisions
    async def commit(self) -> None:
        info = await self.slot_info()
        with map_installer_errors(BACKEND, "committing"):
            await self.write_env({self.slot_var: info.booted, "ustate": str(USTATE_OK), **self.commit_env}, phase="committing")

    async def mark_bad(self, slot: str) -> None:
        if slot not in self.slots:
            raise InstallerError(f"swupdate: no slot {slot!r}; slots are {' and '.join(self.slots)}", backend=BACKEND, phase="mark_bad")
        await self.write_env({self.slot_var: self.other(slot), "ustate": str(USTATE_FAILED), **self.commit_env}, phase="marking slot bad")

    async def reboot(self, *, spare: bool) -> None:
        info = await self.slot_info()
        if spare and info.pending is None and info.committed:
            spare_slot = self.other(info.booted)
            if info.slots[spare_slot].bootable:
                # nothing installed in this boot switched the slot: arm a try of the spare ourselves
                await self.write_env({self.slot_var: spare_slot, "ustate": str(USTATE_INSTALLED), **self.trial_env}, phase="arming the spare slot")
        elif not spare and info.pending is not None:
            # a pending switch would make the next boot a try of the new slot: cancel it
            await self.write_env({self.slot_var: info.booted, "ustate": str(USTATE_OK), **self.commit_env}, phase="cancelling the pending slot switch")
        log.info("rebooting", spare=spare, command=self.reboot_command)
        with map_installer_errors(BACKEND, "rebooting"):
            run = await self._run(self.reboot_command, timeout=300.0)
        if run.returncode != 0:
            raise InstallerError(
                f"swupdate: reboot command {' '.join(self.reboot_command)!r} failed (exit {run.returncode}): "
                f"{tail(run.stderr or run.stdout, lines=3) or 'no output'}",
                backend=BACKEND,
                phase="rebooting",
                returncode=run.returncode,
                stderr_tail=tail(run.stderr or run.stdout),
            )

    async def image_facts(self, path: Path) -> ImageFacts:
        """The ``version`` of the .swu's sw-description."""
        return ImageFacts(version=await asyncio.to_thread(read_swu_version, path))

    def bundle_hash(self, metadata: Mapping[str, Any]) -> str | None:
        return None

    def hub_config(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        return None

    # ------------------------------------------------------------------ processes
    async def _run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float) -> _Run:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate(stdin)
        except BaseException:
            await self._stop(proc)
            raise
        assert proc.returncode is not None
        return _Run(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


async def _collect(task: asyncio.Task[bytes]) -> bytes:
    """What a pipe reader got, once its process is gone (its pipe then ends)."""
    with contextlib.suppress(BaseException):
        async with asyncio.timeout(2.0):
            return await asyncio.shield(task)
    return b""


async def _finish(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task
