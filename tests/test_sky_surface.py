"""The sky surface on the working grid: it recovers a smooth sky between objects, says when a
frame's background cannot be told from its objects, and the correction follows that."""
import numpy as np
import pytest
from scipy import ndimage

from flatai_jax import correct, sky_surface
from flatai_jax.evaluation import quality, real

GRID = (96, 128)


def _smooth_sky(hw=GRID):
  y, x = np.meshgrid(np.linspace(-1, 1, hw[0]), np.linspace(-1, 1, hw[1]), indexing="ij")
  return 100.0 * (1.0 - 0.2 * (x ** 2 + y ** 2)) + 3.0 * x - 2.0 * y  # vignetting + gradient


def test_cell_noise_is_the_sigma_of_one_cell_under_a_smooth_field():
  rng = np.random.default_rng(0)
  plane = _smooth_sky() + rng.normal(0.0, 2.0, GRID)
  assert sky_surface.cell_noise(plane) == pytest.approx(2.0, rel=0.05)


def test_fit_recovers_the_sky_between_bright_objects():
  rng = np.random.default_rng(1)
  sky = _smooth_sky()
  objects = np.zeros(GRID)
  for cy, cx in rng.uniform((10, 10), (86, 118), (8, 2)):
    objects += 200.0 * np.exp(-((np.arange(96)[:, None] - cy) ** 2
                               + (np.arange(128)[None] - cx) ** 2) / (2 * 2.0 ** 2))
  plane = sky + objects + rng.normal(0.0, 2.0, GRID)
  fit = sky_surface.fit_sky(plane)
  away = ndimage.binary_dilation(objects > 2.0, iterations=4)
  # the sky is recovered to a fraction of one cell's noise, and the objects are not sky
  assert np.sqrt(np.mean((fit.surface - sky)[~away] ** 2)) < 0.3 * 2.0
  assert not fit.sky[objects > 20.0].any()
  assert 0.8 < fit.structure < 1.3  # sky + noise: explained by the smooth fit


def test_a_frame_filling_nebula_has_structure_far_above_the_noise():
  rng = np.random.default_rng(2)
  nebula = ndimage.gaussian_filter(rng.normal(0.0, 1.0, GRID), 4.0)
  nebula = 60.0 * np.clip(nebula / nebula.std(), 0.0, None)  # bright filaments over half the frame
  fit = sky_surface.fit_sky(_smooth_sky() + nebula + rng.normal(0.0, 2.0, GRID))
  # far above sky + noise (≈ 1): no sky surface is applied (filaments this fine also raise the
  # cell-noise estimate, so the number is lower than a smooth nebula's)
  assert fit.structure > correct.SKY_STRUCTURE[1] + 0.5, fit.structure


def test_ramp_down():
  assert [sky_surface.ramp_down(v, 1.6, 2.2) for v in (1.0, 1.6, 1.9, 2.2, 5.0)] == \
      pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])


@pytest.fixture(scope="module")
def model():
  import flatai_jax
  return flatai_jax.load()


def test_a_vignetted_star_field_gets_a_flat_background(model):
  """Vignetting, a gradient, stars and noise at full resolution: the background comes out flat
  to a few hundredths of the pixel noise (measured as the real-data evaluation measures it)."""
  rng = np.random.default_rng(3)
  h, w = 900, 1200
  y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1.33, 1.33, w), indexing="ij")
  f_true = 1.0 - 0.3 * ((x ** 2 + y ** 2) / (1.0 + 1.33 ** 2)) ** 1.5  # 30 % corner loss
  stars = np.zeros((h, w))
  stars[rng.integers(0, h, 400), rng.integers(0, w, 400)] = rng.uniform(100, 5000, 400)
  stars = ndimage.gaussian_filter(stars, 1.5)
  image = ((200.0 + stars) * f_true + 4.0 * x + rng.normal(0.0, 5.0, (h, w)))
  image = image.astype(np.float32)[..., None]
  mask = real.source_mask(image[..., 0])
  before = real.background_flatness(image, mask)["bg_rms_sigma"]
  out = model.correct(image)
  after = real.background_flatness(out.corrected, mask)["bg_rms_sigma"]
  assert before > 0.5 and after < 0.1 * before, (before, after, out.notes)
  ratio = quality.noise_sigma(out.corrected[..., 0]) / quality.noise_sigma(image[..., 0])
  assert abs(ratio - 1.0) < 0.1, ratio  # the noise is only divided by F (≤ 1.25 at the corners)
  assert not out.notes


def test_a_frame_filling_nebula_is_left_as_it_is(model):
  """Where a nebula fills the frame no smooth fit can tell it from background: the frame is
  left as it is (its gain against the truth stays 1) and the output says why."""
  rng = np.random.default_rng(4)
  h, w = 768, 1024
  nebula = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (h // 8, w // 8)), 4.0)
  nebula = ndimage.zoom(np.clip(nebula / nebula.std(), 0.0, None), 8, order=1)
  truth = (100.0 + 300.0 * nebula + rng.normal(0.0, 3.0, (h, w))).astype(np.float32)[..., None]
  out = model.correct(truth)
  assert out.notes and "extended objects" in out.notes[0]
  assert real.affine_scale(out.corrected, truth) == pytest.approx(1.0, abs=0.01)
  assert np.abs(out.corrected - truth).max() < 1e-3 * truth.max()


def test_corrected_is_exactly_observed_minus_g_over_f_with_the_sky_stage(model):
  rng = np.random.default_rng(5)
  y, x = np.mgrid[0:300, 0:400]
  image = (100.0 + 0.05 * x + rng.normal(0, 1.0, (300, 400))).astype(np.float32)[..., None]
  out = model.correct(image)
  np.testing.assert_allclose(out.corrected, (image - out.G) / out.F, rtol=1e-5, atol=1e-4)
  assert abs(np.median(out.G)) < 0.05  # the sky pedestal stays in the frame
  assert correct.background_nonuniformity(out.corrected) < 0.2 * correct.background_nonuniformity(
      image)
