"""GraXpert's classical background extraction as a baseline (extra ``graxpert``)."""
import numpy as np
import pytest

from flatai_jax.evaluation import baselines, graxpert

pytestmark = pytest.mark.skipif(not graxpert.available(),
                                reason="graxpert not installed (pip install '.[graxpert]' && pip install --no-deps graxpert)")

H, W = 300, 400
STARS = [(60, 50, 0.6), (200, 80, 0.3), (330, 120, 0.8), (120, 220, 0.4), (260, 250, 0.5),
         (370, 270, 0.7), (30, 260, 0.5)]  # x, y, peak; Gaussian σ = 2 px


def _grid():
  return np.mgrid[0:H, 0:W].astype(np.float64)


def _frame(rng):
  """Flat sky 0.1 + stars + noise (clean) and the same + a linear gradient (observed)."""
  yy, xx = _grid()
  sky = np.full((H, W), 0.1)
  for x, y, peak in STARS:
    sky += peak * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 2.0 ** 2)
  noise = rng.normal(scale=0.002, size=(H, W))
  gradient = 1.25e-4 * xx + 6e-5 * yy  # 0 → 0.068: the sky ranges over 0.1–0.17
  return (sky + noise).astype(np.float32), (sky + gradient + noise).astype(np.float32)


def _source_mask():
  yy, xx = _grid()
  return np.any([(xx - x) ** 2 + (yy - y) ** 2 < 12 ** 2 for x, y, _ in STARS], axis=0)


def _background_range(plane, box=25):
  """Range of the 25 × 25 px box medians, sources masked."""
  masked = np.where(_source_mask(), np.nan, plane).reshape(H // box, box, W // box, box)
  medians = np.nanmedian(masked, axis=(1, 3))
  return float(np.nanmax(medians) - np.nanmin(medians))


def _fluxes(plane):
  """Aperture sums (r < 8 px) less the median of an annulus (12–18 px)."""
  yy, xx = _grid()
  out = []
  for x, y, _ in STARS:
    r2 = (xx - x) ** 2 + (yy - y) ** 2
    aperture = r2 < 8 ** 2
    annulus = np.median(plane[(r2 > 12 ** 2) & (r2 < 18 ** 2)])
    out.append(plane[aperture].sum() - annulus * aperture.sum())
  return np.array(out)


def test_methods_include_graxpert():
  m = baselines.methods()
  assert {"graxpert_sub", "graxpert_div"} <= set(m)


def test_graxpert_sub_flattens_the_gradient_and_keeps_star_fluxes():
  clean, observed = _frame(np.random.default_rng(0))
  out = baselines.methods()["graxpert_sub"](observed[..., None])
  assert out["corrected"].shape == (H, W, 1) and out["corrected"].dtype == np.float32
  corrected = out["corrected"][..., 0]
  before, after = _background_range(observed), _background_range(corrected)
  assert before > 0.05 and after * 5 <= before, (before, after)
  np.testing.assert_allclose(_fluxes(corrected), _fluxes(clean), rtol=0.02)
  np.testing.assert_array_equal(out["F"], 1.0)


@pytest.mark.parametrize("a, b, c", [(0.2, 1e-4, -5e-5),  # inside [0, 1]: used as it is
                                     (1000.0, 0.5, -0.3)])  # ADU: rescaled to [0, 1] and back
def test_graxpert_background_of_a_plane_is_the_plane(a, b, c):
  yy, xx = _grid()
  plane = a + b * xx + c * yy
  bg = graxpert.background(plane.astype(np.float32))
  assert bg.shape == (H, W) and bg.dtype == np.float32
  assert np.max(np.abs(bg / plane - 1.0)) < 0.01
