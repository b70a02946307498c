"""Publishing a signed repository: ``ota-daemon repo`` init/publish/promote/rollout/refresh/rotate,
checked with ``repo verify`` (TUF's workflow from the pinned root, as a device runs it)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from ota_daemon.cli import main
from ota_daemon.errors import UsageError
from ota_daemon.signing.layout import parse_tag
from ota_daemon.signing.publish import SignedRepository
from ota_daemon.signing.verify import check_repository


def cli(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


@pytest.fixture
def repo(tmp_path: Path) -> SignedRepository:
    r = SignedRepository(tmp_path / "www" / "fleet", tmp_path / "keys")
    r.init(thresholds={"targets": 2})
    return r


def image(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def verify(repo: SignedRepository, tmp_path: Path, *, now: float | None = None) -> list[str]:
    import time

    work = tmp_path / f"verify-{len(list(tmp_path.glob('verify-*')))}"
    problems, _ = check_repository(repo.folder, repo.metadata / "1.root.json", now=now or time.time(), work_dir=work)
    return problems


def test_walk_through_by_cli(tmp_path: Path) -> None:
    """Keys, publish, promote, rollout set/advance/halt/resume, refresh, rotate: each step leaves a
    repository that verifies from the root devices pinned at the start."""
    www, keys = tmp_path / "www", tmp_path / "keys"
    img1, img2 = image(tmp_path, "a", b"one" * 1000), image(tmp_path, "b", b"two" * 1000)
    steps: list[tuple[str | Path, ...]] = [
        ("repo", "init", www, "fleet", "--keys", keys, "--threshold", "targets=2"),
        ("repo", "publish", www, "fleet/os/stable", "--keys", keys, "--image-version", "1.0.0", "--system", "dev", f"dev.img={img1}"),
        ("repo", "publish", www, "fleet/os/beta", "--keys", keys, "--image-version", "1.1.0", "--system", "dev", f"dev.img={img2}"),
        ("repo", "promote", www, "fleet/os/stable", "1.1.0", "--keys", keys),
        ("repo", "rollout", "set", www, "fleet/os/stable", "--keys", keys, "--stage", "0:10", "--stage", "1d:50", "--stage", "2d:100", "--canary", "dev-7"),
        ("repo", "rollout", "advance", www, "fleet/os/stable", "--keys", keys),
        ("repo", "rollout", "halt", www, "fleet/os/stable", "--keys", keys),
        ("repo", "rollout", "resume", www, "fleet/os/stable", "--keys", keys),
        ("repo", "refresh", www, "fleet", "--keys", keys),
        ("repo", "rotate", www, "fleet", "targets", "--keys", keys, "--count", "2"),
        ("repo", "rotate", www, "fleet", "root", "--keys", keys),
    ]
    for step in steps:
        code, text = cli(*step)
        assert code == 0, (step, text)
        code, text = cli("repo", "verify", www, "fleet")
        assert code == 0 and text.startswith("ok:"), (step, text)
    root = Metadata.from_bytes((www / "fleet/metadata/root.json").read_bytes())
    assert root.signed.version == 3  # two rotations, each a new root signed by the old one
    repo = SignedRepository(www / "fleet", keys)
    tag = repo.tag(repo.load(), "os", "stable")
    assert (tag.version, tag.release) == ("1.1.0", 2)
    assert tag.rollout is not None and tag.rollout.percent_at(repo.now()) == 50


def test_tags_are_signed_entries(repo: SignedRepository, tmp_path: Path) -> None:
    """A tag is a target entry in signed targets whose hashes cover its own custom data."""
    repo.publish("os", "stable", version="1.0.0", files=[("dev.img", image(tmp_path, "a", b"x" * 10))], system="dev")
    state = repo.load()
    entry = state.targets.signed.targets["os/tags/stable"]
    tag = parse_tag(entry)
    assert (tag.version, tag.release, tag.files) == ("1.0.0", 1, ("dev.build-info.json", "dev.img"))
    assert not (repo.folder / "os").exists()  # no unsigned tag file anywhere


def test_promote_back_needs_rollback_flag(repo: SignedRepository, tmp_path: Path) -> None:
    repo.publish("os", "stable", version="1.0.0", files=[("dev.img", image(tmp_path, "a", b"a"))])
    repo.publish("os", "stable", version="1.1.0", files=[("dev.img", image(tmp_path, "b", b"b"))])
    with pytest.raises(UsageError, match="needs --rollback"):
        repo.promote("os", "stable", "1.0.0")
    assert repo.promote("os", "stable", "1.0.0", rollback=True) == 1
    assert repo.tag(repo.load(), "os", "stable").rollback
    with pytest.raises(UsageError, match="already published"):
        repo.publish("os", "stable", version="1.1.0", files=[("dev.img", image(tmp_path, "c", b"c"))])


def test_publishing_order_survives_a_cut(repo: SignedRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut before the timestamp is written: devices still see the old state, whole; the new
    immutable files are there but unreferenced. The next publish completes normally."""
    repo.publish("os", "stable", version="1.0.0", files=[("dev.img", image(tmp_path, "a", b"a" * 100))])
    before = (repo.metadata / "timestamp.json").read_bytes()
    real = SignedRepository._write

    def cut(self: SignedRepository, name: str, md: Metadata) -> None:  # type: ignore[type-arg]
        if name == "timestamp.json":
            raise OSError("power cut")
        real(self, name, md)

    monkeypatch.setattr(SignedRepository, "_write", cut)
    with pytest.raises(OSError, match="power cut"):
        repo.publish("os", "stable", version="1.1.0", files=[("dev.img", image(tmp_path, "b", b"b" * 100))])
    monkeypatch.setattr(SignedRepository, "_write", real)
    assert (repo.metadata / "timestamp.json").read_bytes() == before
    assert verify(repo, tmp_path) == []
    assert repo.tag(repo.load(), "os", "stable").version == "1.0.0"


def test_verify_names_each_tampering(repo: SignedRepository, tmp_path: Path) -> None:
    """``repo verify`` fails with a named reason on each tampered variant."""
    repo.publish("os", "stable", version="1.0.0", files=[("dev.img", image(tmp_path, "a", b"a" * 100))], system="dev")
    assert verify(repo, tmp_path) == []
    state = repo.load()
    targets_file = repo.metadata / f"{state.targets.signed.version}.targets.json"
    pristine = targets_file.read_bytes()

    # an asset replaced on the server
    asset = next(repo.assets.glob("sha256_*"))
    original = asset.read_bytes()
    asset.write_bytes(b"evil" + original[4:])
    assert any("the signed entry says" in p for p in verify(repo, tmp_path))
    asset.write_bytes(original)

    # the tag moved by editing targets (no signature): the snapshot's hash no longer matches
    data = json.loads(pristine)
    data["signed"]["targets"]["os/tags/stable"]["custom"]["ota"]["version"] = "0.9.0"
    targets_file.write_text(json.dumps(data))
    (problem,) = verify(repo, tmp_path)
    assert "does not match what the snapshot" in problem
    targets_file.write_bytes(pristine)

    # stale: checked a week after the timestamp expired
    (problem,) = verify(repo, tmp_path, now=repo.now() + 8 * 86400)
    assert "expired" in problem and "timestamp" in problem

    # one of two targets keys: the threshold is not met
    signers = __import__("ota_daemon.signing.keys", fromlist=["load"]).load(repo.keys_dir)
    one = [k for k in state.root.signed.roles["targets"].keyids if k in signers][:1]
    with pytest.raises(UsageError, match="needs 2 signature"):
        repo.commit(repo.load(), targets_changed=True, signers={k: signers[k] for k in [*one, *state.root.signed.roles["snapshot"].keyids]})


def test_unsigned_commands_refused_on_signed_repository(repo: SignedRepository, tmp_path: Path) -> None:
    www = repo.folder.parent
    code, _ = cli("repo", "publish", www, "fleet/os/stable", "--image-version", "1.0", str(image(tmp_path, "a", b"a")))
    assert code == 2
    code, _ = cli("repo", "tag", www, "fleet/os/stable", "1.0")
    assert code == 2
    code, text = cli("repo", "verify", www, "fleet", "--trusted-root", tmp_path / "missing.json")
    assert code == 1 and "missing.json" in text
