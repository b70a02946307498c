"""Contract tests: the fake ``nexigon-agent`` CLI reproduces the facts of spec §1 and §2.

Each test pins one documented fact (output format, exit code, error text, path rule,
NotFound behaviour) so that the double cannot drift from the real agent.
"""

from __future__ import annotations

import json
import re

import pytest

from .conftest import run_agent
from .double import ids
from .double.fixture import NexigonDouble

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d*[1-9])?Z$")


def test_device_id_prints_id_and_newline_after_get_actor(nexigon_hub_double: NexigonDouble) -> None:
    """`device id` prints the device id plus a newline and still runs actor_GetActor."""
    mark = nexigon_hub_double.mark()
    proc = run_agent(nexigon_hub_double, "device", "id")
    assert proc.returncode == 0
    assert proc.stdout == nexigon_hub_double.device_id + "\n"
    assert ids.is_id(proc.stdout.strip(), ids.DEVICE)
    assert nexigon_hub_double.action_names(since=mark) == ["actor_GetActor"]


def test_logs_go_to_stderr_only(nexigon_hub_double: NexigonDouble) -> None:
    """Every run logs `starting Nexigon Agent` on stderr; stdout carries only the result."""
    proc = run_agent(nexigon_hub_double, "device", "properties", "get", "dev.nexigon.ota.config")
    assert "starting Nexigon Agent" in proc.stderr
    assert "starting" not in proc.stdout
    quiet = run_agent(nexigon_hub_double, "--log-level", "off", "device", "id")
    assert quiet.stderr == ""


def test_properties_get_found_is_compact_json_with_newline(nexigon_hub_double: NexigonDouble) -> None:
    """`device properties get` prints compact JSON + newline with every DeviceProperty field inlined."""
    nexigon_hub_double.set_config({"path": "fleet/system/beta"})
    proc = run_agent(nexigon_hub_double, "device", "properties", "get", "dev.nexigon.ota.config")
    assert proc.returncode == 0
    assert proc.stdout.endswith("}\n") and proc.stdout.count("\n") == 1
    assert " " not in proc.stdout.replace("fleet/system/beta", "")
    data = json.loads(proc.stdout)
    assert list(data) == ["result", "name", "value", "protected", "version", "lastUpdated"]
    assert data["result"] == "Found" and data["name"] == "dev.nexigon.ota.config"
    assert data["value"] == {"path": "fleet/system/beta"} and data["protected"] is False
    assert data["version"] == 1 and TS_RE.match(data["lastUpdated"])


def test_properties_get_not_found_exits_zero(nexigon_hub_double: NexigonDouble) -> None:
    """A missing property prints `{"result":"NotFound"}` and exits 0."""
    proc = run_agent(nexigon_hub_double, "device", "properties", "get", "dev.nexigon.ota.status")
    assert (proc.returncode, proc.stdout) == (0, '{"result":"NotFound"}\n')


def test_properties_set_prints_nothing_and_bumps_version(nexigon_hub_double: NexigonDouble) -> None:
    """`properties set` prints nothing; each write increments the version (no CAS on the CLI)."""
    for expected in (1, 2):
        proc = run_agent(nexigon_hub_double, "device", "properties", "set", "dev.nexigon.ota.status", '{"state":"idle"}')
        assert (proc.returncode, proc.stdout) == (0, "")
        prop = nexigon_hub_double.get_property("dev.nexigon.ota.status")
        assert prop is not None and prop["version"] == expected and prop["value"] == {"state": "idle"}
    set_input = [a["input"] for a in nexigon_hub_double.actions() if a["action"] == "devices_SetProperty"][-1]
    assert set(set_input) == {"deviceId", "name", "value"}


def test_properties_set_rejects_invalid_json(nexigon_hub_double: NexigonDouble) -> None:
    """VALUE must be JSON: otherwise exit 1 with `Error: device property value must be valid JSON`."""
    proc = run_agent(nexigon_hub_double, "device", "properties", "set", "x.y", "not json")
    assert proc.returncode == 1
    assert "Error: device property value must be valid JSON\n" in proc.stderr
    assert nexigon_hub_double.get_property("x.y") is None


def test_protected_property_write_is_forbidden(nexigon_hub_double: NexigonDouble) -> None:
    """Writing a protected property fails with `Error: Forbidden: …`, exit 1 (kind is a spec GUESS)."""
    nexigon_hub_double.hub.set_property("dev.nexigon.locked", 1, protected=True)
    proc = run_agent(nexigon_hub_double, "device", "properties", "set", "dev.nexigon.locked", "2")
    assert proc.returncode == 1
    assert re.search(r"^Error: Forbidden: ", proc.stderr, re.M)


def test_invalid_property_name_is_an_invalid_action_error(nexigon_hub_double: NexigonDouble) -> None:
    """Names are validated by the hub: a bad one prints `Error: Invalid: …`, exit 1."""
    proc = run_agent(nexigon_hub_double, "device", "properties", "get", "-bad")
    assert proc.returncode == 2  # clap: looks like a flag
    proc = run_agent(nexigon_hub_double, "device", "properties", "get", ".bad")
    assert proc.returncode == 1 and re.search(r"^Error: Invalid: ", proc.stderr, re.M)


@pytest.mark.parametrize(
    "argv",
    [
        ["device", "properties", "get"],
        ["device", "id", "--bogus"],
        ["events", "emit", "--severity", "loud", '"x"'],
        ["device", "--log-level", "info", "id"],  # global flags go before the subcommand
    ],
)
def test_usage_errors_exit_two_with_usage(nexigon_hub_double: NexigonDouble, argv: list[str]) -> None:
    """Clap usage errors (missing argument, unknown flag, bad --severity) exit 2 with usage on stderr."""
    proc = run_agent(nexigon_hub_double, *argv)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr.lower() and proc.stdout == ""


def test_action_error_prints_kind_and_message(nexigon_hub_double: NexigonDouble) -> None:
    """A hub ActionError prints `Error: <Kind>: <message>` (no context), exit 1."""
    nexigon_hub_double.inject_error("RateLimited", "slow down", action="devices_GetProperty")
    proc = run_agent(nexigon_hub_double, "device", "properties", "get", "a.b")
    assert proc.returncode == 1
    assert "Error: RateLimited: slow down\n" in proc.stderr


def test_every_invocation_costs_a_get_actor(nexigon_hub_double: NexigonDouble) -> None:
    """Each run does actor_GetActor first, then the command's actions."""
    nexigon_hub_double.publish_release("build-1")
    mark = nexigon_hub_double.mark()
    run_agent(nexigon_hub_double, "device", "properties", "get", "a.b")
    run_agent(nexigon_hub_double, "repositories", "versions", "info", "fleet/system/stable")
    assert nexigon_hub_double.action_names(since=mark) == [
        "actor_GetActor",
        "devices_GetProperty",
        "actor_GetActor",
        "repositories_ResolveVersionByPath",
        "repositories_GetVersionDetails",
    ]
    assert len(nexigon_hub_double.invocations(since=mark)) == 2


def test_socket_absent_logs_fallback_warning(nexigon_hub_double: NexigonDouble) -> None:
    """Without the socket the CLI warns and falls back to a direct hub connection (still works)."""
    nexigon_hub_double.agent_down()
    proc = run_agent(nexigon_hub_double, "device", "id")
    assert proc.returncode == 0
    assert "agent local API unavailable" in proc.stderr and "falling back to direct hub connection" in proc.stderr


def test_hub_offline_fails_with_context(nexigon_hub_double: NexigonDouble) -> None:
    """With the hub unreachable the CLI exits 1 with an anyhow context and a `Caused by:` chain."""
    nexigon_hub_double.hub_offline()
    proc = run_agent(nexigon_hub_double, "device", "id")
    assert proc.returncode == 1
    assert re.search(r"^Error: .+\n\nCaused by:\n    .+", proc.stderr, re.M)


# ---------------------------------------------------------------------- repositories


def test_versions_info_is_pretty_json_without_trailing_newline(nexigon_hub_double: NexigonDouble) -> None:
    """`versions info` prints GetPackageVersionDetailsOutput pretty-printed, no trailing newline."""
    release = nexigon_hub_double.publish_release("build-20260401120000-abc1234", bundle_hash="b" * 64)
    proc = run_agent(nexigon_hub_double, "repositories", "versions", "info", "fleet/system/stable")
    assert proc.returncode == 0
    assert proc.stdout.startswith("{\n  \"versionId\": ") and proc.stdout.endswith("}")
    doc = json.loads(proc.stdout)
    assert proc.stdout == json.dumps(doc, indent=2)
    assert list(doc) == ["versionId", "repositoryId", "packageId", "assets", "tags", "metadata"]  # no name: omitted
    assert doc["versionId"] == release.version_id and ids.is_id(doc["versionId"], ids.VERSION)
    assert ids.is_id(doc["repositoryId"], ids.REPOSITORY) and ids.is_id(doc["packageId"], ids.PACKAGE)
    image = next(a for a in doc["assets"] if a["filename"] == "customized-pi5.rugixb")
    assert list(image) == ["filename", "assetId", "size", "digest", "status", "storage", "metadata"]
    assert image["assetId"] == release.image_asset_id and ids.is_id(image["assetId"], ids.ASSET)
    assert image["size"] == len(release.image) and image["digest"] == release.digest
    assert re.fullmatch(r"sha256_[0-9a-f]{64}", image["digest"])
    assert image["status"] == "Available" and image["storage"]["status"] == "Verified"
    assert image["metadata"] == {"version": release.version, "rugix": {"bundleHash": "b" * 64}}
    assert {"tag": "build-20260401120000-abc1234", "locked": True} in doc["tags"]
    assert {"tag": "stable", "locked": False} in doc["tags"]
    assert doc["metadata"] == {"imageVersion": "build-20260401120000-abc1234"}
    assert any(a["filename"] == "customized-pi5.build-info.json" for a in doc["assets"])


def test_build_info_asset_has_bakery_shape(nexigon_hub_double: NexigonDouble) -> None:
    """The `<system>.build-info.json` asset holds exactly {name, release: {id, version}} (spec §7)."""
    release = nexigon_hub_double.publish_release("build-7")
    asset_id = release.assets["customized-pi5.build-info.json"]
    state = nexigon_hub_double.hub.read()
    data = json.loads(nexigon_hub_double.hub.blob_path(state["assets"][asset_id]["digest"]).read_bytes())
    assert data == {"name": "customized-pi5", "release": {"id": "customized-pi5@build-7", "version": "build-7"}}


def test_versions_info_with_name_includes_it(nexigon_hub_double: NexigonDouble) -> None:
    """The optional `name` appears after packageId when set."""
    nexigon_hub_double.publish_release("build-2", name="Release 2")
    doc = json.loads(run_agent(nexigon_hub_double, "repositories", "versions", "info", "fleet/system/stable").stdout)
    assert list(doc)[:4] == ["versionId", "repositoryId", "packageId", "name"] and doc["name"] == "Release 2"


def test_versions_info_by_full_id_skips_resolution(nexigon_hub_double: NexigonDouble) -> None:
    """A complete `pkg_v_…` id goes straight to GetVersionDetails."""
    release = nexigon_hub_double.publish_release("build-3")
    mark = nexigon_hub_double.mark()
    proc = run_agent(nexigon_hub_double, "repositories", "versions", "info", release.version_id)
    assert json.loads(proc.stdout)["versionId"] == release.version_id
    assert nexigon_hub_double.action_names(since=mark) == ["actor_GetActor", "repositories_GetVersionDetails"]


def test_versions_info_not_found_exits_one(nexigon_hub_double: NexigonDouble) -> None:
    """`versions info` of a missing tag: `Error: package version <path> not found`, exit 1."""
    nexigon_hub_double.publish_release("build-1")
    proc = run_agent(nexigon_hub_double, "repositories", "versions", "info", "fleet/system/nope")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Error: package version fleet/system/nope not found\n" in proc.stderr


def test_versions_resolve_found_and_not_found_exit_zero(nexigon_hub_double: NexigonDouble) -> None:
    """`versions resolve` prints Found (ids) or NotFound, exit 0 both ways, pretty without newline."""
    release = nexigon_hub_double.publish_release("build-1")
    found = run_agent(nexigon_hub_double, "repositories", "versions", "resolve", "fleet/system/stable")
    assert found.returncode == 0 and not found.stdout.endswith("\n")
    data = json.loads(found.stdout)
    assert list(data) == ["result", "repositoryId", "packageId", "versionId"]
    assert data["result"] == "Found" and data["versionId"] == release.version_id
    missing = run_agent(nexigon_hub_double, "repositories", "versions", "resolve", "fleet/other/stable")
    assert (missing.returncode, missing.stdout) == (0, '{\n  "result": "NotFound"\n}')


def test_versions_resolve_accepts_no_bare_id(nexigon_hub_double: NexigonDouble) -> None:
    """`versions resolve` takes the path form only: a bare version id is a path with one part."""
    release = nexigon_hub_double.publish_release("build-1")
    proc = run_agent(nexigon_hub_double, "repositories", "versions", "resolve", release.version_id)
    assert proc.returncode == 1 and "Error: missing package" in proc.stderr


def test_path_components_may_be_ids(nexigon_hub_double: NexigonDouble) -> None:
    """Each component is "Name or ID": `repo_…/pkg_…/pkg_v_…` resolves (spec GUESS, hub side)."""
    release = nexigon_hub_double.publish_release("build-1")
    doc = json.loads(run_agent(nexigon_hub_double, "repositories", "versions", "info", "fleet/system/stable").stdout)
    path = f"{doc['repositoryId']}/{doc['packageId']}/{release.version_id}"
    found = json.loads(run_agent(nexigon_hub_double, "repositories", "versions", "resolve", path).stdout)
    assert found["versionId"] == release.version_id


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("fleet/system/stable/extra", "too many parts in version path"),
        ("fleet/system/", "version tag must not be empty"),
        ("fleet", "missing package"),
    ],
)
def test_version_path_rules(nexigon_hub_double: NexigonDouble, path: str, message: str) -> None:
    """Version paths have exactly three non-empty components; the documented errors exit 1."""
    proc = run_agent(nexigon_hub_double, "repositories", "versions", "info", path)
    assert proc.returncode == 1
    assert f"Error: {message}\n" in proc.stderr


def test_invalid_tag_name_is_invalid_action_error(nexigon_hub_double: NexigonDouble) -> None:
    """Tags must match ^[a-zA-Z0-9][a-zA-Z0-9._-]*$ (1..128): otherwise `Error: Invalid: …`."""
    nexigon_hub_double.publish_release("build-1")
    for bad in ("_stable", "st@ble", "x" * 129):
        proc = run_agent(nexigon_hub_double, "repositories", "versions", "resolve", f"fleet/system/{bad}")
        assert proc.returncode == 1 and re.search(r"^Error: Invalid: ", proc.stderr, re.M), bad


def test_issue_url_by_id_and_by_path(nexigon_hub_double: NexigonDouble) -> None:
    """`issue-url` prints pretty `{"url": …}` (no expiry field); an id skips asset resolution."""
    release = nexigon_hub_double.publish_release("build-1")
    mark = nexigon_hub_double.mark()
    by_id = run_agent(nexigon_hub_double, "repositories", "issue-url", release.image_asset_id)
    assert by_id.returncode == 0 and by_id.stdout.startswith('{\n  "url": "http') and by_id.stdout.endswith('"\n}')
    assert list(json.loads(by_id.stdout)) == ["url"]
    assert nexigon_hub_double.action_names(since=mark) == ["actor_GetActor", "repositories_IssueAssetDownloadUrl"]
    mark = nexigon_hub_double.mark()
    by_path = run_agent(nexigon_hub_double, "repositories", "issue-url", "fleet/system/stable/customized-pi5.rugixb")
    assert by_path.returncode == 0
    assert nexigon_hub_double.action_names(since=mark) == [
        "actor_GetActor",
        "repositories_ResolveVersionAssetByPath",
        "repositories_IssueAssetDownloadUrl",
    ]


def test_issue_url_not_found_exits_one(nexigon_hub_double: NexigonDouble) -> None:
    """A missing asset: `Error: package version asset <path> not found`, exit 1."""
    nexigon_hub_double.publish_release("build-1")
    proc = run_agent(nexigon_hub_double, "repositories", "issue-url", "fleet/system/stable/other.rugixb")
    assert proc.returncode == 1
    assert "Error: package version asset fleet/system/stable/other.rugixb not found\n" in proc.stderr


def test_asset_paths_keep_nested_filenames(nexigon_hub_double: NexigonDouble) -> None:
    """Asset filenames may contain `/`; an empty component is an error; `repo_a_not-an-id/…` is a path."""
    nexigon_hub_double.publish_release("build-1", extra_assets={"docs/readme.txt": b"hello"})
    ok = run_agent(nexigon_hub_double, "repositories", "issue-url", "fleet/system/stable/docs/readme.txt")
    assert ok.returncode == 0
    empty = run_agent(nexigon_hub_double, "repositories", "issue-url", "fleet/system/stable/docs//readme.txt")
    assert empty.returncode == 1 and "Error: " in empty.stderr
    not_id = run_agent(nexigon_hub_double, "repositories", "issue-url", "repo_a_not-an-id/system/stable/x")
    assert not_id.returncode == 1
    assert "Error: package version asset repo_a_not-an-id/system/stable/x not found" in not_id.stderr


# ---------------------------------------------------------------------- events


def test_events_emit_maps_flags_to_a_device_event(nexigon_hub_double: NexigonDouble) -> None:
    """`events emit`: lowercase severity → capitalised, attributes split at the first `=` as JSON,
    duplicate keys keep the last, `--emitted-at` normalised to UTC, a dated event id, receivedAt set."""
    proc = run_agent(
        nexigon_hub_double,
        "events",
        "emit",
        "--severity",
        "warning",
        "--category",
        "ota",
        "--attribute",
        'currentVersion="1.0.0"',
        "--attribute",
        'expr="a=b"',
        "--attribute",
        "n=1",
        "--attribute",
        "n=2",
        "--emitted-at",
        "2026-05-15T09:07:18.5+02:00",
        '{"k": 1}',
    )
    assert (proc.returncode, proc.stdout) == (0, "")
    (event,) = nexigon_hub_double.events
    assert list(event) == ["eventId", "category", "severity", "body", "attributes", "emittedAt", "receivedAt"]
    assert ids.is_event_id(event["eventId"]) and len(event["eventId"].removeprefix("d_ev_")) == 22
    assert event["severity"] == "Warning" and event["category"] == "ota" and event["body"] == {"k": 1}
    assert event["attributes"] == {"currentVersion": "1.0.0", "expr": "a=b", "n": 2}
    assert event["emittedAt"] == "2026-05-15T07:07:18.5Z"
    assert TS_RE.match(event["receivedAt"])


def test_events_emit_defaults_and_omitted_category(nexigon_hub_double: NexigonDouble) -> None:
    """Severity defaults to info; without --category the field is omitted, not null."""
    assert run_agent(nexigon_hub_double, "events", "emit", '"hello"').returncode == 0
    (event,) = nexigon_hub_double.events
    assert event["severity"] == "Info" and "category" not in event and event["attributes"] == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--attribute", "novalue", '"x"'], "Error: invalid attribute: novalue"),
        (["--attribute", "k=unquoted", '"x"'], "Error: expected value at line 1 column 1"),
        (["--emitted-at", "2026-05-15T07:07:18", '"x"'], "Error: unable to parse `--emitted-at`"),
        (["not json"], "Error: unable to parse event body"),
    ],
)
def test_events_emit_errors(nexigon_hub_double: NexigonDouble, argv: list[str], message: str) -> None:
    """Bad attributes, an --emitted-at without offset, or a non-JSON body exit 1 and send nothing."""
    proc = run_agent(nexigon_hub_double, "events", "emit", *argv)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert nexigon_hub_double.events == []


def test_old_agent_lacks_emitted_at(nexigon_hub_double: NexigonDouble) -> None:
    """Agents before 2026-04-27 reject `--emitted-at` as a usage error (exit 2)."""
    nexigon_hub_double.old_agent()
    proc = run_agent(nexigon_hub_double, "events", "emit", "--emitted-at", "2026-05-15T07:07:18Z", '"x"')
    assert proc.returncode == 2


# ---------------------------------------------------------------------- hub model


def test_tags_locked_stay_floating_move(nexigon_hub_double: NexigonDouble) -> None:
    """A floating tag moves to a newer version; a locked tag cannot be reassigned (ActionError, GUESS)."""
    first = nexigon_hub_double.publish_release("build-1")
    second = nexigon_hub_double.publish_release("build-2", tags=())
    nexigon_hub_double.move_tag("stable", second)
    resolved = json.loads(run_agent(nexigon_hub_double, "repositories", "versions", "resolve", "fleet/system/stable").stdout)
    assert resolved["versionId"] == second.version_id
    with pytest.raises(Exception, match="locked"):
        nexigon_hub_double.move_tag("build-1", second)
    locked = json.loads(run_agent(nexigon_hub_double, "repositories", "versions", "resolve", "fleet/system/build-1").stdout)
    assert locked["versionId"] == first.version_id


def test_assets_are_deduplicated_by_digest(nexigon_hub_double: NexigonDouble) -> None:
    """The same bytes in two versions are one asset (same assetId, referenceCount 2)."""
    first = nexigon_hub_double.publish_release("build-1", image=b"same bytes")
    second = nexigon_hub_double.publish_release("build-2", image=b"same bytes")
    assert first.image_asset_id == second.image_asset_id
    details = nexigon_hub_double.hub.execute("repositories_GetAssetDetails", {"assetId": first.image_asset_id}, via="test")
    assert details["referenceCount"] == 2 and details["size"] == len(b"same bytes")
