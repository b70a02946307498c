"""Fuzzing the version document (``versions info`` shape), the static hub's parser, the
engine's pinning and the build-info / os-release readers.

The tests at the end pin engine crashes fuzzing once found: each names the input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hardening_util import (
    DEEP_JSON,
    Loop,
    bounded,
    fuzz,
    json_objects,
    json_values,
    nasty_text,
    ran,
)
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from ota_daemon.app import open_engine
from ota_daemon.config import build_config
from ota_daemon.engine import Engine, read_build_info, read_os_release, system_identity
from ota_daemon.errors import HubError, OtaError
from ota_daemon.hubs.static import MAX_DOCUMENT, _parse_document
from ota_daemon.model import Asset, PinnedVersion, VersionDocument, parse_digest
from ota_daemon.testing import SimWorld

HEX = "0123456789abcdefABCDEF"
digests = st.one_of(
    st.builds(
        lambda a, s, h: f"{a}{s}{h}",
        st.sampled_from(["sha256", "sha512", "sha512_256", "sha512-256", "md5", "SHA256", ""]),
        st.sampled_from(["_", ":", "-", ""]),
        st.text(alphabet=HEX, max_size=130),
    ),
    st.text(alphabet=HEX, min_size=64, max_size=64).map(lambda h: f"sha256_{h}"),
    nasty_text,
)


@fuzz(300)
@given(text=digests)
@example(text="sha256_" + "a" * 64 + "\n")
@example(text="sha256_" + "٣" * 64)
def test_parse_digest_gives_algorithm_and_lowercase_hex_or_value_error(text: str) -> None:
    """parse_digest returns a known algorithm and lowercase ASCII hex of the right length, or
    raises ValueError naming the digest (cut to 80 characters)."""
    ran("model.parse_digest")
    with bounded():
        try:
            algorithm, hexdigest = parse_digest(text)
        except ValueError as exc:
            assert len(str(exc)) < 250
            return
    assert algorithm in ("sha256", "sha512", "sha512_256")
    assert len(hexdigest) == {"sha256": 64, "sha512": 128, "sha512_256": 64}[algorithm]
    assert all(c in "0123456789abcdef" for c in hexdigest)


assets = json_objects(
    filename=st.one_of(
        st.sampled_from(
            [
                "sim-device.img",
                "sim-device.build-info.json",
                "../etc/passwd",
                "/abs",
                "a/../b",
                "a\\b",
                "",
                "x" * 300,
            ]
        ),
        nasty_text,
    ),
    size=st.one_of(st.integers(-5, 2**70), st.floats()),
    digest=digests,
    assetId=nasty_text,
    url=nasty_text,
    status=st.sampled_from(["Available", "Uploading", "Deleted", None, ""]),
    metadata=json_values,
)
documents = json_objects(
    versionId=st.one_of(st.just("pkg_v_x"), nasty_text, st.text(min_size=120, max_size=140)),
    assets=st.lists(assets, max_size=4),
    tags=st.lists(json_objects(tag=nasty_text, locked=json_values), max_size=2),
    metadata=json_objects(imageVersion=nasty_text),
    name=nasty_text,
)


@fuzz(350)
@given(
    raw=st.one_of(
        documents.map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
    )
)
@example(raw=b"\xff\xfe{}")
@example(raw=b"NaN")
@example(
    raw=b'{"versionId": "v", "assets": [{"filename": "..", "size": 1, "digest": "sha256_'
    + b"a" * 64
    + b'"}]}'
)
def test_static_version_document_parses_or_hub_error(raw: bytes) -> None:
    """Any body of a tag file: _parse_document returns a VersionDocument whose assets all have
    safe relative names, sizes >= 0 and parseable digests, or raises HubError naming where."""
    ran("hubs.static._parse_document")
    with bounded():
        try:
            document = _parse_document(raw, "tag 'r/p/t'")
        except HubError as exc:
            assert str(exc).startswith("tag 'r/p/t'")
            assert len(str(exc)) < 600
            return
    assert isinstance(document, VersionDocument) and 1 <= len(document.version_id) <= 128
    for asset in document.assets:
        assert asset.size >= 0 and asset.filename and not asset.filename.startswith("/")
        assert (
            ".." not in asset.filename.split("/")
            and "\\" not in asset.filename
            and "\x00" not in asset.filename
        )
        parse_digest(asset.digest)


@fuzz(300)
@given(data=st.one_of(assets, json_values))
def test_asset_model_validates_or_raises_validation_error(data: Any) -> None:
    """Asset.model_validate on any JSON value raises only ValidationError; ``sha256`` of a
    valid asset is its hex digest or a HubError for another algorithm."""
    ran("model.Asset")
    try:
        asset = Asset.model_validate(data)
    except ValidationError:
        return
    with contextlib.suppress(HubError):
        assert len(asset.sha256) == 64


@pytest.mark.parametrize("deep", DEEP_JSON, ids=["open", "balanced", "objects"])
def test_deeply_nested_version_document_is_a_hub_error(deep: str) -> None:
    """A tag file nested past the recursion limit is a HubError (was RecursionError)."""
    ran("hubs.static._parse_document")
    with pytest.raises(HubError, match=r"nested too deeply|not valid JSON"):
        _parse_document(deep.encode(), "tag 'r/p/t'")


def test_oversized_version_document_is_a_hub_error() -> None:
    """A tag file over 1 MiB is refused before parsing."""
    with pytest.raises(HubError, match="more than"):
        _parse_document(b" " * (MAX_DOCUMENT + 1), "tag 'r/p/t'")


# --------------------------------------------------------------------------- Engine.pin


class PinWorld:
    def __init__(self, world: SimWorld, loop: Loop, engine: Engine) -> None:
        self.world, self.loop, self.engine = world, loop, engine

    def asset_for(self, filename: str, body: bytes, *, size: int | None = None) -> dict[str, Any]:
        digest = "sha256_" + hashlib.sha256(body).hexdigest()
        path = self.world.repo_dir / "assets" / digest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return {"filename": filename, "size": len(body) if size is None else size, "digest": digest}


@pytest.fixture(scope="module")
def pin_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PinWorld]:
    world = SimWorld(tmp_path_factory.mktemp("pin"))
    world.create_device("1.0.0")
    world.publish("1.0.0")
    config = build_config(world.tables(), source="test", env={})
    loop = Loop()
    manager = open_engine(config)
    engine = loop.run(manager.__aenter__())
    yield PinWorld(world, loop, engine)
    loop.run(manager.__aexit__(None, None, None))
    loop.close()


build_infos = st.one_of(
    json_objects(
        name=st.one_of(st.just("sim-device"), nasty_text),
        release=json_objects(
            version=st.one_of(st.just("2.0.0"), nasty_text, st.text(min_size=100, max_size=200))
        ),
    ).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=100),
)


@st.composite
def pin_cases(draw: st.DrawFn) -> tuple[dict[str, Any], bytes | None, bool]:
    image = draw(st.sampled_from(["sim-device.img", "other.img", None]))
    info = draw(st.one_of(st.none(), build_infos))
    meta = draw(
        json_objects(
            imageVersion=st.one_of(
                st.just("2.0.0"), nasty_text, st.just(" "), st.text(min_size=100, max_size=200)
            )
        )
    )
    status = draw(st.sampled_from([None, "Available", "Uploading"]))
    honest = draw(st.booleans())
    return {"image": image, "status": status, "metadata": meta}, info, honest


@fuzz(150)
@given(case=pin_cases())
def test_engine_pin_gives_a_usable_pin_or_hub_error(
    pin_world: PinWorld, case: tuple[dict[str, Any], bytes | None, bool]
) -> None:
    """Engine.pin on a fuzzed document (image asset present or not, build-info asset with any
    bytes, metadata.imageVersion of any kind) returns a pin with a usable version string, or
    raises HubError (bad document) / another OtaError (a build-info asset whose bytes do not
    match its digest): never anything else, never a pin without a version."""
    ran("engine.Engine.pin")
    shape, info, honest = case
    assets_: list[dict[str, Any]] = []
    if shape["image"]:
        assets_.append(
            {
                "filename": shape["image"],
                "size": 10,
                "digest": "sha256_" + "0" * 64,
                **({"status": shape["status"]} if shape["status"] else {}),
            }
        )
    if info is not None:
        assets_.append(
            pin_world.asset_for(
                "sim-device.build-info.json", info, size=None if honest else len(info) + 1
            )
        )
    document = VersionDocument.model_validate(
        {"versionId": "pkg_v_fuzz", "assets": assets_, "metadata": shape["metadata"]}
    )
    engine = pin_world.engine
    try:
        pinned = pin_world.loop.run(
            engine.pin(
                document, path="fleet/system/stable", system_name="sim-device", config=engine.config
            )
        )
    except HubError as exc:
        assert "pkg_v_fuzz" in str(exc) or "build-info" in str(exc)
        return
    except OtaError:
        assert info is not None and not honest  # only a lying build-info asset fails otherwise
        return
    assert isinstance(pinned, PinnedVersion) and shape["image"] == "sim-device.img"
    assert (
        pinned.version
        and len(pinned.version) <= 128
        and not any(c in pinned.version for c in "\n\r\x00/")
    )


# --------------------------------------------------------------------------- build info, os-release


@fuzz(300)
@given(raw=st.one_of(build_infos, st.binary(max_size=200)))
def test_read_build_info_gives_an_object_or_none(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    """read_build_info on any (not absurdly nested) bytes returns a dict or None."""
    ran("engine.read_build_info")
    path = tmp_path_factory.getbasetemp() / "build-info.json"
    path.write_bytes(raw)
    with bounded():
        result = read_build_info(path)
    assert result is None or isinstance(result, dict)


os_release_lines = st.lists(
    st.one_of(
        st.builds(
            lambda k, v, q: f"{k}={q}{v}{q}",
            st.sampled_from(
                ["IMAGE_ID", "IMAGE_VERSION", "ID", "#IMAGE_ID", " IMAGE_VERSION ", ""]
            ),
            nasty_text.filter(lambda t: "\n" not in t and "\r" not in t),
            st.sampled_from(["", '"', "'"]),
        ),
        nasty_text,
    ),
    max_size=6,
).map("\n".join)


@fuzz(300)
@given(text=os_release_lines)
def test_read_os_release_and_system_identity_give_strings(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    """read_os_release on any UTF-8 text returns str -> str; system_identity then names a
    system and version that are strings or None (never another type from a build-info file)."""
    ran("engine.read_os_release / system_identity")
    base = tmp_path_factory.getbasetemp()
    (base / "os-release").write_bytes(text.encode("utf-8", "replace"))
    (base / "build-info.json").write_text(json.dumps({"name": 5, "release": {"version": ["x"]}}))
    with bounded():
        values = read_os_release(base / "os-release")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
    config = build_config(
        {
            "system": {
                "build_info": str(base / "build-info.json"),
                "os_release": str(base / "os-release"),
            }
        },
        source="t",
        env={},
    )
    name, version = system_identity(config)
    assert name is None or isinstance(name, str)
    assert version is None or isinstance(version, str)


# --------------------------------------------------------------------------- engine findings (not fixed here)


def test_engine_read_build_info_deeply_nested(tmp_path: Path) -> None:
    """Finding for the engine: read_build_info should return None for '[' * 100000."""
    path = tmp_path / "build-info.json"
    path.write_text(DEEP_JSON[0])
    assert read_build_info(path) is None


def test_engine_read_os_release_not_utf8(tmp_path: Path) -> None:
    """Finding for the engine: read_os_release should skip (or decode with replacement) bytes
    that are not UTF-8 instead of raising."""
    path = tmp_path / "os-release"
    path.write_bytes(b"IMAGE_ID=sys\nIMAGE_VERSION=\xff\xfe\n")
    assert read_os_release(path).get("IMAGE_ID") == "sys"


def _pin_with_build_info(pin_world: PinWorld, body: bytes) -> None:
    """Pin a document whose build-info asset holds ``body``."""
    document = VersionDocument.model_validate(
        {
            "versionId": "pkg_v_probe",
            "assets": [
                {"filename": "sim-device.img", "size": 1, "digest": "sha256_" + "0" * 64},
                pin_world.asset_for("sim-device.build-info.json", body),
            ],
        }
    )
    pin_world.loop.run(
        pin_world.engine.pin(document, path="fleet/system/stable", system_name="sim-device", config=pin_world.engine.config)
    )


def test_engine_pin_deeply_nested_build_info_asset(pin_world: PinWorld) -> None:
    """A hub-supplied build-info asset of '[' * 60000 is a HubError, not a RecursionError."""
    with pytest.raises(HubError):
        _pin_with_build_info(pin_world, DEEP_JSON[0][:60_000].encode())


@pytest.mark.parametrize("version", [" ", "\t", "1.0\x1b[2J", "1.0\x7f"])
def test_engine_pin_refuses_odd_version_strings(pin_world: PinWorld, version: str) -> None:
    """A version that is blank or holds control characters is a HubError ('version string ...
    is not usable'), as newlines and NUL are."""
    with pytest.raises(HubError, match="not usable"):
        _pin_with_build_info(pin_world, json.dumps({"name": "sim-device", "release": {"version": version}}).encode())
