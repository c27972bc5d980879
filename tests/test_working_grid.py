"""Frame ↔ working grid: block medians and smooth upsampling (flatai_jax/working_grid.py)."""
import numpy as np
import pytest

from flatai_jax import working_grid as wg


def test_geometry_keeps_aspect_and_turns_portrait():
  g = wg.geometry((4000, 6000), (96, 128))
  assert not g.transposed and g.block == (42, 47)  # ⌈4000/96⌉, ⌈6000/128⌉
  assert g.pad == ((96 * 42 - 4000) // 2, (128 * 47 - 6000) // 2)
  p = wg.geometry((6000, 4000), (96, 128))
  assert p.transposed and p.block == (42, 47)


@pytest.mark.parametrize("hw", [(400, 600), (600, 400), (96, 128), (97, 250)])
def test_upsample_reproduces_a_quadratic_field(hw):
  """Cubic convolution (Keys, a = −0.5) is exact for quadratics away from the border cells."""
  g = wg.geometry(hw, (24, 32))
  yy, xx = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float64)
  field = 1.0 + 1e-3 * xx - 2e-3 * yy + 3e-6 * xx * yy + 1e-6 * xx ** 2
  t = lambda a: a.T if g.transposed else a
  by, bx = g.block
  # exact cell values: the field at each cell centre
  cy = (np.arange(24) + 0.5) * by - 0.5 - g.pad[0]
  cx = (np.arange(32) + 0.5) * bx - 0.5 - g.pad[1]
  ty, tx = np.meshgrid(cy, cx, indexing="ij")
  ry, rx = (tx, ty) if g.transposed else (ty, tx)
  grid = 1.0 + 1e-3 * rx - 2e-3 * ry + 3e-6 * rx * ry + 1e-6 * rx ** 2
  up = wg.upsample(t(t(grid)), g)
  assert up.shape == hw
  m = 2 * max(by, bx)
  np.testing.assert_allclose(up[m:-m, m:-m], field[m:-m, m:-m], rtol=2e-5)


def test_block_median_rejects_stars_and_hot_pixels():
  rng = np.random.default_rng(0)
  h, w = 480, 640
  sky = 100.0 + 0.02 * np.arange(w)[None, :] * np.ones((h, 1))
  image = sky + rng.normal(0, 5.0, (h, w))
  ys, xs = rng.integers(0, h, 800), rng.integers(0, w, 800)
  image[ys, xs] += 5000.0  # hot pixels / star cores: 800 of 307 200 pixels
  g = wg.geometry((h, w), (96, 128))
  grid = wg.bin_frame(image.astype(np.float32), g)
  truth = wg.bin_frame(sky.astype(np.float32), g)
  # median of 25 px: noise 1.25·5/√25 ≈ 1.25; no cell pulled up by the 5000-ADU outliers
  assert np.abs(grid - truth).max() < 6.0
  assert abs(float(np.mean(grid - truth))) < 0.3


def test_bin_frame_ignores_nan():
  image = np.full((200, 300), 7.0, np.float32)
  image[:50, :50] = np.nan
  grid = wg.bin_frame(image, wg.geometry(image.shape, (20, 30)))
  assert np.all(grid == 7.0)
