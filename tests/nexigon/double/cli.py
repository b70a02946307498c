"""The fake ``nexigon-agent`` one-shot CLI (spec §1), backed by the double's hub state.

Reproduced: global flags before the subcommand; ``starting Nexigon Agent`` and every other
log line on stderr; stdout only the result (compact JSON + newline for ``device properties
get``, pretty JSON without a trailing newline for ``repositories``); exit 0, exit 1 with
``Error: …`` (``Error: <Kind>: <message>`` for hub ActionErrors, ``Caused by:`` when a
context is attached), exit 2 with usage for clap errors; one ``actor_GetActor`` per run
before the command's actions; the fallback WARN line when the socket is absent; path
parsing (full-ID detection, 3 or 4+ components, no empty parts); the NotFound behaviours.

The double's CLI talks to the hub state directly (what the real CLI reaches through the
socket or its direct connection is the same hub). ``NEXIGON_DOUBLE_STATE`` names the state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC
from pathlib import Path
from typing import Any, NoReturn

from . import ids
from .hub import ActionError, HubState

LEVELS = ("off", "error", "warn", "info", "debug", "trace")


class Fail(Exception):
    """An anyhow error: ``Error: <message>`` (+ ``Caused by:``), exit 1."""

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause


class Agent:
    def __init__(self, hub: HubState, level: str) -> None:
        self.hub = hub
        self.level = level

    def log(self, level: str, message: str) -> None:
        if LEVELS.index(self.level) >= LEVELS.index(level):
            stamp = ids.fmt_ts(time.time())
            sys.stderr.write(f"{stamp} {level.upper():>5} nexigon_agent: {message}\n")
            sys.stderr.flush()

    def call(self, action: str, inp: dict[str, Any]) -> Any:
        if action in self.hub.read()["control"].get("hang", []):
            # a hub that never answers: the daemon's deadline kills this process
            time.sleep(120)
        try:
            return self.hub.execute(action, inp, via="cli")
        except ActionError as exc:
            # ActionError -> anyhow without context: "Error: <Kind>: <message>"
            raise Fail(f"{exc.kind}: {exc.message}") from None


def _json_error(exc: json.JSONDecodeError) -> str:
    """serde_json's wording (approximately: GUESS on exact text)."""
    msg = {"Expecting value": "expected value", "Extra data": "trailing characters"}.get(exc.msg, exc.msg.lower())
    return f"{msg} at line {exc.lineno} column {exc.colno}"


def _strict_json(text: str) -> Any:
    def reject(name: str) -> Any:
        raise json.JSONDecodeError("Expecting value", text, 0)

    return json.loads(text, parse_constant=reject)


def _pretty(value: Any) -> None:
    """``serde_json::to_writer_pretty``: two-space indent, no trailing newline."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False))
    sys.stdout.flush()


def _compact_line(value: Any) -> None:
    """``serde_json::to_string`` + ``println!``."""
    sys.stdout.write(json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------- paths


def parse_version_path(text: str) -> tuple[str, str, str]:
    """``repository/package/tag``: exactly three non-empty components."""
    parts = text.split("/")
    if not parts[0]:
        raise Fail("repository must not be empty")  # GUESS: wording
    if len(parts) < 2:
        raise Fail("missing package")
    if not parts[1]:
        raise Fail("package must not be empty")  # GUESS: wording
    if len(parts) < 3:
        raise Fail("missing version tag")  # GUESS: wording
    if not parts[2]:
        raise Fail("version tag must not be empty")
    if len(parts) > 3:
        raise Fail("too many parts in version path")
    return parts[0], parts[1], parts[2]


def parse_asset_path(text: str) -> tuple[str, str, str, str]:
    """``repository/package/tag/filename``; the filename may contain ``/``; nothing empty."""
    parts = text.split("/")
    if len(parts) < 4:
        parse_version_path(text)
        raise Fail("missing asset filename")  # GUESS: wording
    repository, package, tag = parse_version_path("/".join(parts[:3]))
    filename_parts = parts[3:]
    if any(not p for p in filename_parts):
        raise Fail("asset filename must not be empty")  # GUESS: wording
    return repository, package, tag, "/".join(filename_parts)


# ---------------------------------------------------------------------- commands


def cmd_device_id(agent: Agent, device_id: str, args: argparse.Namespace) -> None:
    sys.stdout.write(device_id + "\n")


def cmd_properties_get(agent: Agent, device_id: str, args: argparse.Namespace) -> None:
    _compact_line(agent.call("devices_GetProperty", {"deviceId": device_id, "name": args.name}))


def cmd_properties_set(agent: Agent, device_id: str, args: argparse.Namespace) -> None:
    try:
        value = _strict_json(args.value)
    except json.JSONDecodeError:
        raise Fail("device property value must be valid JSON") from None
    # No `protected`, no `expectedVersion`; the output (Set/VersionConflict/Deleted) is discarded.
    agent.call("devices_SetProperty", {"deviceId": device_id, "name": args.name, "value": value})


def cmd_events_emit(agent: Agent, device_id: str, args: argparse.Namespace) -> None:
    attributes: dict[str, Any] = {}
    for item in args.attribute:
        key, sep, raw = item.partition("=")
        if not sep:
            raise Fail(f"invalid attribute: {item}")
        try:
            attributes[key] = _strict_json(raw)  # duplicate keys: the last one wins
        except json.JSONDecodeError as exc:
            raise Fail(_json_error(exc)) from None
    emitted = time.time()
    if getattr(args, "emitted_at", None) is not None:
        try:
            emitted = ids.parse_rfc3339(args.emitted_at).astimezone(UTC).timestamp()
        except ValueError as exc:
            raise Fail("unable to parse `--emitted-at`", str(exc)) from None
    try:
        body = _strict_json(args.body)
    except json.JSONDecodeError as exc:
        raise Fail("unable to parse event body", _json_error(exc)) from None
    event: dict[str, Any] = {"eventId": ids.new_event_id(time.time()), "severity": args.severity.capitalize()}
    if args.category is not None:
        event["category"] = args.category
    event.update({"body": body, "attributes": attributes, "emittedAt": ids.fmt_ts(emitted)})
    agent.call("devices_PublishEvents", {"deviceId": device_id, "events": [event]})


def cmd_versions_info(agent: Agent, device_id: str, args: argparse.Namespace) -> None:
    if ids.is_id(args.version, ids.VERSION):
        version_id = args.version
    else:
        repository, package, tag = parse_version_path(args.version)
        found = agent.call(
            "repositories_ResolveVersionByPath", {"repository": repository, "package": package, "tag": tag}
        )
        if found.get("result") != "Found":
            raise Fail(f"package version {args.version} not found")
        version_id = found["versionId"]
    _pretty(agent.call("repositories_GetVersionDetails", {"versionId": version_id}))


def cmd_versions_resolve(agent: Agent, device_id: str, args: argparse.Namespace) -> None:
    repository, package, tag = parse_version_path(args.path)  # path form only, no bare id
    _pretty(agent.call("repositories_ResolveVersionByPath", {"repository": repository, "package": package, "tag": tag}))


def cmd_issue_url(agent: Agent, device_id: str, args: argparse.Namespace) -> None:
    if ids.is_id(args.asset, ids.ASSET):
        asset_id = args.asset
    else:
        repository, package, tag, filename = parse_asset_path(args.asset)
        found = agent.call(
            "repositories_ResolveVersionAssetByPath",
            {"repository": repository, "package": package, "tag": tag, "filename": filename},
        )
        if found.get("result") != "Found":
            raise Fail(f"package version asset {args.asset} not found")
        asset_id = found["assetId"]
    inp: dict[str, Any] = {"assetId": asset_id}
    if args.filename is not None:
        inp["filename"] = args.filename
    _pretty(agent.call("repositories_IssueAssetDownloadUrl", inp))


# ---------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # clap: usage on stderr, exit 2
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def build_parser(*, emitted_at: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(prog="nexigon-agent")
    parser.add_argument("--config", default="/etc/nexigon/agent.toml")
    parser.add_argument("--log-level", choices=LEVELS)
    parser.add_argument("--log-format", choices=("compact", "full"))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    device = sub.add_parser("device").add_subparsers(dest="device_cmd", required=True, parser_class=_Parser)
    device.add_parser("id").set_defaults(run=cmd_device_id)
    props = device.add_parser("properties").add_subparsers(dest="props_cmd", required=True, parser_class=_Parser)
    get = props.add_parser("get")
    get.add_argument("name")
    get.set_defaults(run=cmd_properties_get)
    set_ = props.add_parser("set")
    set_.add_argument("name")
    set_.add_argument("value")
    set_.set_defaults(run=cmd_properties_set)

    events = sub.add_parser("events").add_subparsers(dest="events_cmd", required=True, parser_class=_Parser)
    emit = events.add_parser("emit")
    emit.add_argument("--severity", default="info", choices=("trace", "debug", "info", "warning", "error", "critical"))
    emit.add_argument("--category")
    emit.add_argument("--attribute", action="append", default=[])
    if emitted_at:  # added 2026-04-27; older agents reject the flag (clap, exit 2)
        emit.add_argument("--emitted-at")
    emit.add_argument("body")
    emit.set_defaults(run=cmd_events_emit)

    repos = sub.add_parser("repositories").add_subparsers(dest="repos_cmd", required=True, parser_class=_Parser)
    versions = repos.add_parser("versions").add_subparsers(dest="versions_cmd", required=True, parser_class=_Parser)
    info = versions.add_parser("info")
    info.add_argument("version")
    info.set_defaults(run=cmd_versions_info)
    resolve = versions.add_parser("resolve")
    resolve.add_argument("path")
    resolve.set_defaults(run=cmd_versions_resolve)
    issue = repos.add_parser("issue-url")
    issue.add_argument("asset")
    issue.add_argument("--filename")
    issue.set_defaults(run=cmd_issue_url)
    return parser


def _print_error(fail: Fail) -> None:
    text = f"Error: {fail.message}\n"
    if fail.cause:
        text += f"\nCaused by:\n    {fail.cause}\n"
    sys.stderr.write(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    root = os.environ.get("NEXIGON_DOUBLE_STATE")
    if not root:
        sys.stderr.write("Error: NEXIGON_DOUBLE_STATE is not set (test double misconfigured)\n")
        return 1
    hub = HubState(Path(root))
    hub.record_invocation(argv)
    state = hub.read()
    args = build_parser(emitted_at=state["agent"]["supportsEmittedAt"]).parse_args(argv)
    level = args.log_level or os.environ.get("NEXIGON_LOG", "info").lower()
    agent = Agent(hub, level if level in LEVELS else "info")
    agent.log("info", "starting Nexigon Agent")
    try:
        socket_path = state["agent"]["socketPath"]
        online = state["control"]["online"]
        if not socket_path or not os.path.exists(socket_path):
            agent.log(
                "warn",
                "agent local API unavailable (No such file or directory (os error 2)); "
                "falling back to direct hub connection",
            )
        elif not online:
            agent.log(
                "warn",
                "agent local API unavailable (handshake rejected: Internal: hub executor is unavailable); "
                "falling back to direct hub connection",
            )
        if not online:
            raise Fail("unable to connect to hub", "error connecting to hub: Connection refused (os error 111)")  # GUESS
        actor = agent.call("actor_GetActor", {})["actor"]
        args.run(agent, actor["deviceId"], args)
    except Fail as fail:
        _print_error(fail)
        return 1
    return 0
