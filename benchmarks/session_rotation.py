"""Session mode under field rotation (an alt-az mount: the sky turns a little from frame to frame),
which the joint fit does not model: how it degrades.

  PYTHONPATH=. python benchmarks/session_rotation.py [DEGREES_PER_FRAME ...]   # default 0 0.2 1 3

A 10-frame session of a frame-filling nebula over a star field (as ``tests/test_session.py``'s
``nebula_session``, a larger sky so that it can turn), the sky turned by ``k × rate`` degrees in
frame k and dithered ±30 px, × the tests' flat (vignetting and donuts) + a per-frame gradient, 1 %
noise. Prints the session's path, F against the true flat (% RMS, 8-px smoothing) and each
frame's residual flat error (%) for session mode and single-frame mode.
"""
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_session as ts  # noqa: E402  (the tests' synthetic sky and flat)

from flatai_jax import session  # noqa: E402


def rotating_session(rate: float, n: int = 10, seed: int = 7, pad: int = 80):
  """``n`` frames whose sky turns by ``rate`` degrees per frame; clean frames, observed, flat."""
  rng = np.random.default_rng(seed)
  big_hw = (ts.HW[0] + 2 * pad, ts.HW[1] + 2 * pad)
  big = ts.star_sky(rng, big_hw)
  y, x = np.mgrid[:big_hw[0], :big_hw[1]].astype(np.float64)
  for _ in range(400):
    y0, x0 = rng.uniform(0, big_hw[0]), rng.uniform(0, big_hw[1])
    sy, sx = rng.uniform(8, 50, 2)
    big += rng.uniform(0.2, 1.5) * np.exp(-((y - y0) / sy) ** 2 / 2 - ((x - x0) / sx) ** 2 / 2)
  f = ts.true_flat()
  yy, xx = np.mgrid[:ts.HW[0], :ts.HW[1]] / max(ts.HW)
  clean, observed = [], []
  for i in range(n):
    sky = ndimage.rotate(big, rate * i, reshape=False, order=3, mode="nearest") if rate else big
    oy, ox = rng.integers(pad - 30, pad + 31, 2)
    t = sky[oy:oy + ts.HW[0], ox:ox + ts.HW[1]]
    g = 0.05 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)
    clean.append(t[..., None].astype(np.float32))
    observed.append((t * f + g + 0.01 * rng.standard_normal(ts.HW))[..., None].astype(np.float32))
  return clean, observed, f[..., None]


def main() -> None:
  rates = [float(a) for a in sys.argv[1:]] or [0.0, 0.2, 1.0, 3.0]
  single = session.single_frame()
  errors = lambda outs, clean: " ".join(
      f"{ts._truth_scores([o], [c])[0]:.2f}" for o, c in zip(outs, clean))
  for rate in rates:
    clean, observed, f = rotating_session(rate)
    lines = []
    flat, outs = session.correct_arrays(observed, ts.GRID, progress=lines.append, single=single)
    path = (f"{sum(r['same_sky'] for r in flat.frames)} of {len(observed)} frames on one sky"
            if flat.mode == "joint" else "the scale-split path")
    print(f"{rate}° per frame: mode {flat.mode}, {path}, F {session.rms_pct(flat.F, f):.2f} % RMS")
    print("  session     ", errors([o.corrected for o in outs], clean))
    print("  single-frame", errors([single(x).corrected for x in observed], clean))


if __name__ == "__main__":
  main()
