"""File-mode downloads against a real loopback server that misbehaves on purpose."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from dlfaults import Action, FaultServer, blob, downloader, http_date, leftovers, provider_of

from ota_daemon.clock import FakeClock
from ota_daemon.errors import IntegrityError, TransientError, UpdateFailed
from ota_daemon.model import Asset, Progress

MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_clean_download_verifies_and_leaves_only_the_file(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """A plain download ends as the verified file, nothing else in the cache, one request."""
    data = blob(3 * MiB + 123)
    asset = server.put("/img/a.raucb", data)
    url, _ = provider_of(server.url("/img/a.raucb"))
    seen: list[Progress] = []
    async with downloader(path, clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.raucb", progress=seen.append)
    assert out.read_bytes() == data
    assert leftovers(tmp_path) == ["a.raucb"]
    assert len(server.requests) == 1
    assert seen[-1].done_bytes == len(data) and seen[-1].percent == 100.0 and seen[-1].total_bytes == len(data)


async def test_reset_mid_body_resumes_with_a_range(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """A connection reset mid-body: the next request asks for the rest (Range + If-Range) after a backoff."""
    data = blob(4 * MiB)
    asset = server.put("/a.img", data)
    server.plan.append(Action("reset", after=MiB + 5000))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    second = server.requests[1].headers
    start = int(second["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= MiB + 5000
    assert second["if-range"] == server.objects["/a.img"].etag
    assert server.bytes_sent - len(data) <= MiB + 5000 - start + 0  # nothing fetched twice but what never arrived
    assert len(clock.slept) == 1 and 0.5 <= clock.slept[0] <= 1.0


async def test_stall_without_close_is_detected_and_resumed(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """A server that stops sending but keeps the connection open is cut after read_timeout, then resumed."""
    data = blob(2 * MiB)
    asset = server.put("/a.img", data)
    server.plan.append(Action("stall", after=MiB))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock, read_timeout=0.3) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    # resumed by range from what was on disk: at the stall (1 MiB), or earlier where a loaded
    # machine paused the first response for longer than read_timeout (that is a stall too)
    assert len(server.requests) >= 2
    offsets = [int(r.headers["range"].removeprefix("bytes=").rstrip("-")) for r in server.requests[1:]]
    assert 0 < offsets[0] <= MiB and offsets == sorted(offsets)


async def test_truncated_body_with_a_wrong_content_length_resumes(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """Content-Length promises more than the server sends before closing: the rest comes by range."""
    data = blob(2 * MiB)
    asset = server.put("/a.img", data)
    server.plan.append(Action("truncate", after=700_000))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    assert server.requests[1].headers["range"] == "bytes=700000-"
    assert server.bytes_sent == len(data)


async def test_5xx_then_recovery_backs_off_exponentially(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """500, 503, 502 then success: three waits that grow (exponential with jitter), then the file."""
    data = blob(MiB)
    asset = server.put("/a.img", data)
    server.plan.extend([Action("status", status=500), Action("status", status=503), Action("status", status=502)])
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock, retry_initial_wait=2) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    assert len(server.requests) == 4
    assert [round(s, 3) for s in clock.slept] == sorted(round(s, 3) for s in clock.slept)
    for wait, ceiling in zip(clock.slept, (2, 4, 8), strict=True):
        assert ceiling / 2 <= wait <= ceiling


async def test_429_honours_retry_after(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """429 with Retry-After (seconds, then an HTTP date) waits exactly that long on the clock."""
    data = blob(MiB)
    asset = server.put("/a.img", data)
    server.plan.append(Action("status", status=429, headers={"Retry-After": "7"}))
    server.plan.append(Action("status", status=503, headers={"Retry-After": http_date(clock.now() + 20)}))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    assert clock.slept[0] == 7.0
    assert 12 <= clock.slept[1] <= 20


async def test_retry_after_beyond_the_limit_stops_at_once(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """A Retry-After longer than retry_max_wait ends the download with a TransientError carrying it."""
    asset = server.put("/a.img", blob(1000))
    server.plan.append(Action("status", status=429, headers={"Retry-After": "3600"}))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock, retry_max_wait=60) as dl:
        with pytest.raises(TransientError, match="3600") as caught:
            await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert caught.value.retry_after == 3600
    assert len(server.requests) == 1 and clock.slept == []


async def test_404_is_permanent_without_a_retry_loop(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """404 stops at once: one request, no sleep, a message naming the status and the redacted URL."""
    asset = Asset(filename="gone.img", size=10, digest="sha256_" + "0" * 64)
    url, _ = provider_of(server.url("/gone.img", token="s3cr3t"))
    async with downloader(path, clock) as dl:
        with pytest.raises(UpdateFailed) as caught:
            await dl.to_file(url=url, asset=asset, dest=tmp_path / "gone.img")
    assert "HTTP 404" in str(caught.value) and "/gone.img" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    assert len(server.requests) == 1 and clock.slept == []
    assert leftovers(tmp_path) == []  # no empty .partial (nor its .partial.json) stays behind


async def test_a_404_after_a_partial_download_keeps_what_was_fetched(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """Bytes already on disk are kept for a resume when the next request fails for good."""
    data = blob(2 * MiB)
    asset = server.put("/a.img", data)
    server.plan.append(Action("reset", after=MiB))
    server.plan.append(Action("status", status=404))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        with pytest.raises(UpdateFailed, match="HTTP 404"):
            await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert leftovers(tmp_path) == ["a.img.partial", "a.img.partial.json"]
    assert (tmp_path / "a.img.partial").stat().st_size > 0


async def test_persistent_5xx_gives_up_after_max_retries(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """Failures in a row without progress are capped: max_retries + 1 requests, then TransientError."""
    asset = server.put("/a.img", blob(1000))
    server.plan.extend(Action("status", status=503) for _ in range(10))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock, max_retries=2) as dl:
        with pytest.raises(TransientError, match="HTTP 503"):
            await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert len(server.requests) == 3 and len(clock.slept) == 2


async def test_progress_resets_the_failure_count(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """A flaky link that drops every 512 KiB still finishes: progress between failures resets the count."""
    data = blob(4 * MiB)
    asset = server.put("/a.img", data)
    server.plan.extend(Action("reset", after=512 * 1024) for _ in range(7))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock, max_retries=1) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    assert len(server.requests) == 8
    assert all(wait <= 1.0 for wait in clock.slept)  # the backoff restarts too


async def test_replaced_object_restarts_from_zero(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """The object changes between attempts (new ETag): If-Range brings the whole new object; no splice."""
    old, new = blob(3 * MiB, seed=1), blob(3 * MiB, seed=2)
    server.put("/a.img", old)
    server.plan.append(Action("reset", after=MiB))
    new_etag = '"new"'
    server.plan.append(Action(before=lambda: server.put("/a.img", new, etag=new_etag)))
    asset = Asset(filename="a.img", size=len(new), digest=f"sha256_{sha(new)}")
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == new
    assert server.requests[1].headers["if-range"] != new_etag
    assert leftovers(tmp_path) == ["a.img"]


async def test_replaced_object_behind_a_server_that_ignores_if_range(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """A 206 with a different ETag (If-Range ignored) is caught by comparing validators: restart from zero."""
    old, new = blob(2 * MiB, seed=1), blob(2 * MiB, seed=3)
    server.put("/a.img", old, etag='"v1"')
    server.plan.append(Action("reset", after=MiB))
    server.plan.append(Action("ignore_if_range", before=lambda: server.put("/a.img", new, etag='"v2"')))
    asset = Asset(filename="a.img", size=len(new), digest=f"sha256_{sha(new)}")
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == new
    assert "range" not in server.requests[2].headers  # the third request starts over
    assert clock.slept[1:] == [0.0]  # a restart is not a failure: no backoff


async def test_last_modified_is_the_validator_without_an_etag(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """Without an ETag, Last-Modified goes into If-Range; a changed date restarts from zero."""
    old, new = blob(2 * MiB, seed=4), blob(2 * MiB, seed=5)
    server.put("/a.img", old, etag=None, last_modified=http_date(1_700_000_000))
    server.plan.append(Action("reset", after=MiB))
    server.plan.append(Action(before=lambda: server.put("/a.img", new, etag=None, last_modified=http_date(1_700_000_100))))
    asset = Asset(filename="a.img", size=len(new), digest=f"sha256_{sha(new)}")
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == new
    assert server.requests[1].headers["if-range"] == http_date(1_700_000_000)


async def test_expired_url_is_reissued_and_continues_the_same_partial_file(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """403 on an issued URL: the provider is asked again and the download continues where it was."""
    data = blob(4 * MiB)
    asset = server.put("/a.img", data)
    server.valid_tokens = {"t1"}

    def expire() -> None:
        server.valid_tokens = {"t2"}

    server.plan.append(Action("truncate", after=2 * MiB))  # the link drops at 2 MiB …
    server.plan.append(Action("ok", before=expire))  # … and when it is back, t1 has expired
    url, handed = provider_of(server.url("/a.img", token="t1"), server.url("/a.img", token="t2"))
    async with downloader(path, clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    assert len(handed) == 2
    assert [r.query.get("token") for r in server.requests] == [["t1"], ["t1"], ["t2"]]
    assert server.requests[2].headers["range"] == f"bytes={2 * MiB}-"
    assert server.bytes_sent == len(data)  # not one byte fetched twice


async def test_expired_url_that_the_hub_issues_again_unchanged_is_final(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """A 403 whose re-issued URL is the same URL stops at once: no loop."""
    asset = server.put("/a.img", blob(1000))
    server.valid_tokens = set()
    url, handed = provider_of(server.url("/a.img", token="t1"))
    async with downloader("fast", clock) as dl:
        with pytest.raises(UpdateFailed, match="same URL"):
            await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert len(server.requests) == 1 and len(handed) == 2


async def test_wrong_digest_deletes_the_file(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """A fresh download whose digest is wrong raises IntegrityError at once and leaves nothing behind."""
    data = blob(MiB)
    server.put("/a.img", data)
    asset = Asset(filename="a.img", size=len(data), digest="sha256_" + sha(b"something else"))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock) as dl:
        with pytest.raises(IntegrityError, match="deleted, not installed"):
            await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert leftovers(tmp_path) == []
    assert len(server.requests) == 1


async def test_wrong_size_on_the_server_fails_before_the_body(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """A server offering another size than the version document pins is refused without downloading."""
    data = blob(MiB)
    server.put("/a.img", data)
    asset = Asset(filename="a.img", size=len(data) + 1, digest=f"sha256_{sha(data)}")
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        with pytest.raises(IntegrityError, match="offers 1048576 bytes"):
            await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert leftovers(tmp_path) == []


async def test_a_resumed_download_that_does_not_verify_is_fetched_once_more(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """A server that replaces the object but keeps its ETag makes a splice; the digest catches it
    and one fresh download from zero verifies."""
    old, new = blob(2 * MiB, seed=6), blob(2 * MiB, seed=7)
    server.put("/a.img", old, etag='"same"')
    server.plan.append(Action("truncate", after=MiB))
    server.plan.append(Action(before=lambda: server.put("/a.img", new, etag='"same"')))
    asset = Asset(filename="a.img", size=len(new), digest=f"sha256_{sha(new)}")
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == new
    assert [r.headers.get("range") for r in server.requests] == [None, f"bytes={MiB}-", None]


async def test_a_fresh_download_after_a_splice_that_still_fails_is_final(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """Only one fresh attempt after a failed resumed one: then IntegrityError, nothing left behind."""
    data = blob(2 * MiB, seed=8)
    server.put("/a.img", data)
    server.plan.append(Action("truncate", after=MiB))
    asset = Asset(filename="a.img", size=len(data), digest="sha256_" + sha(b"not it"))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        with pytest.raises(IntegrityError):
            await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert len(server.requests) == 3 and leftovers(tmp_path) == []


async def test_low_speed_guard_reconnects_and_resumes(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """Below min_rate for min_rate_window (on the clock), the connection is dropped and resumed."""
    data = blob(MiB)
    asset = server.put("/a.img", data)
    server.plan.append(Action("drip", drip=2000, on_piece=lambda: clock.advance(5)))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock, min_rate=100_000, min_rate_window=30, read_timeout=0.4, chunk_size="16k") as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    assert len(server.requests) == 2
    assert server.requests[1].headers["range"] != "bytes=0-"


async def test_max_rate_paces_on_the_clock(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """max_rate is a token bucket on the injected clock: 4 MiB at 1 MiB/s sleeps about 4 s."""
    data = blob(4 * MiB)
    asset = server.put("/a.img", data)
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock, max_rate=MiB) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    assert 3.5 <= sum(clock.slept) <= 4.0


async def test_progress_is_throttled_with_rate_and_eta(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """At most a few callbacks per (clock) second, each with bytes, total, rate and ETA."""
    data = blob(4 * MiB)
    asset = server.put("/a.img", data)
    url, _ = provider_of(server.url("/a.img"))
    seen: list[Progress] = []

    def record(p: Progress) -> None:
        seen.append(p)
        clock.advance(0.1)

    async with downloader("fast", clock) as dl:
        await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img", progress=record)
    chunks = 4 * MiB // (64 * 1024)
    assert 2 <= len(seen) <= chunks // 2  # every other chunk at most: 0.25 s apart, 0.1 s per callback
    moving = [p for p in seen if p.rate]
    assert moving and all(p.eta is not None and p.total_bytes == len(data) for p in moving)
    assert seen[-1].done_bytes == len(data)


async def test_a_finished_file_is_verified_not_fetched_again(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """When the destination exists and verifies, no request is made; a bad one is replaced."""
    data = blob(MiB)
    asset = server.put("/a.img", data)
    url, _ = provider_of(server.url("/a.img"))
    dest = tmp_path / "a.img"
    dest.write_bytes(data)
    async with downloader("fast", clock) as dl:
        assert await dl.to_file(url=url, asset=asset, dest=dest) == dest
        assert server.requests == []
        dest.write_bytes(b"x" * len(data))
        await dl.to_file(url=url, asset=asset, dest=dest)
    assert dest.read_bytes() == data and len(server.requests) == 1


async def test_file_url_is_verified_in_place(clock: FakeClock, tmp_path: Path) -> None:
    """A file:// URL is not copied: it is verified and returned; a bad one raises IntegrityError."""
    data = blob(300_000)
    src = tmp_path / "src.img"
    src.write_bytes(data)
    asset = Asset(filename="src.img", size=len(data), digest=f"sha256_{sha(data)}")
    url, _ = provider_of(f"file://{src}")
    async with downloader("fast", clock) as dl:
        assert await dl.to_file(url=url, asset=asset, dest=tmp_path / "cache" / "x") == src
        src.write_bytes(data[:-1] + b"!")
        with pytest.raises(IntegrityError):
            await dl.to_file(url=url, asset=asset, dest=tmp_path / "cache" / "x")
