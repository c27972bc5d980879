"""GraXpert's classical background extraction (no AI model, nothing downloaded), a baseline.

GraXpert (https://graxpert.com, GPL-3.0) is installed as the optional extra
``graxpert`` (``pip install '.[graxpert]'`` then ``pip install --no-deps graxpert``;
its own requirements pull in its GUI and pin NumPy/OpenCV, hence ``--no-deps``).
This module calls GraXpert's own functions, with the defaults of its GUI
(``graxpert.preferences.Prefs``) and the rules of its GUI/CLI
(``graxpert.application.app``, ``graxpert.cmdline_tools.BGECmdlineTool``):

1. sample points: ``background_grid_selection(image, bg_pts_option=15,
   bg_tol_option=1.0, sample_size=25)``, the GUI's "Create Grid" — 15 points per
   row, spacing ``W / 15``; each point moves to the darkest of five 50 × 50 px
   boxes (itself and its four diagonal neighbours at ±25 px); points whose box
   median exceeds the frame's median + 1.0 × the MAD of the box medians are dropped.
   (GraXpert's CLI takes no grid: it reads points from a saved preferences file.)
2. sample values and surface: ``background_extraction.interpol`` (the worker that
   ``extract_background`` runs per channel): a sigma-clipped median of the
   50 × 50 px box at each point, then ``RBF`` (GraXpert's
   ``RadialBasisInterpolation``, ``thin_plate`` kernel), ``Splines``
   (``scipy.interpolate.bisplrep``, order 3; needs ≥ 16 points) or ``Kriging``
   (``pykrige`` ordinary kriging, spherical variogram), smoothing 0.0; RBF and
   Kriging are evaluated at 1/4 resolution and resized (``cv2.INTER_LINEAR``),
   Splines at full resolution.

``interpol`` is called in this process, not through ``extract_background``'s
process pool: the same arithmetic (checked: the backgrounds of all three methods
equal ``extract_background``'s bit for bit), without forking a (JAX) process or
starting GraXpert's logging manager. The correction itself (GraXpert: ``image − bg +
mean bg`` or ``image / bg · mean image``, clipped to [0, 1]) is left to
``baselines.subtract`` / ``baselines.divide``.

Normalisation as GraXpert's ``AstroImage.set_from_file``: a float frame inside
[0, 1] is used as it is, otherwise it is rescaled linearly (min → 0, max → 1);
the background is mapped back to the input's units. Planes are treated one by
one (``baselines`` calls this per channel); GraXpert's GUI would place one grid,
chosen on the luminance, for all three channels of a colour image.

Importing GraXpert creates empty model folders under ``~/.local/share/GraXpert``
(``appdirs.user_data_dir``), a temporary directory (removed at exit) and an unused
MinIO client object; nothing goes over the network.

Timing: one 1000 × 1500 plane (sky 0.1, gradient, 40 stars, noise), median of 3
on the 2 shared CPU cores (load average ≈ 7.5), GraXpert 3.2.0a3: grid selection
0.12 s (120 of 150 points kept); :func:`background` with it, RBF 1.2 s, Splines
0.44 s, Kriging 1.6 s; ``graxpert_sub`` / ``graxpert_div`` 1.3 / 1.2 s per frame
(``rbf_div`` 1.3 s, ``poly_sub`` 0.8 s in the same run). RBF's time is the
evaluation of the 120-centre thin-plate spline at 250 × 375 points.

Accuracy with the defaults (300 × 400, no noise): on a plane 0.2 + 1e-4·x − 5e-5·y
the RBF background is within 0.55 % everywhere; on a steeper 0.1 → 0.17 plane
within 0.5 % inside but 1.15 % in the darkest corner (the 50 px boxes there are
reflect-padded; the tolerance drops the brightest quarter of the points, so that
corner is extrapolated). Splines with smoothing 0 (``bisplrep``, s = 0) and
Kriging (spherical variogram, reverting to the mean away from the points) are
off by 10–100 % where the tolerance left no points: only RBF is a baseline.
"""
from __future__ import annotations

import functools
import queue

import numpy as np

METHODS = ("RBF", "Splines", "Kriging")


@functools.cache
def _graxpert():
  """GraXpert's two modules, imported on first use."""
  from graxpert import background_extraction, background_grid_selection
  return background_extraction, background_grid_selection


def available() -> bool:
  """True when GraXpert and the modules its background extraction imports are importable."""
  try:
    _graxpert()
  except Exception:  # ImportError, or a broken install failing at import
    return False
  return True


def version() -> str | None:
  """GraXpert's version string, or None when it is not installed."""
  try:
    from importlib.metadata import version as v
    return v("graxpert")
  except Exception:
    return None


def _to_unit_range(plane: np.ndarray):
  """``plane`` as GraXpert loads a float image: kept if inside [0, 1], else min–max rescaled.

  Returns ``(image (H, W, 1) float32 in [0, 1], offset, scale)`` with
  ``plane ≈ offset + scale · image``. Non-finite pixels are set to the median.
  """
  p = np.asarray(plane, np.float64)
  finite = np.isfinite(p)
  if not finite.all():
    p = np.where(finite, p, np.median(p[finite]) if finite.any() else 0.0)
  lo, hi = float(p.min()), float(p.max())
  if lo >= 0.0 and hi <= 1.0:
    offset, scale = 0.0, 1.0
  else:
    offset, scale = lo, max(hi - lo, np.finfo(np.float32).tiny)
  return ((p - offset) / scale).astype(np.float32)[..., None], offset, scale


def sample_points(image: np.ndarray, pts_per_row: int = 15, tol: float = 1.0,
                  sample_size: int = 25) -> np.ndarray:
  """GraXpert's automatic grid (``background_grid_selection``) on an ``(H, W, 1)`` [0, 1] image.

  Returns ``(n, 3) int`` rows ``x, y, 1`` (pixel column, row of each box centre).
  """
  _, grid = _graxpert()
  pts = grid.background_grid_selection(image, pts_per_row, tol, sample_size)
  return np.asarray(pts, dtype=int).reshape(-1, 3)


def background(plane: np.ndarray, method: str = "RBF", *, pts_per_row: int = 15,
               tol: float = 1.0, sample_size: int = 25, smoothing: float = 0.0,
               rbf_kernel: str = "thin_plate", spline_order: int = 3,
               downscale_factor: int | None = None) -> np.ndarray:
  """GraXpert's classical background surface of one plane.

  Args:
    plane: ``(H, W)`` linear frame, any units (float; NaN/inf are set to the median).
    method: ``"RBF"`` (default, as GraXpert's), ``"Splines"`` or ``"Kriging"``.
    pts_per_row: sample points per row of the grid (GraXpert default 15).
    tol: grid tolerance in MADs of the box medians (GraXpert default 1.0).
    sample_size: half-size in px of each sample box (GraXpert default 25 → 50 × 50).
    smoothing: GraXpert's smoothing (default 0.0, interpolation through the samples).
    rbf_kernel: RBF kernel (default ``"thin_plate"``).
    spline_order: ``bisplrep`` order for Splines (default 3).
    downscale_factor: resolution of the evaluated surface; default as GraXpert
      (4 for RBF and Kriging, 1 for Splines).
  Returns:
    ``(H, W) float32`` background in the units of ``plane``.
  Raises:
    ValueError: unknown method, or too few sample points (Splines ≥ 16, others ≥ 2).
    RuntimeError: GraXpert's interpolation failed (it logs the error; its worker
      does not raise).
  """
  if method not in METHODS:
    raise ValueError(f"method {method!r} is not one of {METHODS}")
  extraction, _ = _graxpert()
  image, offset, scale = _to_unit_range(plane)
  pts = sample_points(image, pts_per_row, tol, sample_size)
  needed = 16 if method == "Splines" else 2  # the GUI's checks before it calculates
  if len(pts) < needed:
    raise ValueError(f"GraXpert {method} needs ≥ {needed} sample points; the grid gave {len(pts)}")
  if downscale_factor is None:
    downscale_factor = 4 if method in ("RBF", "Kriging") else 1

  from multiprocessing import shared_memory
  shm_in = shared_memory.SharedMemory(create=True, size=image.nbytes)
  shm_bg = shared_memory.SharedMemory(create=True, size=image.nbytes)
  try:
    src = np.ndarray(image.shape, np.float32, buffer=shm_in.buf)
    src[:] = image
    bg = np.ndarray(image.shape, np.float32, buffer=shm_bg.buf)
    bg[:] = np.nan  # stays NaN where interpol fails (it logs and returns)
    extraction.interpol(shm_in.name, shm_bg.name, 0, pts[:, 0], pts[:, 1], image.shape,
                        method, smoothing, downscale_factor, sample_size, rbf_kernel,
                        spline_order, np.float32, queue.SimpleQueue(), lambda q: None)
    out = np.array(bg[..., 0], np.float64)
    del src, bg
  finally:
    for shm in (shm_in, shm_bg):
      shm.close()
      shm.unlink()
  if not np.isfinite(out).all():
    raise RuntimeError(f"GraXpert {method} interpolation failed (see the log)")
  return (offset + scale * out).astype(np.float32)
