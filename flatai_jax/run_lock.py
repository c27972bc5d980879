"""A run owns its workdir: the lock that keeps a second ``flatai train`` out of it.

``hold(workdir, process_index)`` takes an exclusive ``fcntl.flock`` on
``<workdir>/.lock`` (process 0) or ``<workdir>/.lock.<i>`` (process i of a
multi-host run, so every process of a second job is refused, not only its
first) and writes ``pid host`` into it. The OS drops a flock when its process
dies, even by ``kill -9``, so a stale file never blocks the next start; the
file itself stays and is overwritten by the next owner.

Limits: flock works on local disks and on NFS (Linux maps it to POSIX locks);
object-store workdirs (``gs://``) have no locks and are not guarded. Processes
forked while the lock is held share it (grain's data workers are started
with spawn, so they do not).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path


class WorkdirInUse(RuntimeError):
  """Another live process holds the workdir's lock."""


def lock_path(workdir, process_index: int = 0) -> Path:
  """The lock file of one process of a run."""
  return Path(workdir) / (".lock" if process_index == 0 else f".lock.{process_index}")


def _owner(path: Path) -> str:
  """``process PID on host HOST`` from a lock file (its holder wrote ``pid host``)."""
  try:
    pid, host = path.read_text().split()[:2]
  except (OSError, ValueError):  # the holder has not written it yet
    return "another process"
  return f"process {pid} on host {host}"


@contextlib.contextmanager
def hold(workdir, process_index: int = 0):
  """Holds the workdir's lock for the ``with`` block.

  Args:
    workdir: run directory (created if missing); a URL (``gs://…``) is not locked.
    process_index: ``jax.process_index()`` of this process.
  Raises:
    WorkdirInUse: naming the pid and host of the live owner.
  """
  if "://" in str(workdir):
    yield
    return
  path = lock_path(workdir, process_index)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirInUse(f"{workdir} is in use by {_owner(path)} (a running flatai train); "
                         "wait for it to finish, stop it, or choose another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # closing the last descriptor releases the flock
