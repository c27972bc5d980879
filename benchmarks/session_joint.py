"""Time and peak memory of a joint session (issue 18): N frames of H × W with a frame-filling
smooth nebula, 20 % vignetting, 1 % noise, dithered ±40 px, through ``session.correct_files``;
then, as the reference of the same run, single-frame mode on the first frame (the shipped model,
``Corrector.correct_file``, compiled beforehand). Peak RSS is read before the model is loaded.

  PYTHONPATH=. python benchmarks/session_joint.py N H W      # e.g. 10 2000 3000
"""
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from flatai_jax import correct, session
from flatai_jax.io import images

n, h, w = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
pad = 48
big = ndimage.gaussian_filter(rng.random((h + 2 * pad, w + 2 * pad)), 40)
big = 0.2 + 3 * (big - big.min()) / (big.max() - big.min())
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
t = time.perf_counter()
report = session.correct_files(paths, tmp / "out", session.working_grid_hw(),
                              print_fn=lambda *a: None)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
print(f"{n} frames {h}x{w}: mode {report['mode']}, {dt:.1f} s, {dt / n:.2f} s/frame, "
      f"peak RSS {peak:.2f} GiB")
print(report["chosen"])
f_hat = images.read_image(tmp / "out" / "session_F.fits")[0]
print(f"session F against the true flat: {session.rms_pct(f_hat, f[..., None]):.2f} % RMS "
      f"(doing nothing: {session.rms_pct(np.ones_like(f_hat), f[..., None]):.2f} %)")
corrector = correct.load()
corrector.correct(np.ones((256, 256), np.float32))  # compile outside the timing
t = time.perf_counter()
corrector.correct_file(paths[0], out_dir=tmp / "single", print_fn=lambda *a, **k: None)
single = time.perf_counter() - t
print(f"single-frame mode, one frame: {single:.1f} s; session per frame / single-frame: "
      f"{dt / n / single:.2f}x")
shutil.rmtree(tmp)  # 100 frames of 24 Mpx leave ~30 GB of inputs and outputs
