"""Atomic file writing: the one way flatai_jax writes a file (or a folder) that others may read.

A writer writes to a fresh hidden name beside the target (same folder, so the
rename stays on one file system; same suffixes, so writers that pick a format
from the name — matplotlib, ``np.savez``, astropy — still do), and the result
is renamed over the target with ``os.replace``. A reader sees the old file or
the new one, never half of one; on an error the temporary is removed and the
target is left as it was. Imports nothing else of flatai_jax.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def temporary_path(path: Path) -> Path:
  """A fresh, unused hidden name beside ``path`` with the same suffixes
  (``a.fits.fz`` → ``.a.X.fits.fz``).

  The name is unique even among concurrent writers of the same target (``mkstemp``);
  nothing exists under it on return.
  """
  suffix = "".join(path.suffixes) or ".tmp"
  stem = path.name[:len(path.name) - len(suffix)] if path.suffixes else path.name
  fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=suffix, dir=path.parent)
  os.close(fd)
  os.unlink(tmp)  # writers want to create the file (or folder) themselves
  return Path(tmp)


def _remove(p: Path) -> None:
  if p.is_dir() and not p.is_symlink():
    shutil.rmtree(p, ignore_errors=True)
  elif p.exists() or p.is_symlink():
    p.unlink()


def write_atomic(path, write_fn: Callable[[Path], object]) -> Path:
  """Calls ``write_fn(tmp)`` with a temporary path beside ``path``, then renames it to ``path``.

  Args:
    path: the target file, or folder when ``write_fn`` makes a folder at ``tmp``
      (an existing target folder is then removed just before the rename).
    write_fn: writes the whole content at the path it is given.
  Returns:
    ``path`` as a :class:`~pathlib.Path`. Parent folders are created. Any
    exception of ``write_fn`` or of the rename removes the temporary and propagates.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temporary_path(path)
  try:
    write_fn(tmp)
    if tmp.is_dir() and path.is_dir():
      shutil.rmtree(path)  # os.replace cannot replace a non-empty folder
    os.replace(tmp, path)
  except BaseException:
    _remove(tmp)
    raise
  return path


def write_text_atomic(path, text: str) -> Path:
  """Writes ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`)."""
  return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def save_figure_atomic(fig, path, **savefig_kw) -> Path:
  """``fig.savefig`` to ``path`` atomically; the format follows ``path``'s suffix."""
  return write_atomic(path, lambda p: fig.savefig(p, **savefig_kw))
