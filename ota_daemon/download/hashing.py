"""SHA-256 whose running state can be saved and restored (OpenSSL's ``SHA256_CTX`` through
ctypes), so a resumed download need not reread what it already hashed."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import struct
from typing import Any

_CTX_SIZE = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len — unchanged since OpenSSL 0.9.8


def _load_libcrypto() -> Any:
    """OpenSSL's libcrypto (the one hashlib already loaded), checked by a self-test; or None."""
    try:
        import _hashlib  # noqa: F401  (loads libcrypto into the process)

        path = None
        with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
            for line in maps:
                if "libcrypto" in line:
                    path = line.split()[-1]
                    break
        lib = ctypes.CDLL(path or ctypes.util.find_library("crypto") or "libcrypto.so.3")
        for name in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
            getattr(lib, name).restype = ctypes.c_int
        lib.SHA256_Init.argtypes = [ctypes.c_void_p]
        lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.SHA256_Final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        # self-test: save the state mid-block, restore it into fresh memory, finish both ways
        sample = bytes(range(256)) * 5
        ctx = ctypes.create_string_buffer(_CTX_SIZE)
        lib.SHA256_Init(ctx)
        lib.SHA256_Update(ctx, sample[:100], 100)
        copy = ctypes.create_string_buffer(ctx.raw, _CTX_SIZE)
        lib.SHA256_Update(copy, sample[100:], len(sample) - 100)
        out = ctypes.create_string_buffer(32)
        lib.SHA256_Final(out, copy)
        if out.raw != hashlib.sha256(sample).digest() or struct.unpack_from("<II", ctx.raw, 32) != (800, 0):
            return None
        return lib
    except (OSError, AttributeError, ImportError):
        return None


_LIBCRYPTO: Any = None
_LIBCRYPTO_LOADED = False


def _libcrypto() -> Any:
    global _LIBCRYPTO, _LIBCRYPTO_LOADED
    if not _LIBCRYPTO_LOADED:
        _LIBCRYPTO = _load_libcrypto()
        _LIBCRYPTO_LOADED = True
    return _LIBCRYPTO


class Sha256:
    """SHA-256 whose running state can be saved and restored, so that a resumed download
    need not reread what it already hashed. Falls back to :mod:`hashlib` (no saved state)
    where OpenSSL's low-level functions are not reachable. Both release the GIL."""

    def __init__(self, state: bytes | None = None, *, savable: bool = True) -> None:
        self.length = 0
        self._lib: Any = _libcrypto() if savable else None
        self._ctx: Any = None
        self._py: Any = None
        if self._lib is not None:
            self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
            if state is None:
                self._lib.SHA256_Init(self._ctx)
            else:
                ctypes.memmove(self._ctx, state, _CTX_SIZE)
                low, high = struct.unpack_from("<II", state, 32)
                self.length = ((high << 32) | low) // 8
        elif state is not None:
            raise ValueError("no savable SHA-256 in this process")
        else:
            self._py = hashlib.sha256()

    @classmethod
    def restore(cls, state: bytes, offset: int) -> Sha256 | None:
        """The hasher saved at ``offset``, or None if the state is unusable here."""
        if len(state) != _CTX_SIZE or _libcrypto() is None:
            return None
        hasher = cls(state)
        return hasher if hasher.length == offset else None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        if self._ctx is not None:
            if isinstance(data, bytes):
                self._lib.SHA256_Update(self._ctx, data, n)
            else:
                view = memoryview(data)
                buf = (ctypes.c_char * n).from_buffer(view) if not view.readonly else bytes(view)
                self._lib.SHA256_Update(self._ctx, buf, n)
        else:
            self._py.update(data)
        self.length += n

    def state(self) -> bytes | None:
        return bytes(self._ctx.raw) if self._ctx is not None else None

    def matches(self, state: bytes) -> bool:
        """Whether this hasher stands where ``state`` was saved: the same bytes went in."""
        mine = self.state()
        if mine is None or len(state) != _CTX_SIZE:
            return False
        (num,) = struct.unpack_from("<I", state, 104)
        if num >= 64:
            return False
        # h[8], Nl, Nh; num; the buffered bytes of the last partial block (the rest is stale)
        return mine[:40] == state[:40] and mine[104:108] == state[104:108] and mine[40 : 40 + num] == state[40 : 40 + num]

    def hexdigest(self) -> str:
        if self._ctx is None:
            return str(self._py.hexdigest())
        copy = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, copy)
        return out.raw.hex()
