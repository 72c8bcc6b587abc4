"""Giving the memory a finished task freed back to the operating system.

A render allocates frames and encoder buffers from whichever glibc arena its
thread uses, and glibc keeps freed memory in each arena for reuse rather
than returning it. A worker's resident size then depends on which threads
happened to render lately, not on what it holds: it wanders by tens of
megabytes and looks like a leak to anyone watching it against a memory
limit. `malloc_trim(0)` after each task returns the free pages of every
arena, so the resident size follows the memory actually in use. Elsewhere
than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _find_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
        return trim
    except (OSError, AttributeError):
        return None


_trim = _find_trim()


def release_freed_memory() -> bool:
    """Return freed heap pages to the system; False where the C library
    cannot. About 4 ms after a 480p preview render on glibc (ctypes lets go
    of the GIL meanwhile), so callers on an event loop run it in a thread."""
    if _trim is None:
        return False
    _trim(0)
    return True
