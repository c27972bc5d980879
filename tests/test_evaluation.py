"""Evaluation report: PSNR/SSIM against scikit-image, classical baselines on known fields, star
FWHM of rendered profiles, and the report's columns on held-out frames."""
import numpy as np
import pytest

from flatai_jax.evaluation import baselines, quality, stars


def _sky(h=192, w=256, seed=0, n_stars=60, sky=0.05, fwhm=2.5):
  """Constant sky plus Gaussian stars, ``(h, w, 1) float64``."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  img = np.full((h, w), sky)
  s = fwhm / 2.3548
  for x, y, f in zip(rng.uniform(0, w, n_stars), rng.uniform(0, h, n_stars),
                     rng.uniform(0.05, 0.5, n_stars)):
    img += f * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / s ** 2)
  return img[..., None]


def _unit_grid(h, w):
  y = 2.0 * (np.arange(h) + 0.5) / h - 1.0
  x = 2.0 * (np.arange(w) + 0.5) / w - 1.0
  xx, yy = np.meshgrid(x, y)
  return xx[..., None], yy[..., None]


def test_psnr_and_ssim_match_scikit_image_and_hand_values():
  metrics = pytest.importorskip("skimage.metrics")
  rng = np.random.default_rng(1)
  ref = np.cumsum(np.cumsum(rng.normal(size=(40, 50, 3)), 0), 1)
  img = ref + rng.normal(scale=2.0, size=ref.shape) + 0.3 * ref.mean()
  peak = float(ref.max() - ref.min())
  ours = quality.ssim(img, ref, peak)
  theirs = metrics.structural_similarity(img, ref, data_range=peak, gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False, channel_axis=-1)
  assert abs(ours - theirs) < 1e-6, (ours, theirs)
  # PSNR: scikit-image's with the truth's percentile range as data_range, after the median offset
  shifted = img - np.median(img - ref)
  assert abs(quality.psnr(img, ref) - metrics.peak_signal_noise_ratio(
      ref, shifted, data_range=quality.data_range(ref))) < 1e-6
  # hand-computed: constant images a, b → SSIM = (2ab + C1) / (a² + b² + C1), variances 0
  a, b, L = np.full((20, 20, 1), 0.3), np.full((20, 20, 1), 0.5), 1.0
  c1 = (0.01 * L) ** 2
  assert quality.ssim(a, b, L) == pytest.approx((2 * 0.15 + c1) / (0.09 + 0.25 + c1), abs=1e-12)
  assert quality.ssim(ref, ref, peak) == pytest.approx(1.0, abs=1e-12)
  # MSE 0.01 at a data range of 1 → 20 dB (±0.1 alternating on a 0…1 ramp; an offset is free)
  ramp = np.linspace(0.0, 1.0, 2002)[:, None, None]
  ramp = (ramp - 0.001) / 0.998  # a ramp's percentiles are exact: 0.1th → 0, 99.9th → 1
  sign = np.where(np.arange(2002) % 2 == 0, 1.0, -1.0)[:, None, None]
  assert quality.psnr(ramp + 0.1 * sign + 7.0, ramp) == pytest.approx(20.0, abs=1e-9)


def test_field_scores_on_known_fields():
  clean = _sky(96, 128)
  xx, yy = _unit_grid(96, 128)
  f = 1.0 - 0.2 * (xx ** 2 + yy ** 2) / 2.0  # corners 0.8 of the centre
  assert quality.f_rms_pct(f, f) == 0.0 and quality.f_rms_pct(3.0 * f, f) < 1e-12  # scale-free
  assert quality.f_rms_pct(np.ones_like(f), 1.0 + 0.01 * np.sign(xx)) == pytest.approx(1.0, rel=1e-3)
  box = int(96 * 0.125), int(128 * 0.125)
  expected = 100 * (np.mean([f[:box[0], :box[1]].mean(), f[-box[0]:, -box[1]:].mean(),
                             f[:box[0], -box[1]:].mean(), f[-box[0]:, :box[1]].mean()]) /
                    f[42:54, 56:72].mean() - 1)
  assert quality.corner_centre_pct(np.ones_like(clean) * f, np.ones_like(clean)) == pytest.approx(
      expected, rel=1e-6)
  assert quality.corner_centre_pct(clean, clean) == pytest.approx(0.0, abs=1e-12)
  dust = np.ones_like(clean)
  yy_, xx_ = np.mgrid[0:96, 0:128]
  dust[(yy_ - 40) ** 2 + (xx_ - 60) ** 2 < 64, 0] = 0.96  # one 4 % shadow
  (remaining, true), = quality.dust_depths(clean * dust, clean, dust)
  assert true == pytest.approx(0.04, rel=1e-6) and remaining == pytest.approx(0.04, rel=1e-6)
  (remaining, _), = quality.dust_depths(clean, clean, dust)
  assert remaining == pytest.approx(0.0, abs=1e-12)
  # an additive residual (a G left in) does not move it, whatever the scene under the shadow
  (remaining, _), = quality.dust_depths(clean * dust + 0.3 * clean.mean(), clean, dust)
  assert remaining == pytest.approx(0.04, rel=0.05)


def test_noise_gain_and_empty_sky_on_known_filters():
  """Identity 1, a gain of 2 gives 2, a 3 × 3 box mean 1/3 (white noise); the empty sky is
  where every light frame is below 0.5 σ."""
  from scipy import ndimage
  rng = np.random.default_rng(4)
  image = 10.0 + rng.normal(size=(128, 128))
  again = image + rng.normal(size=image.shape)
  box = lambda a: ndimage.uniform_filter(a, 3, mode="reflect")
  assert quality.noise_gain(image, again, image, again) == pytest.approx(1.0)
  assert quality.noise_gain(2 * image + 5, 2 * again + 5, image, again) == pytest.approx(2.0)
  assert abs(quality.noise_gain(box(image), box(again), image, again) - 1 / 3) < 0.01
  light = np.zeros(image.shape)
  light[40:60, 40:60] = 0.6
  other = np.zeros(image.shape)
  other[:, :10] = 0.4
  sky = quality.empty_sky([light, other], noise=1.0)
  assert sky.sum() == 128 * 128 - 400 and not sky[50, 50] and sky[50, 5]
  mask = np.zeros(image.shape, bool)
  mask[:, :64] = True  # the box mean only where the mask is
  half = np.where(mask, box(image), 3 * image), np.where(mask, box(again), 3 * again)
  assert abs(quality.noise_gain(*half, image, again, mask) - 1 / 3) < 0.01


def test_baselines_recover_a_polynomial_vignetting_and_gradient():
  rng = np.random.default_rng(2)
  clean = _sky()
  xx, yy = _unit_grid(*clean.shape[:2])
  f = 1.0 - 0.3 * (xx ** 2 + 0.5625 * yy ** 2)  # r² vignetting, corner/centre 0.7: a degree-2 poly
  noisy = lambda im: (im + rng.normal(scale=5e-4, size=im.shape)).astype(np.float32)
  m = baselines.methods(degree=3, grid=16)
  observed = noisy(clean * f)
  f_err = {k: quality.f_rms_pct(m[k](observed)["F"], f) for k in ("poly_div", "rbf_div",
                                                                   "median_flat", "uncorrected")}
  assert f_err["poly_div"] < 0.3 and f_err["rbf_div"] < 0.5 and f_err["median_flat"] < 1.5, f_err
  assert f_err["uncorrected"] > 5.0, f_err
  g = 0.02 + 0.01 * xx - 0.006 * yy + 0.004 * xx * yy
  out = m["poly_sub"](noisy(clean + g))
  # G error in % of the 0.05 sky: after the fit it is at the noise floor of the box medians
  assert quality.g_rms_pct(out["G"], g, 0.05) < 0.5
  assert quality.g_rms_pct(np.zeros_like(g), g, 0.05) > 10.0
  flat = quality.affine_align(out["corrected"], clean)
  assert np.sqrt(np.mean((flat - clean) ** 2)) < 1e-3


@pytest.mark.parametrize("profile", ["moffat", "gaussian"])
def test_star_fwhm_matches_the_analytic_value(profile):
  h, w, fwhm, beta = 80, 96, 3.2, 3.0
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  img = np.full((h, w), 0.05)
  positions = [(20.3, 25.6), (70.8, 22.1), (48.2, 60.7), (22.5, 58.4)]
  for x, y in positions:
    r2 = (xx - x) ** 2 + (yy - y) ** 2
    if profile == "moffat":
      alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
      img += 0.4 * (1 + r2 / alpha ** 2) ** -beta
    else:
      img += 0.4 * np.exp(-0.5 * r2 / (fwhm / 2.3548) ** 2)
  img += np.random.default_rng(3).normal(scale=1e-3, size=img.shape)
  xy = stars.find_stars(img, 1e-3)
  assert len(xy) == 4
  m = stars.measure(img, xy)
  np.testing.assert_allclose(m["fwhm"], fwhm, rtol=0.03)
  assert np.all(m["ellipticity"] < 0.03)
  # elliptical Gaussian: σx = 1.4, σy = 1.0 → FWHM = 2.3548·√(1.4·1.0), ellipticity 1 − 1/1.4
  img2 = np.full((h, w), 0.05)
  for x, y in positions:
    img2 += 0.4 * np.exp(-0.5 * (((xx - x) / 1.4) ** 2 + ((yy - y) / 1.0) ** 2))
  m2 = stars.measure(img2, stars.find_stars(img2, 1e-3))
  np.testing.assert_allclose(m2["fwhm"], 2.3548 * np.sqrt(1.4), rtol=0.03)
  np.testing.assert_allclose(m2["ellipticity"], 1 - 1 / 1.4, atol=0.02)


def test_report_has_every_column_and_identity_scores_like_uncorrected(tiny, tmp_path):
  from flatai_jax.evaluation import frames as evaluate
  from flatai_jax.evaluation import report as eval_report
  from flatai_jax.physics.forward import invert_flat
  c = tiny("combined", **{"sky.star_flux_min": 0.5, "sky.max_stars": 3, "sky.star_fraction": (1, 1),
                          "sky.nebula_probability": 0.0, "eval.frame_psf_grid": (3, 3),
                          "sky.sparse_probability": 0.0, "sky.cluster_probability": 0.0,
                          "sky.galaxy_probability": 0.0,  # isolated stars only
                          # shadows 11–20 px across (d/N), so each is separate on 96 × 128
                          "degrade.flat.dust_distance_mm": (0.2, 0.3),
                          "degrade.flat.focal_ratio": (4.0, 5.0),
                          "degrade.flat.dust_depth": (0.05, 0.1),
                          # noise-free: a 2 % dip over a few hundred px is otherwise at the noise level
                          "degrade.noise.enabled": False})
  frames = evaluate.make_eval_frames(c, 1)
  assert frames["observed"].shape == (1, 96, 128, 1) and frames["dust"].max() <= 1.0
  truth = {frames["observed"][0].tobytes(): (frames["F"][0], frames["G"][0])}

  def oracle(obs):  # the exact flat inverse with the true fields
    f_true, g_true = truth[obs.tobytes()]
    return {"corrected": invert_flat(obs, f_true, g_true), "F": f_true, "G": g_true}

  methods = {"oracle": oracle, **evaluate.baseline_methods(c),
             "identity": lambda im: {"corrected": im.copy(), "F": np.ones_like(im),
                                     "G": np.zeros_like(im)}}
  scores = evaluate.score_frames(frames, methods, c)
  keys = [k for k, _, _ in eval_report.METRICS if k != "lpips"]
  for name, m in scores["methods"].items():
    assert set(keys + ["lpips"]) <= set(m), name
  assert scores["methods"]["identity"] == scores["methods"]["uncorrected"]
  o, u = scores["methods"]["oracle"], scores["methods"]["uncorrected"]
  assert o["f_rms_pct"] == 0.0 and o["g_rms_pct"] == 0.0
  assert o["psnr"] > u["psnr"]  # (SSIM is local: a smooth F barely moves it, 1/F noise does)
  assert abs(o["corner_centre_pct"]) < 0.5 * abs(u["corner_centre_pct"])
  if u["dust_residual"] is not None:
    assert abs(o["dust_residual"]) < 0.5 * abs(u["dust_residual"])
  ref = scores["reference"]
  assert ref["stars"] >= 3 and c.sky.fwhm_px[0] * 0.9 < ref["fwhm_px"] < c.sky.fwhm_px[1] * 1.1
  assert ref["flux_ratio"] == 1.0 and u["fwhm_px"] > ref["fwhm_px"]  # optics blur the stars
  report = {"step": 0, "checkpoint": "none", "task": c.task, "crops": {},
            "frames": {"count": 1, "shape": [96, 128, 1], "seed": 1, "sha256": "0" * 64}, **scores}
  paths = eval_report.write(tmp_path, report)
  md = paths["md"].read_text()
  for _, label, _ in eval_report.METRICS:
    assert label in md
  assert "| oracle | uncorrected | poly_sub |" in md and paths["png"].stat().st_size > 10_000
