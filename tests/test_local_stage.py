"""The local stage finds small dust shadows the working grid cannot hold, and nothing else."""
import numpy as np
import pytest
from scipy import ndimage

from flatai_jax import local_stage

HW = (1200, 1600)
DONUTS = [(300, 400, 20, 0.05), (800, 1200, 32, 0.03), (600, 900, 14, 0.08)]  # y, x, radius, depth


def _donuts(hw=HW):
  yy, xx = np.mgrid[0:hw[0], 0:hw[1]]
  f = np.ones(hw)
  for cy, cx, r, depth in DONUTS:
    rr = np.hypot(yy - cy, xx - cx)
    f *= 1.0 - depth * ((rr < r) & (rr > 0.4 * r))  # a shadow with the obstruction's hole
  return ndimage.gaussian_filter(f, 2.0)


def _stars(rng, hw=HW, n=1500):
  s = np.zeros(hw)
  s[rng.integers(0, hw[0], n), rng.integers(0, hw[1], n)] = rng.uniform(50, 3000, n)
  return ndimage.gaussian_filter(s, 1.5)


def _dip(plane, cy, cx, r):
  yy, xx = np.mgrid[cy - r:cy + r, cx - r:cx + r]
  rr = np.hypot(yy - cy, xx - cx)
  ring = (rr < 0.9 * r) & (rr > 0.5 * r)
  return 1.0 - np.median(plane[cy - r:cy + r, cx - r:cx + r][ring]) / np.median(plane)


def test_small_dust_shadows_are_found_and_mostly_removed():
  rng = np.random.default_rng(0)
  plane = ((1000.0 + _stars(rng)) * _donuts() + rng.normal(0, 10.0, HW)).astype(np.float32)
  geo = local_stage.fine_geometry(HW, (96, 128))
  assert geo is not None and min(geo.block) == 4
  dust = local_stage.dust_dips(plane, geo)
  assert dust.cells > 0 and 0.04 < dust.deepest < 0.12
  corrected = plane / dust.f_local
  for cy, cx, r, depth in DONUTS:
    before, after = _dip(plane, cy, cx, r), _dip(corrected, cy, cx, r)
    assert before > 0.6 * depth and abs(after) < 0.35 * before, (r, before, after)
  # F_local is exactly 1 away from the shadows and never above 1
  assert dust.f_local.max() <= 1.0
  assert (dust.f_local == 1.0).mean() > 0.9


def test_noise_and_bright_objects_get_no_dust():
  rng = np.random.default_rng(1)
  yy, xx = np.mgrid[0:HW[0], 0:HW[1]]
  galaxy = 400.0 * np.exp(-(((yy - 600) / 120.0) ** 2 + ((xx - 800) / 200.0) ** 2))
  for plane in (1000.0 + rng.normal(0, 30.0, HW),
                1000.0 + galaxy + _stars(rng) + rng.normal(0, 10.0, HW)):
    dust = local_stage.dust_dips(plane.astype(np.float32), local_stage.fine_geometry(HW, (96, 128)))
    assert dust.cells == 0 and dust.deepest == 0.0
    assert (dust.f_local == 1.0).all()


def test_the_fine_grid_is_as_fine_as_the_frame_allows():
  assert local_stage.fine_geometry(HW, (96, 128)).grid_hw == (384, 512)  # ×4, 4-px cells
  assert local_stage.fine_geometry((700, 1000), (96, 128)).grid_hw == (192, 256)  # ×2
  assert local_stage.fine_geometry((300, 400), (96, 128)) is None  # 2-px cells at ×2


def test_noise_gets_no_dust_on_the_coarser_fine_grid():
  rng = np.random.default_rng(3)
  plane = (1000.0 + rng.normal(0, 30.0, (700, 1000))).astype(np.float32)
  dust = local_stage.dust_dips(plane, local_stage.fine_geometry(plane.shape, (96, 128)))
  assert dust.cells == 0 and (dust.f_local == 1.0).all()


@pytest.mark.parametrize("hw", [(1200, 1600)])
def test_the_corrector_applies_the_local_stage(hw):
  import flatai_jax
  rng = np.random.default_rng(2)
  image = ((1000.0 + _stars(rng)) * _donuts() + rng.normal(0, 10.0, hw)).astype(np.float32)
  out = flatai_jax.load().correct(image[..., None])
  assert any(n.startswith("local stage: small dust shadows") for n in out.notes), out.notes
  for cy, cx, r, depth in DONUTS:
    assert abs(_dip(out.corrected[..., 0], cy, cx, r)) < 0.35 * depth
  np.testing.assert_allclose(out.corrected, (image[..., None] - out.G) / out.F, rtol=1e-4)
