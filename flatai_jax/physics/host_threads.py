"""Independent compiled computations run side by side on the host's CPU cores.

XLA runs one CPU computation on one core (its FFTs included), so a computation repeated on
independent inputs (the tiles of a frame, the starts of a fit) uses the other cores only when
each call runs on a thread of its own; the threads wait on XLA, not on Python. The only module
that starts threads for that.
"""
from __future__ import annotations

import concurrent.futures
import os

import jax


def cpu_workers() -> int:
  """The CPU cores this process may use (at least 1)."""
  if hasattr(os, "sched_getaffinity"):
    return max(1, len(os.sched_getaffinity(0)))
  return max(1, os.cpu_count() or 1)


def map_compiled(fn, args: list[tuple], workers: int | None = None) -> list:
  """``[jax.device_get(fn(*a)) for a in args]``, at most ``workers`` calls at a time.

  Args:
    fn: a compiled computation (``jax.jit(f).lower(*args[0]).compile()``: compiled once
      before, so that the threads do not each compile it), or any function of arrays.
    args: its argument tuples (host or device arrays).
    workers: calls at once (default :func:`cpu_workers`); the results do not depend on it.
  Returns:
    the results in the order of ``args``, on the host.
  """
  workers = min(workers or cpu_workers(), len(args))
  if workers <= 1:
    return [jax.device_get(fn(*a)) for a in args]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(lambda a: jax.device_get(fn(*a)), args))
