"""What ``--input_stretch=auto`` decides on real frames (issue 16): each real evaluation frame is
scaled to [0, 1] (0.01st–99.99th percentile), then stretched with the MTF that puts its median
at 0.25 (an auto-stretch); ``stretch.resolve('auto', …)`` is asked about both versions.

  PYTHONPATH=. python benchmarks/stretch_auto.py [--real_dir evaluation_data/real]

Prints per frame: the true balance M (0.5 = the frame already sits at 0.25 or above: not
stretched), what auto decided for the unstretched and the stretched frame, and the ratio
measured/true M; then the counts.
"""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np


def autostretch_balance(median: float, target: float = 0.25) -> float:
  """The MTF balance M with ``mtf(M, median) = target`` (0.5 when the median is above it)."""
  if median >= target:
    return 0.5
  # mtf(M, x) = y  ⇔  M = x (1 − y) / (x + y − 2 x y)
  return float(median * (1 - target) / (median + target - 2 * median * target))


def main() -> None:
  from flatai_jax import stretch
  from flatai_jax.io import images
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--real_dir", default="evaluation_data/real")
  args = parser.parse_args()
  paths = sorted(glob.glob(str(Path(args.real_dir) / "*.fits")))
  if not paths:
    raise SystemExit(f"{args.real_dir}: no FITS frames (make real-data)")
  counts = {"stretched_found": 0, "stretched_cannot_tell": 0, "stretched_called_linear": 0,
            "linear_called_stretched": 0, "stretched": 0}
  print(f"{'frame':40s} {'true M':>8s}  {'unstretched →':16s} {'stretched →':16s} ratio")
  for p in paths:
    image, _ = images.read_image(p, allow_nan=True)
    x = np.nan_to_num(image[..., :1].astype(np.float64))
    lo, hi = np.percentile(x, 0.01), np.percentile(x, 99.99)
    x = np.clip((x - lo) / (hi - lo), 0, 1).astype(np.float32)
    m = autostretch_balance(float(np.median(x)))
    kind0, m0, _ = stretch.resolve("auto", "fits", ">f4", x)
    y = stretch.mtf(m, x).astype(np.float32)
    kind1, m1, note1 = stretch.resolve("auto", "fits", ">f4", y)
    said0 = kind0 if m0 is None else f"mtf:{m0:.3g}"
    said1 = ("cannot tell" if note1 and kind1 == "linear" else kind1) if m1 is None else \
        f"mtf:{m1:.3g}"
    ratio = f"{m1 / m:.2f}" if m1 is not None and m < 0.5 else ""
    print(f"{Path(p).name:40s} {m:8.4g}  {said0:16s} {said1:16s} {ratio}")
    if kind0 != "linear":
      counts["linear_called_stretched"] += 1
    if m < 0.5:
      counts["stretched"] += 1
      key = ("stretched_found" if m1 is not None else
             "stretched_cannot_tell" if note1 else "stretched_called_linear")
      counts[key] += 1
  print(counts)


if __name__ == "__main__":
  main()
