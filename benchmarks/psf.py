"""Optics throughput: PSFs/s against hcipy, spatially varying convolution against scipy.

    PYTHONPATH=. python benchmarks/psf.py [--batch 16] [--repeats 5] [--parts psf,convolution,training]

Prints, on this machine and in one run:
- PSFs/s for a batch of 256-px-pupil PSFs at Q = 2 and 4 (point-sampled,
  65 / 129 px kernels = ±16 λ/D), ``physics.psf`` jitted vs hcipy's
  FraunhoferPropagator on the same grids (hcipy is the test extra; skipped
  if absent), and the L1 difference of the two;
- the time of one spatially varying convolution of a 1024² frame with an
  8 × 8 grid of 31-px PSFs, jitted vs the same overlap-add in numpy/scipy;
- images/s of the training-time optics (PSF field drawn + blur) for the
  quickstart (64² crops, 3 × 3 grid) and base (128² crops) configs.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import signal

from configs.default import get_config
from flatai_jax.physics import convolve, geometry, optics, psf


def timed(fn, repeats):
  """Median wall time of ``fn()`` (already warmed up), seconds."""
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def bench_psf(batch, repeats):
  rng = np.random.default_rng(0)
  coeffs = rng.normal(0, 0.05, (batch, 11)).astype(np.float32)
  coeffs[:, :3] = 0.0
  for q in (2, 4):
    spec = psf.PSFSpec(n_pupil=256, q=q, oversample=1, kernel_size=32 * q + 1)
    fn = jax.jit(lambda c: psf.psf(c, spec))
    ours = fn(coeffs).block_until_ready()
    t_ours = timed(lambda: fn(coeffs), repeats) / batch
    line = f"PSF 256-px pupil Q={q} k={spec.kernel_size}: flatai {1 / t_ours:8.1f} PSF/s ({t_ours * 1e3:.2f} ms)"
    try:
      import hcipy
    except ImportError:
      print(line + "  (hcipy not installed)")
      continue
    grid = hcipy.make_pupil_grid(256, 1.0)
    aperture = hcipy.evaluate_supersampled(hcipy.make_circular_aperture(1.0), grid, 4)
    basis = hcipy.make_zernike_basis(11, 1.0, grid, 1, radial_cutoff=False)
    k = spec.kernel_size
    prop = hcipy.FraunhoferPropagator(grid, hcipy.make_uniform_grid([k, k], [k / q] * 2), 1.0)

    def hc_all():
      out = []
      for c in coeffs:
        opd = basis.linear_combination(c.astype(np.float64))
        img = prop(hcipy.Wavefront(aperture * np.exp(2j * np.pi * opd), 1.0)).power.shaped
        out.append(img / img.sum())
      return np.stack(out)

    ref = hc_all()
    t_hc = timed(hc_all, max(1, repeats // 2)) / batch
    l1 = np.abs(np.asarray(ours, np.float64) - ref).sum(axis=(1, 2)).max()
    print(line + f" | hcipy {hcipy.__version__} {1 / t_hc:8.1f} PSF/s ({t_hc * 1e3:.2f} ms)"
          f" | speed-up {t_hc / t_ours:5.2f}x | max L1 diff {l1:.1e}")


def scipy_overlap_add(image, psfs):
  """The same bilinear-window overlap-add as convolve.py, in numpy/scipy (reference)."""
  h, w = image.shape
  gy, gx, k, _ = psfs.shape
  wy = convolve.tent_weights(h, convolve.node_positions(h, gy))
  wx = convolve.tent_weights(w, convolve.node_positions(w, gx))
  out = np.zeros((h + k - 1, w + k - 1), np.float32)
  for i in range(gy):
    rows = np.flatnonzero(wy[i])
    r0, r1 = rows[0], rows[-1] + 1
    for j in range(gx):
      cols = np.flatnonzero(wx[j])
      c0, c1 = cols[0], cols[-1] + 1
      patch = image[r0:r1, c0:c1] * wy[i, r0:r1, None] * wx[j, None, c0:c1]
      out[r0:r1 + k - 1, c0:c1 + k - 1] += signal.fftconvolve(patch, psfs[i, j])
  return out[k // 2:k // 2 + h, k // 2:k // 2 + w]


def bench_convolution(repeats):
  rng = np.random.default_rng(1)
  image = (rng.random((1024, 1024)) ** 8).astype(np.float32)
  spec = psf.PSFSpec(n_pupil=64, q=2, oversample=4, kernel_size=31)
  psfs = np.asarray(psf.psf(rng.normal(0, 0.08, (8, 8, 11)).astype(np.float32), spec))
  fn = jax.jit(convolve.spatially_varying_convolve)
  ours = np.asarray(fn(image[..., None], psfs))[..., 0]
  t_ours = timed(lambda: fn(image[..., None], psfs), repeats)
  ref = scipy_overlap_add(image, psfs)
  t_ref = timed(lambda: scipy_overlap_add(image, psfs), repeats)
  print(f"spatially varying convolution 1024² × 8×8 PSFs (31 px): flatai {t_ours:.3f} s | "
        f"scipy overlap-add {t_ref:.3f} s | speed-up {t_ref / t_ours:4.2f}x | "
        f"max |diff| {np.abs(ours - ref).max():.1e}")


def bench_training_optics(size, repeats):
  config = get_config(f"psf,{size}")
  cfg, b, n = config.degrade.psf, config.train.batch_size, config.data.crop_size
  sensor = jnp.asarray(config.data.sensor_hw, jnp.float32)
  aspect = float(sensor[0] / sensor[1])
  keys = jax.random.split(jax.random.key(0), b)
  offsets = jax.random.uniform(jax.random.key(1), (b, 2)) * (sensor - n)
  coords = jax.vmap(lambda o: geometry.frame_coords(o, (n, n), sensor))(jnp.floor(offsets))
  images = jax.random.uniform(jax.random.key(2), (b, n, n, config.data.channels))

  @jax.jit
  def field_and_blur(keys, coords, images):
    psfs = jax.vmap(lambda k, c: optics.psf_field(k, c, cfg, aspect))(keys, coords)
    return jax.vmap(optics.blur)(images, psfs)

  @jax.jit
  def fields(keys, coords):
    return jax.vmap(lambda k, c: optics.psf_field(k, c, cfg, aspect))(keys, coords)

  jax.block_until_ready(field_and_blur(keys, coords, images))
  jax.block_until_ready(fields(keys, coords))
  t_all = timed(lambda: field_and_blur(keys, coords, images), repeats)
  t_psf = timed(lambda: fields(keys, coords), repeats)
  gy, gx = cfg.grid
  print(f"training optics, {size}: batch {b} × {n}² crops, {gy}×{gx} PSFs of {cfg.kernel_size} px "
        f"(pupil {cfg.n_pupil}, Q={cfg.q:g}, oversample {cfg.oversample}): "
        f"{b / t_all:7.1f} images/s ({t_all * 1e3:.1f} ms/batch, of which PSFs {t_psf * 1e3:.1f} ms)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16, help="PSFs per batch")
  parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median)")
  parser.add_argument("--parts", default="psf,convolution,training",
                      help="comma-separated subset of psf, convolution, training")
  args = parser.parse_args()
  parts = set(args.parts.split(","))
  print(f"devices: {jax.devices()}")
  if "psf" in parts:
    bench_psf(args.batch, args.repeats)
  if "convolution" in parts:
    bench_convolution(args.repeats)
  if "training" in parts:
    for size in ("quickstart", "base"):
      bench_training_optics(size, args.repeats)


if __name__ == "__main__":
  main()
