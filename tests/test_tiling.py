"""Full-frame correction: tiling geometry, blending, and the identity round trip."""
import numpy as np
import pytest

from flatai_jax import correct
from flatai_jax.train_step import split_model


@pytest.mark.parametrize("size,tile,stride", [(100, 32, 24), (32, 32, 24), (20, 32, 24), (97, 32, 16)])
def test_tile_origins_cover_the_frame(size, tile, stride):
  starts = correct.tile_origins(size, tile, stride)
  covered = np.zeros(max(size, tile), bool)
  for s in starts:
    covered[s:s + tile] = True
  assert covered[:size].all() and starts[0] == 0
  assert max(starts) + tile == max(size, tile)
  assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_blend_window_is_symmetric_raised_cosine():
  w = correct.blend_window(16, 4)
  np.testing.assert_allclose(w, w.T)
  np.testing.assert_allclose(w[8, :4], 0.5 - 0.5 * np.cos(np.pi * (np.arange(4) + 0.5) / 4), atol=1e-6)
  np.testing.assert_allclose(w[4:12, 4:12], 1.0)
  # overlapping ramps of neighbours sum to one: r(i) + r(overlap-1-i) == 1
  r = w[8, :4]
  np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-6)


def test_untrained_model_returns_the_image_unchanged(tiny):
  """Zero-initialised heads mean F = 1, G = 0: tiling, per-tile normalisation,
  denormalisation and blending must then reproduce the input exactly."""
  config = tiny("flat")
  graphdef, params = split_model(config)
  rng = np.random.default_rng(0)
  image = (rng.gamma(2.0, 0.02, (70, 90, 1)) + np.linspace(0, 0.1, 90)[None, :, None]).astype(np.float32)
  out = correct.correct_image(graphdef, params, config, image, tile=32, overlap=8, batch_size=4)
  np.testing.assert_allclose(out.corrected, image, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.F, 1.0, atol=1e-6)
  np.testing.assert_allclose(out.G, 0.0, atol=1e-6)


def test_report_numbers():
  flat = np.ones((64, 64, 1), np.float32)
  assert correct.background_nonuniformity(flat) == 0.0
  ramp = np.tile(np.linspace(1.0, 2.0, 64, dtype=np.float32)[None, :, None], (64, 1, 1))
  # 8 column blocks: medians 1 + (8j + 3.5)/63, spread 56/63, median of medians 1.5
  expected = (56 / 63) / 1.5
  np.testing.assert_allclose(correct.background_nonuniformity(ramp), expected, rtol=1e-3)
  ref = np.zeros((10, 10, 1), np.float32)
  ref[0, 0] = 1.0
  e = correct.error_vs_reference(ref + 5.0, ref)  # a pure offset is not an error
  assert e["mae"] == 0.0


def test_output_paths():
  p = correct.output_paths("/data/m31.fits")
  assert str(p["corrected"]) == "/data/m31_corrected.fits"
  assert str(p["F"]) == "/data/m31_corrected_F.fits"
  q = correct.output_paths("/data/m31.fits", "/out/x.xisf")
  assert str(q["G"]) == "/out/x_G.xisf" and str(q["preview"]) == "/out/x_preview.png"


def test_psf_mosaic_places_each_grid_psf_in_its_cell():
  from flatai_jax.metrics import psf_mosaic
  psf = np.zeros((1, 2, 3, 4, 4), np.float32)
  for gy in range(2):
    for gx in range(3):
      psf[0, gy, gx, 1, 2] = 10 * gy + gx
  m = psf_mosaic(psf)
  assert m.shape == (1, 8, 12, 1)
  for gy in range(2):
    for gx in range(3):
      assert m[0, gy * 4 + 1, gx * 4 + 2, 0] == 10 * gy + gx


def test_tile_offset_matcher_recovers_per_tile_pedestals():
  """Tiles that see one smooth G plus their own constant pedestal: the matcher
  returns minus those pedestals (up to their mean), so blended tiles agree."""
  rng = np.random.default_rng(3)
  tile, ys, xs = 16, [0, 12, 20], [0, 12, 24, 28]
  yy, xx = np.mgrid[0:36, 0:44] / 40.0
  g = (0.02 * xx + 0.01 * yy ** 2)[..., None] * np.array([1.0, 2.0])
  pedestal = rng.normal(0, 0.05, (len(ys), len(xs), 2))
  m = correct.TileOffsetMatcher(ys, xs, tile, 2)
  for gy, y in enumerate(ys):
    for gx, x in enumerate(xs):
      m.add(gy, gx, g[y:y + tile, x:x + tile] + pedestal[gy, gx])
  delta = m.solve()
  np.testing.assert_allclose(delta.sum(axis=(0, 1)), 0.0, atol=1e-9)
  np.testing.assert_allclose(delta, -(pedestal - pedestal.mean(axis=(0, 1))), atol=1e-8)
