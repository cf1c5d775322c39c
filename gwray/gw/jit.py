"""Numba compilation for the solver's inner loops, cached on disk when a location is writable."""
from __future__ import annotations

import numba as nb


def njit(fn):
    """``numba.njit(cache=True)(fn)``; without a writable cache location (a read-only install and
    no writable ``~/.cache`` or ``NUMBA_CACHE_DIR``) numba refuses ``cache=True`` at decoration,
    so the kernel is compiled once per process instead (about a second) rather than failing."""
    try:
        return nb.njit(cache=True)(fn)
    except RuntimeError:
        return nb.njit(fn)
