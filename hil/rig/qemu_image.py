"""The qemu target's disk image and update bundles, built from Debian packages and cached by
the hash of their recipe (hil/README.md, "The qemu target").

Stages, each cached under :func:`cache_root` in a directory named by its key:

1. ``base-<key>/``: a Debian bookworm root (mmdebstrap, Debian's mirror only); the key is
   the hash of ``qemu/base.sh`` (package list included) and ``qemu/base-hook.sh``. Minutes.
2. ``system-<key>/``: the base plus ota-daemon installed inside it by
   ``scripts/install-debian.sh --root /`` (wheels fetched once into ``wheels-<key>/``), plus
   ``qemu/system-hook.sh`` (RAUC ``system.conf``, fstab, HIL files, the rig's keys). The key
   adds the daemon's sources, units, install script and the HIL files. Tens of seconds.
3. ``disk-<key>.raw``: MBR disk, GRUB, slot A with the baseline 1.0.0, empty slot B, data.
4. ``slots/<key>-<version>-<behaviour>.ext4`` and ``bundles/…raucb``: per published version.

Each scenario boots a qcow2 overlay on the cached disk: the base stays untouched and a run
needs no rebuild. ``python -m hil.rig.qemu_image`` builds (or checks) everything up front.
Building needs root (mmdebstrap --mode=root, chroot, loop devices).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE_DIR = Path(__file__).resolve().parent / "qemu"
BUILD = RECIPE_DIR / "build.sh"
SYSTEM = "hil-qemu"
BASELINE = "1.0.0"

#: what the daemon's build reads (stage 2 key)
_SOURCE_PATHS = ("ota_daemon", "systemd", "scripts/install-debian.sh", "images/config.toml", "pyproject.toml")


class ImageError(RuntimeError):
    """The image could not be built; the message names the stage and the log."""


def cache_root() -> Path:
    """``$OTA_HIL_CACHE``, else ``/var/cache/ota-daemon-hil`` when writable, else ``~/.cache``."""
    env = os.environ.get("OTA_HIL_CACHE")
    if env:
        return Path(env)
    system = Path("/var/cache/ota-daemon-hil")
    with contextlib.suppress(OSError):
        system.mkdir(parents=True, exist_ok=True)
        if os.access(system, os.W_OK):
            return system
    return Path.home() / ".cache" / "ota-daemon-hil"


def _hash_paths(paths: list[Path], h: hashlib._Hash) -> None:
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update((str(f.relative_to(REPO_ROOT)) if f.is_relative_to(REPO_ROOT) else f.name).encode() + b"\0")
            h.update(f.read_bytes())


def base_key() -> str:
    h = hashlib.sha256(b"base-1")
    _hash_paths([RECIPE_DIR / "base.sh", RECIPE_DIR / "base-hook.sh"], h)
    return h.hexdigest()[:16]


def system_key(keys: Path) -> str:
    h = hashlib.sha256(b"system-1" + base_key().encode())
    _hash_paths([BUILD, RECIPE_DIR / "system-hook.sh", RECIPE_DIR / "files"], h)
    _hash_paths([REPO_ROOT / p for p in _SOURCE_PATHS], h)
    _hash_paths([keys / "hil-ssh.pub", keys / "rauc-ca.pem"], h)
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time per cache (two pytest runs, or CI next to a developer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _run(args: list[str], *, log: Path, what: str) -> None:
    started = time.monotonic()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        rc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False).returncode
        out.write(f"# exit {rc} after {time.monotonic() - started:.1f}s\n")
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise ImageError(f"building the qemu image failed at {what} (exit {rc}); log {log}:\n  " + "\n  ".join(tail))


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ImageError(f"{what} needs root (mmdebstrap --mode=root, chroot, loop devices); run as root or use a cache built by root")


@dataclass(frozen=True)
class Built:
    """Paths of one image generation."""

    root: Path
    keys: Path
    system: Path
    disk: Path
    key: str

    @property
    def ssh_key(self) -> Path:
        return self.keys / "hil-ssh"


def ensure_keys(root: Path) -> Path:
    """The rig's SSH key and the RAUC signing CA (and a second CA for "wrong key" bundles)."""
    keys = root / "keys"
    with _locked(root / ".keys.lock"):
        if not (keys / "rauc-ca.pem").exists():
            tmp = root / "keys.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            log = root / "keys.log"
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hil-rig", "-f", str(tmp / "hil-ssh")], log=log, what="ssh-keygen")
            for name, cn in (("rauc-ca", "hil-qemu signing"), ("other-ca", "someone else")):
                _run(
                    ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "36500",
                     "-subj", f"/O=ota-daemon HIL/CN={cn}", "-keyout", str(tmp / f"{name}.key"), "-out", str(tmp / f"{name}.pem")],
                    log=log, what=f"openssl req ({name})",
                )
            tmp.rename(keys)
    return keys


def ensure_wheels(root: Path) -> Path:
    """Wheels of the daemon's dependencies (the guest runs Debian's Python 3.11, as here)."""
    h = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    wheels = root / f"wheels-{h}"
    with _locked(root / ".wheels.lock"):
        for old in root.glob("wheels-*"):
            if old.is_dir() and old != wheels:
                shutil.rmtree(old, ignore_errors=True)
        if not wheels.is_dir():
            tmp = root / f"wheels-{h}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            # pip wheel: sdist-only dependencies (sdnotify) become wheels too; setuptools for the
            # daemon's own build inside the image (pip --no-index builds it there)
            _run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(tmp), "setuptools>=68", "wheel", f"{REPO_ROOT}[rauc]"],
                 log=root / "wheels.log", what="pip wheel (the daemon's dependencies)")
            for f in tmp.iterdir():
                if f.suffix != ".whl" or f.name.startswith("ota_daemon-"):
                    f.unlink()
            tmp.rename(wheels)
    return wheels


def ensure_image(*, log: Path | None = None) -> Built:
    """Build what is missing; return the paths. Seconds when everything is cached."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    keys = ensure_keys(root)
    bkey = base_key()
    skey = system_key(keys)
    base = root / f"base-{bkey}"
    system = root / f"system-{skey}"
    disk = root / f"disk-{skey}.raw"
    log = log or root / "build.log"
    with _locked(root / ".build.lock"):
        if not base.is_dir():
            _need_root("building the base image")
            _run([str(BUILD), "base", str(base)], log=log, what="base (mmdebstrap)")
        seed = system.with_name(system.name + ".data-seed")
        if not system.is_dir() or (not disk.exists() and not seed.is_dir()):
            _need_root("building the system image")
            wheels = ensure_wheels(root)
            _run([str(BUILD), "system", str(base), str(REPO_ROOT), str(wheels), str(keys), str(system)], log=log, what="system (install-debian.sh)")
        if not disk.exists():
            _need_root("building the disk image")
            slot_a = slot_image(system, skey, BASELINE, "ok", log=log)
            _run([str(BUILD), "disk", str(system), str(disk), str(slot_a)], log=log, what="disk (partitions, GRUB)")
        _prune(root, keep={base.name, system.name, system.name + ".data-seed", disk.name})
    return Built(root, keys, system, disk, skey)


def _prune(root: Path, *, keep: set[str]) -> None:
    """Drop older generations (each is hundreds of MB)."""
    live = {k.split("-", 1)[1] for k in keep if k.startswith("system-")}
    for p in root.iterdir():
        stem = p.name
        stale = stem.startswith(("base-", "system-", "disk-")) and stem not in keep
        stale = stale or (stem.startswith("booted-") and not any(k in stem for k in live))
        if stale and not stem.endswith(".lock"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    for sub in ("slots", "bundles"):
        d = root / sub
        if d.is_dir():
            for p in d.iterdir():
                if not p.name.startswith(tuple(live)):
                    p.unlink(missing_ok=True)


def slot_image(system: Path, skey: str, version: str, behaviour: str, *, log: Path) -> Path:
    out = system.parent / "slots" / f"{skey}-{version}-{behaviour}.ext4"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        _run([str(BUILD), "rootfs", str(system), version, behaviour, str(out)], log=log, what=f"slot image {version} ({behaviour})")
    return out


def bundle(built: Built, version: str, *, behaviour: str = "ok", compatible: str = SYSTEM, signer: str = "rauc-ca") -> Path:
    """A signed RAUC bundle of ``version`` (cached); ``signer`` ``other-ca`` makes a
    bundle the device's keyring does not trust."""
    log = built.root / "build.log"
    name = f"{built.key}-{version}-{behaviour}-{compatible}-{signer}.raucb"
    out = built.root / "bundles" / name
    with _locked(built.root / ".bundle.lock"):
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            slot = slot_image(built.system, built.key, version, behaviour, log=log)
            _run([str(BUILD), "bundle", str(slot), version, str(built.keys / f"{signer}.pem"), str(built.keys / f"{signer}.key"), str(out), compatible],
                 log=log, what=f"bundle {version} ({behaviour})")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hil.rig.qemu_image", description="build (or reuse) the qemu target's image")
    parser.add_argument("--booted", action="store_true", help="also the baseline device booted and saved (what each scenario starts from)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        built = ensure_image()
        print(f"qemu image ready in {time.monotonic() - started:.1f}s: {built.disk}")
        if args.booted:
            from hil.rig.targets.qemu import ensure_booted

            print(f"booted device ready in {time.monotonic() - started:.1f}s: {ensure_booted(built)}")
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
