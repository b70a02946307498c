"""Publishing a signed repository to an S3-compatible bucket: boto3 against a real S3 server on
loopback (moto's server mode), and a device installing from the bucket over HTTP."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ota_daemon.cli import main
from ota_daemon.engine import Result
from ota_daemon.signing import s3
from tests.signing.conftest import Signed
from tests.signing.helpers import run_pass

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET = "fleet-updates"  # one server for the module; each test empties the bucket


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "test-key")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        moto = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        try:
            yield f"http://127.0.0.1:{moto._server.server_port}"
        finally:
            moto.stop()


@pytest.fixture
def endpoint(server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty bucket, readable anonymously (as a bucket behind a CDN is)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=server)
    client.create_bucket(Bucket=BUCKET)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}
    client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))
    try:
        yield server
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=BUCKET, Key=item["Key"])
        client.delete_bucket(Bucket=BUCKET)


def sync(signed: Signed, endpoint: str) -> str:
    out = io.StringIO()
    code = main(["repo", "sync", str(signed.world.repo_dir), "fleet", f"s3://{BUCKET}/ota", "--endpoint-url", endpoint], out=out)
    assert code == 0, out.getvalue()
    return out.getvalue()


async def test_device_installs_from_the_bucket(signed: Signed, endpoint: str) -> None:
    assert "timestamp last" in sync(signed, endpoint)
    url = f"{endpoint}/{BUCKET}/ota/"
    assert (await run_pass(signed, url=url)).result is Result.UP_TO_DATE
    signed.publish("1.1.0")
    report = s3.sync(signed.repo.folder, f"s3://{BUCKET}/ota", client=boto3.client("s3", endpoint_url=endpoint))
    # immutable objects go up once; the timestamp goes last
    assert report.uploaded[-1].endswith("metadata/timestamp.json")
    assert all("/assets/" in k for k in report.uploaded[:2])
    assert report.skipped > 0
    assert (await run_pass(signed, url=url)).result is Result.REBOOTING


async def test_interrupted_sync_leaves_the_previous_state(signed: Signed, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync cut before the timestamp: devices keep seeing the previous state, whole; the next
    sync completes it."""
    sync(signed, endpoint)
    url = f"{endpoint}/{BUCKET}/ota/"
    assert (await run_pass(signed, url=url)).result is Result.UP_TO_DATE
    signed.publish("1.1.0")
    client = boto3.client("s3", endpoint_url=endpoint)
    real = client.upload_file

    def cut(path: str, bucket: str, key: str, **kwargs: Any) -> None:
        if key.endswith("timestamp.json"):
            raise ConnectionError("network gone")
        real(path, bucket, key, **kwargs)

    monkeypatch.setattr(client, "upload_file", cut)
    with pytest.raises(ConnectionError):
        s3.sync(signed.repo.folder, f"s3://{BUCKET}/ota", client=client)
    assert (await run_pass(signed, url=url)).result is Result.UP_TO_DATE
    sync(signed, endpoint)
    assert (await run_pass(signed, url=url)).result is Result.REBOOTING


def test_another_repository_under_the_prefix_is_not_overwritten(signed: Signed, endpoint: str, tmp_path: Any) -> None:
    from ota_daemon.errors import UsageError
    from ota_daemon.signing.publish import SignedRepository

    sync(signed, endpoint)
    other = SignedRepository(tmp_path / "other" / "fleet", tmp_path / "other-keys")
    other.init()
    with pytest.raises(UsageError, match="never overwritten"):
        s3.sync(other.folder, f"s3://{BUCKET}/ota", client=boto3.client("s3", endpoint_url=endpoint))


def test_bad_url() -> None:
    with pytest.raises(Exception, match="s3://BUCKET"):
        s3.parse_url("https://bucket/x")
    assert s3.parse_url("s3://b") == ("b", "")
    assert s3.parse_url("s3://b/a/b/") == ("b", "a/b/")
