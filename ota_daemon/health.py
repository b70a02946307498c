"""The health gate: time-boxed checks that must all pass before the new slot is committed.

Check kinds: ``systemd`` (a unit is active), ``command`` (exits 0 within its timeout),
``http`` (GET answers 2xx), ``hub`` (the hub answers). Each check has its own timeout and is
retried until the gate's deadline; the gate fails naming the first check that never passed,
with the tail of its output. With no checks configured, the default is "the hub answers".
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httpx

from ota_daemon.clock import Clock
from ota_daemon.config import HealthCheckConfig, HealthConfig
from ota_daemon.download.client import HTTP_FAILURES, http_failure
from ota_daemon.errors import HealthCheckFailed, OtaError
from ota_daemon.hubs.base import Hub
from ota_daemon.installers.base import tail
from ota_daemon.redact import redact_text, redact_url


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    output: str = ""


DEFAULT_CHECKS = [HealthCheckConfig(kind="hub", name="hub reachable")]


async def _run_command(argv: list[str], timeout: float) -> tuple[int | None, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        return None, f"cannot run {argv[0]}: {exc.strerror}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None, f"timed out after {timeout:g}s"
    return proc.returncode, out.decode("utf-8", "replace")


def _failure_output(code: int | None, out: str) -> str:
    """A failed command's output tail, ending with its exit code (when it exited)."""
    text = tail(out).rstrip()
    if code is None:
        return text
    return f"{text}\nexited with code {code}" if text else f"exited with code {code}"


class HealthGate:
    def __init__(self, config: HealthConfig, *, hub: Hub | None, clock: Clock, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.hub = hub
        self.clock = clock
        self.http = http

    @property
    def checks(self) -> list[HealthCheckConfig]:
        return self.config.checks if self.config.checks is not None else DEFAULT_CHECKS

    async def run_check(self, check: HealthCheckConfig) -> CheckResult:
        name = check.label
        if check.kind == "command":
            code, out = await _run_command(list(check.command or []), check.timeout)
            return CheckResult(name, code == 0, _failure_output(code, out) if code != 0 else "")
        if check.kind == "systemd":
            code, out = await _run_command(["systemctl", "is-active", str(check.unit)], check.timeout)
            return CheckResult(name, code == 0, _failure_output(code, out) if code != 0 else "")
        if check.kind == "http":
            if self.http is None:
                return CheckResult(name, False, "no HTTP client")
            try:
                resp = await self.http.get(str(check.url), timeout=check.timeout)
            except HTTP_FAILURES as exc:
                return CheckResult(name, False, f"{redact_url(str(check.url))}: {http_failure(exc)}")
            ok = 200 <= resp.status_code < 300
            return CheckResult(name, ok, "" if ok else f"HTTP {resp.status_code}")
        if check.kind == "hub":
            if self.hub is None:
                return CheckResult(name, False, "no hub")
            try:
                await asyncio.wait_for(self.hub.ping(), check.timeout)
            except (OtaError, TimeoutError, OSError) as exc:
                return CheckResult(name, False, redact_text(str(exc)) or type(exc).__name__)
            return CheckResult(name, True)
        return CheckResult(name, False, f"unknown check kind {check.kind!r}")  # pragma: no cover

    async def run(self) -> list[CheckResult]:
        """Run every check until all pass or the deadline passes; raise HealthCheckFailed."""
        deadline = self.clock.monotonic() + self.config.deadline
        pending = list(self.checks)
        results: dict[str, CheckResult] = {}
        while True:
            still = []
            for check in pending:
                result = await self.run_check(check)
                results[result.name] = result
                if not result.ok:
                    still.append(check)
            pending = still
            if not pending:
                return list(results.values())
            if self.clock.monotonic() + self.config.interval > deadline:
                failed = results[pending[0].label]
                lines = [line.strip() for line in failed.output.splitlines() if line.strip()]
                raise HealthCheckFailed(
                    f"health check {failed.name!r} did not pass within {self.config.deadline:g}s: {'; '.join(lines[-2:]) if lines else 'failed'}",
                    check=failed.name,
                    output_tail=failed.output,
                )
            await self.clock.sleep(self.config.interval)
