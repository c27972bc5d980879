"""Cost of the evaluation's classical baselines and star measurements on one full-size frame.

    PYTHONPATH=. python benchmarks/evaluate.py [--hw 2048,3072] [--repeats 3]

Prints, on this machine and in one run, seconds per mono frame of the default
sensor size for each baseline of ``flatai_jax.evaluation.baselines`` and for the star fits
of ``flatai_jax.evaluation.stars``, each with its ratio to a reference measured in the same
run: the background samples (16 boxes along the short side, 3σ-clipped medians)
made with astropy's ``sigma_clipped_stats`` box by box, as a plain script would.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from flatai_jax.evaluation import baselines, stars


def timed(fn, repeats):
  """Median wall time of ``fn()``, seconds (first call included: nothing is compiled)."""
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


def frame(h, w, n_stars=3000, seed=0):
  """Vignetted sky with Gaussian stars and noise, ``(h, w, 1) float32``."""
  rng = np.random.default_rng(seed)
  img = np.zeros((h, w), np.float32)
  ys, xs = rng.integers(0, h, n_stars), rng.integers(0, w, n_stars)
  np.add.at(img, (ys, xs), rng.pareto(1.3, n_stars).astype(np.float32) * 0.05)
  img = ndimage.gaussian_filter(img, 1.2) + 0.05
  y, x = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
  img *= (1 - 0.3 * (x ** 2 + y ** 2) / 2).astype(np.float32)
  return (img + rng.normal(0, 1e-3, img.shape)).astype(np.float32)[..., None]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--hw", default="2048,3072")
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  h, w = map(int, a.hw.split(","))
  img = frame(h, w)
  from astropy.stats import sigma_clipped_stats
  size = min(h, w) // 16

  def astropy_samples():
    return [sigma_clipped_stats(img[y:y + size, x:x + size, 0], sigma=3.0, maxiters=3)[1]
            for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]

  ref = timed(astropy_samples, 1)
  ours = timed(lambda: baselines.box_samples(img[..., 0], 16), a.repeats)
  print(f"frame {h}×{w}; box samples: astropy {ref:.2f} s, baselines.box_samples {ours:.2f} s "
        f"({ref / ours:.1f}×)")
  for name, fn in baselines.methods().items():
    t = timed(lambda: fn(img), a.repeats)
    print(f"  {name:12s} {t:7.3f} s/frame   ({t / ref:.2f}× the astropy sampling alone)")
  clean = img[..., 0]
  t0 = time.perf_counter()
  xy = stars.find_stars(clean, 1e-3, max_stars=200)
  t_find = time.perf_counter() - t0
  t_fit = timed(lambda: stars.measure(clean, xy), 1)
  print(f"  stars: find {t_find:.2f} s, fit {len(xy)} stars {t_fit:.2f} s "
        f"({1e3 * t_fit / max(len(xy), 1):.1f} ms/star)")


if __name__ == "__main__":
  main()
