"""Signing keys on disk: one ed25519 private key per PEM file (mode 0600), named by role.

``<keys>/<role>-<keyid[:12]>.pem``. The public halves live in root metadata; a signer is found
by the key id of the PEM's public key, so a file may be renamed without harm. Keep the root
keys offline: only ``repo init`` and ``repo rotate`` need them.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey

from ota_daemon.errors import UsageError

ROLES = ("root", "targets", "snapshot", "timestamp")


def generate(keys_dir: Path, role: str) -> CryptoSigner:
    """A new ed25519 key for ``role``, written to ``keys_dir`` (created 0700)."""
    if role not in ROLES:
        raise UsageError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    signer = CryptoSigner.generate_ed25519()
    path = keys_dir / f"{role}-{signer.public_key.keyid[:12]}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(signer.private_bytes)
    return signer


def load(keys_dir: Path) -> dict[str, CryptoSigner]:
    """Every signer in ``keys_dir``, by key id. A missing folder holds no keys."""
    signers: dict[str, CryptoSigner] = {}
    if not keys_dir.is_dir():
        return signers
    for path in sorted(keys_dir.glob("*.pem")):
        try:
            private = load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(f"{path}: not an unencrypted PEM private key ({type(exc).__name__})") from None
        public = SSlibKey.from_crypto(private.public_key())
        signers[public.keyid] = CryptoSigner(private, public)
    return signers
