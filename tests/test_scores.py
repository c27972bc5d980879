"""One definition each: PSNR at its three call sites, robust σ, field radius, atomic writing."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from flatai_jax import correct, scores
from flatai_jax.evaluation import crops, quality, stars
from flatai_jax.io import atomic
from flatai_jax.physics import geometry


def _pair(seed=0, shape=(48, 64, 1)):
  """A skewed sky-like truth and an image with noise, a smooth error and a 0.3 pedestal."""
  rng = np.random.default_rng(seed)
  ref = rng.gamma(2.0, 0.05, shape) + 0.02
  ref[5, 7] = 3.0  # a saturated-star-like outlier: the percentile peak ignores it
  img = ref + rng.normal(0.0, 0.01, shape) + 0.02 * np.linspace(0, 1, shape[1])[None, :, None] + 0.3
  return img, ref


def test_psnr_by_hand():
  ref = np.linspace(0.0, 1.0, 1000)  # quantiles of a uniform ramp are exact: range 0.998
  sign = np.where(np.arange(1000) % 2 == 0, 1.0, -1.0)
  img = ref + 5.0 + 0.01 * sign  # a pedestal of 5 (not an error) and ±0.01 (MSE 1e-4)
  assert scores.data_range(ref) == pytest.approx(0.998, abs=1e-12)
  assert scores.psnr(img, ref) == pytest.approx(20 * np.log10(0.998) + 40.0, abs=1e-9)
  assert scores.mae(img, ref) == pytest.approx(0.01, abs=1e-12)


def test_the_three_psnr_call_sites_agree():
  """eval_final.json (crops, jnp, normalised units), flatai correct --reference and the report."""
  img, ref = _pair()
  report = quality.psnr(img, ref)
  reference = correct.error_vs_reference(img, ref)["psnr"]
  offset, scale = 0.01, 0.37  # crops see normalised units: PSNR must not depend on them
  norm = lambda a: jnp.asarray((a - offset) / scale, jnp.float32)[None]
  crop = float(crops.batch_metrics({"clean": norm(ref), "observed": norm(ref)},
                                   {"clean": norm(img)})["psnr"][0])
  assert report == pytest.approx(reference, abs=1e-9)  # both float64
  assert crop == pytest.approx(report, abs=2e-3)  # float32 vs float64
  assert 20.0 < report < 40.0
  # the peak is the percentile range, not the max (3.0) nor the 99.9th percentile alone
  peak = np.percentile(ref, 99.9) - np.percentile(ref, 0.1)
  d = (img - ref) - np.median(img - ref)
  assert report == pytest.approx(10 * np.log10(peak ** 2 / np.mean(d ** 2)), abs=1e-9)


def test_relative_mae_of_correct_uses_the_same_peak():
  img, ref = _pair(1)
  e = correct.error_vs_reference(img, ref)
  d = (img - ref) - np.median(img - ref)
  assert e["mae"] == pytest.approx(np.mean(np.abs(d)) / quality.data_range(ref), rel=1e-12)
  assert correct.error_vs_reference(ref + 5.0, ref)["mae"] == 0.0  # a pure offset is no error


def test_robust_sigma_is_the_mad_sigma_and_ignores_outliers():
  astropy_stats = pytest.importorskip("astropy.stats")
  rng = np.random.default_rng(2)
  x = rng.normal(3.0, 2.0, 200_001)
  assert quality.robust_sigma(x) == pytest.approx(2.0, rel=0.01)
  x[:2000] = 1e6  # 1 % outliers move it by about 1 %, not by orders of magnitude
  assert quality.robust_sigma(x) == pytest.approx(2.0, rel=0.03)
  x[5] = np.nan
  assert quality.robust_sigma(x) == pytest.approx(astropy_stats.mad_std(x, ignore_nan=True),
                                                  rel=1e-12)
  np.testing.assert_allclose(quality.robust_sigma(np.array([[1.0, 2.0, 4.0], [0.0, 0.0, 9.0]]),
                                                  axis=1), [scores.MAD_TO_SIGMA, 0.0])


def test_noise_sigma_of_a_frame_with_stars_and_a_gradient():
  rng = np.random.default_rng(3)
  h, w = 200, 300
  plane = 0.1 + 0.05 * np.linspace(0, 1, w)[None, :] + rng.normal(0.0, 0.004, (h, w))
  plane[rng.integers(0, h, 300), rng.integers(0, w, 300)] += 0.5  # stars, hot pixels
  assert quality.noise_sigma(plane) == pytest.approx(0.004, rel=0.03)


def test_one_field_radius_for_pixels_and_global_coordinates():
  h, w = 96, 128
  coords = np.asarray(geometry.frame_coords(jnp.zeros(2), (h, w), jnp.array([h, w], jnp.float32)))
  xy = np.array([[0, 0], [w - 1, h - 1], [w - 1, 0], [63, 47], [100.0, 10.0]], np.float64)
  r = stars.field_radius_px(xy, (h, w))
  want = np.asarray(geometry.field_radius(coords[xy[:4, 1].astype(int), xy[:4, 0].astype(int)],
                                          h / w))
  np.testing.assert_allclose(r[:4], want, atol=1e-6)
  # outer pixel corners are at radius 1, the centre at 0; a pixel centre by hand
  np.testing.assert_allclose(stars.field_radius_px(np.array([[-0.5, -0.5], [63.5, 47.5]]),
                                                   (h, w)), [1.0, 0.0], atol=1e-6)
  gx, gy = 2 * 100.5 / w - 1, 2 * 10.5 / h - 1
  assert r[4] == pytest.approx(np.hypot(gx, gy * h / w) / np.hypot(1, h / w), abs=1e-6)
  np.testing.assert_allclose(np.linalg.norm(geometry.field_position(coords, h / w), axis=-1),
                             geometry.field_radius(coords, h / w), atol=1e-7)


def test_atomic_write_replaces_whole_and_cleans_up(tmp_path):
  target = tmp_path / "sub" / "my frame é.npz"
  atomic.write_atomic(target, lambda p: np.savez(p, a=np.arange(3)))  # savez keeps the name
  assert np.load(target)["a"].tolist() == [0, 1, 2]
  atomic.write_text_atomic(tmp_path / "t.json", "old")

  def fails(p):
    p.write_text("half")
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    atomic.write_atomic(tmp_path / "t.json", fails)
  assert (tmp_path / "t.json").read_text() == "old"  # untouched
  assert sorted(os.listdir(tmp_path)) == ["sub", "t.json"]  # no temporary left
  assert sorted(os.listdir(tmp_path / "sub")) == ["my frame é.npz"]


def test_atomic_folder_replaces_an_existing_folder(tmp_path):
  target = tmp_path / "model"
  (target / "old").mkdir(parents=True)

  def build(p):
    p.mkdir()
    (p / "new.txt").write_text("x")

  atomic.write_atomic(target, build)
  assert os.listdir(target) == ["new.txt"] and os.listdir(tmp_path) == ["model"]
  names = {atomic.temporary_path(tmp_path / "a.fits.fz").name for _ in range(20)}
  assert len(names) == 20 and all(n.startswith(".a.") and n.endswith(".fits.fz") for n in names)


def test_exported_model_folder_is_replaced_whole(tiny, tmp_path, monkeypatch):
  import jax

  from flatai_jax import checkpointing
  from flatai_jax.models import abstract_params
  config = tiny("flat")
  _, abstract = abstract_params(config)
  filled = lambda v: jax.tree.map(lambda s: jnp.full(s.shape, v, s.dtype), abstract)
  out = tmp_path / "model"
  checkpointing.export_inference(out, filled(1.0), config, 3)
  checkpointing.export_inference(out, filled(2.0), config, 5)  # over the first one
  assert os.listdir(tmp_path) == ["model"] and checkpointing.is_inference(out)
  monkeypatch.chdir(tmp_path)  # a relative path, as in `flatai evaluate --checkpoint=model`
  params, step = checkpointing.restore_params("model", abstract)
  assert step == 5 and all(float(jnp.max(jnp.abs(x - 2.0))) == 0.0 for x in jax.tree.leaves(params))
