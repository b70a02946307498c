"""Keeping the daemon's resident memory flat over years of downloads (glibc).

Every thread that allocates gets a malloc arena of its own (up to eight per core); memory
freed in an arena goes back to the kernel only from its top, so a few download threads that
each touched megabytes leave RSS a little higher after every update. Two measures:
:func:`cap_malloc_arenas` limits the process to two arenas (unless ``MALLOC_ARENA_MAX`` is set
in the environment, which glibc honours itself), and :func:`release_free_memory` hands the
free pages of every arena back after each download (``malloc_trim``). Both are no-ops where
the C library is not glibc. See ``tests/benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

M_ARENA_MAX = -8  # mallopt parameter, <malloc.h>
ARENAS = 2

_LIBC: Any = None
_CAPPED = False


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.mallopt.restype = ctypes.c_int
            lib.malloc_trim.argtypes = [ctypes.c_size_t]
            lib.malloc_trim.restype = ctypes.c_int
            _LIBC = lib
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


def cap_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Limit glibc to ``arenas`` malloc arenas (once per process; the environment's
    ``MALLOC_ARENA_MAX`` wins). True when the limit is in force."""
    global _CAPPED
    if _CAPPED or "MALLOC_ARENA_MAX" in os.environ:
        return _CAPPED
    lib = _libc()
    if lib:
        _CAPPED = bool(lib.mallopt(M_ARENA_MAX, arenas))
    return _CAPPED


def release_free_memory() -> None:
    """Give the free pages of every malloc arena back to the kernel."""
    lib = _libc()
    if lib:
        lib.malloc_trim(0)
