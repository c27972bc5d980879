"""Time and peak memory of a session at scale (issue 18): N frames of H × W, 20 % vignetting,
1 % noise, dithered ±40 px, through ``session.correct_files``; then, as the reference of the same
run, single-frame mode on the first frame (the shipped model, ``Corrector.correct_file``, which
also writes F, the confidence and a preview). The model is loaded and compiled before the clock
starts (the scale-split path's leave-half-out test and pass 2 run it).

SCENE ``nebula`` (default): a frame-filling smooth nebula — the joint path. ``stars``: a sparse
star field on a smooth sky (``h · w / 2000`` Gaussian stars, σ 1.5 px, power-law fluxes) — a
smooth sky, so the scale-split path and its leave-half-out test and dust pass.

  PYTHONPATH=. python benchmarks/session_joint.py N H W [SCENE]     # e.g. 10 2000 3000 stars
"""
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from flatai_jax import session
from flatai_jax.io import images

n, h, w = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
scene = sys.argv[4] if len(sys.argv) > 4 else "nebula"
rng = np.random.default_rng(0)
pad = 48
if scene == "nebula":
  big = ndimage.gaussian_filter(rng.random((h + 2 * pad, w + 2 * pad)), 40)
  big = 0.2 + 3 * (big - big.min()) / (big.max() - big.min())
elif scene == "stars":
  big = np.zeros((h + 2 * pad, w + 2 * pad), np.float32)
  count = h * w // 2000
  ys, xs = rng.integers(0, big.shape[0], count), rng.integers(0, big.shape[1], count)
  np.add.at(big, (ys, xs), (20.0 * rng.pareto(1.5, count)).astype(np.float32))
  big = 1.0 + ndimage.gaussian_filter(big, 1.5)
else:
  raise SystemExit(f"SCENE: nebula or stars, not {scene!r}")
yy, xx = np.mgrid[:h, :w]
f = 1.0 - 0.2 * (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (max(h, w) / 2) ** 2)
tmp = Path(tempfile.mkdtemp())
paths = []
for i in range(n):
  oy, ox = rng.integers(pad - 40, pad + 41, 2)
  frame = big[oy:oy + h, ox:ox + w] * f + 0.01 * rng.standard_normal((h, w))
  paths.append(tmp / f"f{i:03d}.fits")
  images.write_image(paths[-1], frame.astype(np.float32))
del big
session.single_frame()(np.ones((256, 256), np.float32))  # loaded and compiled outside the timing
t = time.perf_counter()
report = session.correct_files(paths, tmp / "out", session.working_grid_hw(),
                              print_fn=lambda *a: None)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
print(f"{n} frames {h}x{w} ({scene}): mode {report['mode']}, {dt:.1f} s, {dt / n:.2f} s/frame, "
      f"peak RSS {peak:.2f} GiB")
print(report["chosen"])
f_hat = images.read_image(tmp / "out" / "session_F.fits")[0]
print(f"session F against the true flat: {session.rms_pct(f_hat, f[..., None]):.2f} % RMS "
      f"(doing nothing: {session.rms_pct(np.ones_like(f_hat), f[..., None]):.2f} %)")
corrector = session.single_frame().__self__
t = time.perf_counter()
corrector.correct_file(paths[0], out_dir=tmp / "single", print_fn=lambda *a, **k: None)
single = time.perf_counter() - t
print(f"single-frame mode, one frame: {single:.1f} s; session per frame / single-frame: "
      f"{dt / n / single:.2f}x")
shutil.rmtree(tmp)  # 100 frames of 24 Mpx leave ~30 GB of inputs and outputs
