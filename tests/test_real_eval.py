"""The real-data evaluation's scores (flatai_jax/evaluation/real.py) on frames with known answers;
the set itself is built locally (data_pipelines/build_real_eval.py) and is not needed here."""
import numpy as np
import pytest

from flatai_jax.evaluation import real


def _frame(h=240, w=320, seed=0):
  rng = np.random.default_rng(seed)
  sky = 0.1 + rng.normal(0, 0.002, (h, w))
  ys, xs = rng.integers(0, h, 60), rng.integers(0, w, 60)
  sky[ys, xs] += rng.uniform(0.2, 1.0, 60)
  return sky.astype(np.float32)[..., None]


def test_to_sky_units_maps_percentiles():
  light = (np.arange(10000, dtype=np.float32).reshape(100, 100) * 3.0 + 50.0)[..., None]
  t = real.to_sky_units(light)
  lo, hi = np.percentile(t, [1.0, 99.5])
  assert lo == pytest.approx(real.SKY_PEDESTAL, abs=1e-6)
  assert hi == pytest.approx(1.0 + real.SKY_PEDESTAL, abs=1e-5)


def test_flat_error_is_zero_for_the_truth_and_the_rms_of_a_known_flat():
  truth = _frame()
  assert real.flat_error_pct(truth.astype(np.float64), truth) == pytest.approx(0.0, abs=1e-9)
  h, w = truth.shape[:2]
  ramp = 1.0 + 0.1 * (np.linspace(-1, 1, w)[None, :] * np.ones((h, 1)))[..., None]
  err = real.flat_error_pct(truth * ramp, truth)
  expected = 100 * np.sqrt(np.mean((ramp[..., 0] / np.median(ramp) - 1) ** 2))
  assert err == pytest.approx(expected, rel=0.05)


def test_affine_scale_is_the_gain_of_the_output():
  truth = _frame(seed=1)
  assert real.affine_scale(0.9 * truth + 0.3, truth) == pytest.approx(0.9, rel=1e-6)


def test_background_flatness_sees_a_gradient_and_ignores_stars():
  rng = np.random.default_rng(2)
  h, w = 320, 480
  flat = 1000.0 + rng.normal(0, 10.0, (h, w))
  ys, xs = rng.integers(0, h, 300), rng.integers(0, w, 300)
  stars = flat.copy()
  stars[ys, xs] += 5000.0
  sloped = stars + 0.2 * np.arange(w)[None, :]  # 96 ADU across = 9.6 σ
  score = lambda a: real.background_flatness(a[..., None], real.source_mask(a))
  f_flat, f_stars, f_slope = score(flat), score(stars), score(sloped)
  # box medians of ~600 px: noise 1.25·σ/√600 ≈ 0.05 σ
  assert f_flat["bg_rms_sigma"] < 0.1 and f_stars["bg_rms_sigma"] < 0.12
  assert 7.0 < f_slope["bg_range_sigma"] < 9.6


def test_source_mask_covers_a_faint_halo_but_not_a_gradient():
  """A galaxy halo peaking at 0.3 σ per pixel is masked (a method that subtracts it is not scored
  flatter for it); a frame-wide gradient and vignetting are not."""
  rng = np.random.default_rng(5)
  h, w = 400, 600
  yy, xx = np.mgrid[0:h, 0:w]
  halo = 3.0 * np.exp(-0.5 * ((yy - 150) ** 2 + (xx - 200) ** 2) / 40.0 ** 2)
  vignetting = 1.0 - 0.2 * ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (w / 2) ** 2
  frame = (1000.0 + 0.05 * xx) * vignetting + halo + rng.normal(0, 10.0, (h, w))
  mask = real.source_mask(frame)
  assert mask[halo > 2.0].mean() > 0.95            # down to 0.2 σ per pixel
  assert mask[halo < 0.01].mean() < 0.08           # the sky, its gradient and vignetting
  eaten = frame - halo
  kept = real.background_flatness(frame[..., None], mask)["bg_rms_sigma"]
  assert real.background_flatness(eaten[..., None], mask)["bg_rms_sigma"] == pytest.approx(
      kept, rel=0.1)
