"""The attack suite: a loopback mirror under the attacker's control serves what it likes; each
attack ends refused, with a reason in the status and an event, and nothing installed.

The attacker writes straight into the served folder. Where an attack assumes stolen keys it
says which; the repository's targets role needs two signatures (``targets=2``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Key, Metadata, MetaFile, Root
from tuf.api.serialization.json import JSONSerializer

from ota_daemon.app import open_engine
from ota_daemon.engine import PassResult, Result
from ota_daemon.signing import keys as keystore
from ota_daemon.signing.publish import SignedRepository, State
from tests.signing.conftest import Signed
from tests.signing.helpers import asset_requests, events, fingerprint, run_pass, status


@pytest.fixture
async def trusting(signed: Signed) -> Signed:
    """The device has verified the repository once (it trusts its current metadata)."""
    assert (await run_pass(signed)).result is Result.UP_TO_DATE
    signed.server.requests.clear()
    return signed


async def refused(signed: Signed, *words: str, **hub: Any) -> PassResult:
    """Run a pass and check the refusal: words in result, status and an event; nothing installed."""
    device = fingerprint(signed.world.device_dir)
    seen = len(events(signed))
    result = await run_pass(signed, **hub)
    assert result.result in (Result.FAILED, Result.BLOCKED), result
    for word in words:
        assert word in result.message, (word, result.message)
        st = status(signed)
        assert word in str(st.get("lastError")) + str(st.get("reason")), (word, st)
        assert any(word in json.dumps(e) for e in events(signed)[seen:]), word
    assert asset_requests(signed) == []
    assert fingerprint(signed.world.device_dir) == device
    return result


def signers(signed: Signed, role: str) -> list[CryptoSigner]:
    """The keys of ``role`` (the attacker's loot, where a test says so)."""
    root = signed.repo.load().root.signed
    loaded = keystore.load(signed.keys)
    return [loaded[k] for k in root.roles[role].keyids if k in loaded]


def forge(repo: SignedRepository, state: State, loot: dict[str, list[CryptoSigner]]) -> None:
    """What the publisher's commit does, signed with whatever keys the attacker holds."""
    def sign(md: Metadata[Any], role: str) -> bytes:
        md.signatures.clear()
        for signer in loot.get(role, []):
            md.sign(signer, append=True)
        return md.to_bytes(JSONSerializer(compact=False))

    state.targets.signed.version += 1
    raw = sign(state.targets, "targets")
    (repo.metadata / f"{state.targets.signed.version}.targets.json").write_bytes(raw)
    state.snapshot.signed.meta["targets.json"] = MetaFile(state.targets.signed.version, len(raw), {"sha256": hashlib.sha256(raw).hexdigest()})
    state.snapshot.signed.version += 1
    raw = sign(state.snapshot, "snapshot")
    (repo.metadata / f"{state.snapshot.signed.version}.snapshot.json").write_bytes(raw)
    state.timestamp.signed.snapshot_meta = MetaFile(state.snapshot.signed.version, len(raw), {"sha256": hashlib.sha256(raw).hexdigest()})
    state.timestamp.signed.version += 1
    (repo.metadata / "timestamp.json").write_bytes(sign(state.timestamp, "timestamp"))


def current_targets(signed: Signed) -> Path:
    return signed.repo.metadata / f"{signed.repo.load().targets.signed.version}.targets.json"


def evil_image(signed: Signed) -> tuple[str, int]:
    image = signed.world.image("6.6.6")
    data = image.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (signed.repo.assets / f"sha256_{digest}").write_bytes(data)
    return digest, len(data)


# ---------------------------------------------------------------------------- the attacks


async def test_arbitrary_image(trusting: Signed) -> None:
    """An image with a valid digest in an unsigned document and in targets edited in place (not
    signed): the snapshot's hash of targets no longer matches. (Edited while nothing else
    changed, the device does not even fetch it: its verified copy stays current.)"""
    s = trusting
    s.publish("1.1.0")
    digest, size = evil_image(s)
    path = current_targets(s)
    data = json.loads(path.read_bytes())
    targets = data["signed"]["targets"]
    targets["system/6.6.6/sim-device.img"] = {"length": size, "hashes": {"sha256": digest}, "custom": {"ota": {"version": "6.6.6", "release": 9, "url": f"assets/sha256_{digest}"}}}
    data["signed"]["targets"]["system/tags/stable"]["custom"]["ota"]["version"] = "6.6.6"
    path.write_text(json.dumps(data))
    await refused(s, "does not match what the snapshot")


async def test_arbitrary_image_under_a_signed_name(trusting: Signed) -> None:
    """The mirror swaps the bytes behind a signed release's asset URL: the downloader checks
    them against the signed length and sha256; nothing is installed."""
    s = trusting
    s.publish("1.1.0")
    entry = s.repo.load().targets.signed.targets["system/1.1.0/sim-device.img"]
    asset = s.repo.assets / f"sha256_{entry.hashes['sha256']}"
    asset.write_bytes(s.world.image("6.6.6").read_bytes()[: entry.length].ljust(entry.length, b"\0"))
    device = fingerprint(s.world.device_dir)
    result = await run_pass(s)
    assert result.result is Result.FAILED and "sha256" in result.message
    assert fingerprint(s.world.device_dir) == device
    assert any(e["attributes"].get("event") == "failed" for e in events(s))


async def test_signed_older_release(trusting: Signed) -> None:
    """After release 2 is committed, the tag is validly signed back at release 1 (stolen targets
    keys, or a mistake) without marking a rollback."""
    s = trusting
    s.publish("1.1.0")
    assert (await run_pass(s)).result is Result.REBOOTING
    assert (await run_pass(s)).result is Result.COMPLETED
    assert (await run_pass(s)).result is Result.UP_TO_DATE
    state = s.repo.load()
    s.repo._point(state, "system", "stable", "1.0.0", files=["sim-device.build-info.json", "sim-device.img"], release=1, rollback=False, rollout=None)
    s.repo.commit(state, targets_changed=True)
    s.server.requests.clear()
    await refused(s, "committed release 2")


async def test_freeze_past_expiry(trusting: Signed) -> None:
    """The mirror keeps serving yesterday's metadata: the timestamp (one day) has expired."""
    trusting.clock.advance(2 * 86400)
    await refused(trusting, "expired")


async def test_freeze_through_304_on_a_running_daemon(trusting: Signed) -> None:
    """A daemon that keeps its last verification reuses it on a 304 only until it expires."""
    s = trusting
    async with open_engine(s.config(), clock=s.clock) as engine:
        assert (await engine.reconcile()).result is Result.UP_TO_DATE
        s.clock.advance(2 * 86400)
        result = await engine.reconcile()
    assert result.result is Result.FAILED and "expired" in result.message


async def test_replayed_timestamp(trusting: Signed) -> None:
    s = trusting
    old = (s.repo.metadata / "timestamp.json").read_bytes()
    s.repo.refresh()
    assert (await run_pass(s)).result is Result.UP_TO_DATE  # the device now trusts the newer one
    (s.repo.metadata / "timestamp.json").write_bytes(old)
    await refused(s, "older than what this device already trusts")


async def test_replayed_snapshot(trusting: Signed) -> None:
    """An earlier snapshot served under the current name: the timestamp's hash of it differs."""
    s = trusting
    s.publish("1.1.0")
    version = s.repo.load().snapshot.signed.version
    (s.repo.metadata / f"{version}.snapshot.json").write_bytes((s.repo.metadata / f"{version - 1}.snapshot.json").read_bytes())
    await refused(s, "does not match what the snapshot or timestamp signed")


async def test_mixed_targets(trusting: Signed) -> None:
    """Targets of an earlier state served with the current snapshot."""
    s = trusting
    s.publish("1.1.0")
    version = s.repo.load().targets.signed.version
    (s.repo.metadata / f"{version}.targets.json").write_bytes((s.repo.metadata / f"{version - 1}.targets.json").read_bytes())
    await refused(s, "does not match what the snapshot")


async def test_oversized_metadata(trusting: Signed) -> None:
    (trusting.repo.metadata / "timestamp.json").write_bytes(b" " * (1 << 20))
    await refused(trusting, "larger than allowed")


class _Endless(http.server.BaseHTTPRequestHandler):
    """Streams an endless timestamp.json (bounded here: stops after 64 MiB or a closed socket)."""

    sent = 0

    def log_message(self, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        chunk = b" " * 65536
        with contextlib.suppress(OSError):
            for _ in range(1024):
                self.wfile.write(chunk)
                type(self).sent += len(chunk)


@contextlib.contextmanager
def endless_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


async def test_endless_metadata(trusting: Signed) -> None:
    """An endless response is cut at TUF's cap for the role, not read to the end."""
    with endless_server() as url:
        await refused(trusting, "more than the 16384 bytes allowed", url=url)
    assert _Endless.sent < 64 * 1024 * 1024


async def test_image_for_another_system(trusting: Signed) -> None:
    """A validly signed release built for another system."""
    s = trusting
    s.publish("1.1.0", system="other-board")
    await refused(s, "built for system 'other-board'")


async def test_tag_moved_without_signature(trusting: Signed) -> None:
    """The tag entry edited; the online snapshot and timestamp keys (stolen) re-sign around it,
    but targets carries no valid signature."""
    s = trusting
    s.publish("1.1.0")
    assert (await run_pass(s)).result is Result.REBOOTING
    assert (await run_pass(s)).result is Result.COMPLETED
    s.server.requests.clear()
    state = s.repo.load()
    entry = state.targets.signed.targets["system/tags/stable"]
    entry.unrecognized_fields["custom"]["ota"]["version"] = "1.0.0"
    forge(s.repo, state, {"snapshot": signers(s, "snapshot"), "timestamp": signers(s, "timestamp")})
    await refused(s, "lacks the signatures")


async def test_one_of_two_targets_keys(trusting: Signed) -> None:
    """One targets key (of a threshold of two) plus the online keys: a new release signed with
    it is refused."""
    s = trusting
    digest, size = evil_image(s)
    state = s.repo.load()
    from tuf.api.metadata import TargetFile

    ota = {"version": "6.6.6", "release": 9, "url": f"assets/sha256_{digest}", "system": "sim-device"}
    state.targets.signed.targets["system/6.6.6/sim-device.img"] = TargetFile(size, {"sha256": digest}, "system/6.6.6/sim-device.img", {"custom": {"ota": ota}})
    s.repo._point(state, "system", "stable", "6.6.6", files=["sim-device.img"], release=9, rollback=False, rollout=None)
    forge(s.repo, state, {"targets": signers(s, "targets")[:1], "snapshot": signers(s, "snapshot"), "timestamp": signers(s, "timestamp")})
    await refused(s, "lacks the signatures")


async def test_root_rotation_reaches_a_device_with_the_old_root(trusting: Signed) -> None:
    """Keys rotate (targets, then root): the device, which pinned root 1, follows the signed chain
    and installs a release signed only by the new keys."""
    s = trusting
    s.repo.rotate("targets", count=2)
    s.repo.rotate("root")
    s.publish("1.1.0")
    assert (await run_pass(s)).result is Result.REBOOTING
    trusted = Metadata[Root].from_bytes((s.world.state_dir / "signed" / "fleet" / "root.json").read_bytes())
    assert trusted.signed.version == 3


async def test_root_rotation_by_the_attacker(trusting: Signed) -> None:
    """A root 2 with the attacker's keys, not signed by root 1's keys, is not followed."""
    s = trusting
    state = s.repo.load()
    root = state.root.signed
    mine = CryptoSigner.generate_ed25519()
    for role in ("root", "targets", "snapshot", "timestamp"):
        for keyid in list(root.roles[role].keyids):
            root.revoke_key(keyid, role)
        root.add_key(Key.from_dict(mine.public_key.keyid, mine.public_key.to_dict()), role)
        root.roles[role].threshold = 1
    root.version += 1
    state.root.signatures.clear()
    state.root.sign(mine)
    (s.repo.metadata / "2.root.json").write_bytes(state.root.to_bytes(JSONSerializer(compact=False)))
    forge(s.repo, state, {"targets": [mine], "snapshot": [mine], "timestamp": [mine]})
    await refused(s, "lacks the signatures")
