"""Issue 15's aberration evaluation (``evaluation.aberration``): its star metrics on analytic
stars (a Gaussian of known FWHM and ellipticity, the identity's flux ratio), the zones, the
independent renderer's placement, and ``flatai evaluate --task=psf`` end to end (its JSON holds
every method and zone; bad input is one line, exit 2)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flatai_jax.evaluation import aberration, hcipy_optics, star_field, stars

ROOT = Path(__file__).resolve().parents[1]
HW = (128, 128)
SIGMA_PER_FWHM = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _gaussian_stars(xy, fwhm_major, fwhm_minor, theta, flux=2e4, noise=0.0, seed=0):
  """``(128, 128)`` elliptical Gaussians sampled at pixel centres (major axis at ``theta`` rad
  from +x) on a sky of 10, with white noise σ = ``noise``."""
  yy, xx = np.mgrid[0:HW[0], 0:HW[1]].astype(np.float64)
  sa, sb = fwhm_major * SIGMA_PER_FWHM, fwhm_minor * SIGMA_PER_FWHM
  out = np.full(HW, 10.0)
  c, s = math.cos(theta), math.sin(theta)
  for x, y in xy:
    u, v = c * (xx - x) + s * (yy - y), -s * (xx - x) + c * (yy - y)
    out += flux / (2 * math.pi * sa * sb) * np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
  return out + np.random.default_rng(seed).normal(0.0, noise, HW) if noise else out


XY = np.array([[16.3, 16.6], [111.2, 15.7], [15.8, 111.4], [111.6, 111.1], [64.4, 63.7]])


def test_moffat_fit_measures_a_round_gaussian_fwhm_within_2_percent():
  m = stars.measure(_gaussian_stars(XY, 4.0, 4.0, 0.0), XY, box=25, aperture=10.0)
  print("FWHM", m["fwhm"].round(4), "ellipticity", m["ellipticity"].round(4))
  np.testing.assert_allclose(m["fwhm"], 4.0, rtol=0.02)
  assert np.all(m["ellipticity"] < 0.01), m["ellipticity"]


def test_moffat_fit_measures_an_elliptical_gaussian():
  """Axes 5 and 3.5 px FWHM at 30°: ellipticity 1 − 3.5/5 = 0.3, FWHM √(5·3.5) = 4.18 px, on
  the median of the five stars (the zone metrics' statistic). Measured: 0.300 and 4.162 px on
  four; the star at (16.3, 16.6) lands in a local minimum of ``stars.fit_star`` (its start is
  round, θ = 0): 0.159 and 4.119 px — the same star at (16.0, 16.0) gives 0.300."""
  m = stars.measure(_gaussian_stars(XY, 5.0, 3.5, math.radians(30)), XY, box=25, aperture=10.0)
  print("FWHM", m["fwhm"].round(4), "ellipticity", m["ellipticity"].round(4))
  assert abs(np.median(m["ellipticity"]) - 0.3) < 0.01, m["ellipticity"]
  assert abs(np.median(m["fwhm"]) / math.sqrt(5.0 * 3.5) - 1.0) < 0.02, m["fwhm"]
  assert np.sum(np.abs(m["ellipticity"] - 0.3) < 0.01) >= 4, m["ellipticity"]


def test_zone_metrics_of_the_identity():
  """The image against itself: flux ratio exactly 1 in every zone; the noisy stars' profile
  falls to the sky without a dark halo (ringing > −2 σ); the zones of the 128² frame."""
  image = _gaussian_stars(XY, 3.0, 3.0, 0.0, noise=1.0)
  masks = stars.zones(XY, HW)
  assert masks["centre"].tolist() == [False, False, False, False, True]
  assert masks["corner"].tolist() == [True, True, True, True, False]
  z = stars.zone_metrics(image, XY, image, masks, 1.0)
  for name in ("centre", "corner", "all"):
    assert z[name]["flux_ratio"] == 1.0, z
    assert abs(z[name]["fwhm_px"] - 3.0) < 0.1, z
    assert z[name]["ringing_sigma"] > -2.0, z
  assert (z["centre"]["stars"], z["corner"]["stars"], z["all"]["stars"]) == (1, 4, 5)


def test_grid_reaches_the_corner_zone():
  """The evaluation's layout puts stars in both zones (the previous test frame had one corner
  star of 40 measured)."""
  xy = star_field.grid_positions(256, np.random.default_rng(0))
  masks = stars.zones(xy, (256, 256))
  assert len(xy) == 64 and masks["centre"].sum() == 12 and masks["corner"].sum() == 12
  with pytest.raises(ValueError, match=r"^size 128 px: .* at least 192 px"):
    star_field.make(128)


def test_hcipy_stamps_put_the_centroid_where_asked():
  hcipy = hcipy_optics.missing()
  if hcipy:
    pytest.skip(hcipy)
  from flatai_jax.physics import psf
  spec = psf.PSFSpec.from_config(star_field.optics_cfg())
  coeffs = np.zeros((2, spec.num_modes))
  coeffs[1, [4, 6, 7]] = (0.2, 0.3, -0.25)  # astigmatism and coma: centroid ~1 px off axis
  dxy = np.array([[0.3, -0.2], [-0.45, 0.1]])
  stamps = hcipy_optics.unit_stamps(coeffs, dxy, spec)
  np.testing.assert_allclose(stamps.sum(axis=(1, 2)), 1.0, atol=1e-9)
  np.testing.assert_allclose([hcipy_optics._centroid(s) for s in stamps], dxy, atol=0.01)


def test_the_project_s_field_psfs_are_hcipy_s_to_a_percent():
  """The evaluation's true field at its 5 × 5 nodes (corners at ~3× the centre's FWHM, 18 % of
  the light outside the 31-px kernel), by the project's renderer and by hcipy, each cut around
  its centroid: L1 ≤ 0.008 everywhere (0.0061 measured; the linear-interpolation recentring
  used before: up to 0.27 at the corners)."""
  hcipy = hcipy_optics.missing()
  if hcipy:
    pytest.skip(hcipy)
  cfg = star_field.optics_cfg()
  ours = star_field.node_psfs((256, 256), (5, 5), star_field.TRUTH, cfg)
  theirs = star_field.node_psfs((256, 256), (5, 5), star_field.TRUTH, cfg,
                                hcipy_optics.renderer(cfg))
  l1 = np.abs(ours.astype(np.float64) - theirs).sum(axis=(-2, -1))
  assert l1.max() < 0.008, np.round(l1, 4)


@pytest.mark.parametrize("name, ratio, to_ideal", [("TRUTH", (2.6, 3.0), (2.6, 3.0)),
                                                   ("STRONG", (3.5, 4.2), (4.0, 4.8))])
def test_the_fields_corners_are_as_wide_as_the_cases_say(name, ratio, to_ideal):
  """Uncorrected, the corner zone's median FWHM over the centre zone's (``TRUTH``: 2.88, below
  issue 15's 3–6×, why ``STRONG`` was added: 3.77) and over the diffraction-limited stars'
  (2.88 / 4.39) — the evaluation's own metric (``stars.zone_metrics``) on its seed-0 frame."""
  params = getattr(star_field, name)
  field = star_field.make(256, 0, params, cfg=star_field.optics_cfg())
  xy, masks = aberration.measured_stars(field)
  seen = stars.zone_metrics(field.observed, xy, field.ideal, masks, star_field.NOISE)
  ideal = stars.zone_metrics(field.ideal, xy, field.ideal, masks, star_field.NOISE)
  corner = seen["corner"]["fwhm_px"]
  assert ratio[0] < corner / seen["centre"]["fwhm_px"] < ratio[1], seen
  assert to_ideal[0] < corner / ideal["corner"]["fwhm_px"] < to_ideal[1], (seen, ideal)


def _evaluate(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "flatai_jax.main", "evaluate", *args], cwd=ROOT,
                        capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.parametrize("args, says", [
    (["--task=psf", "--size=128"], "size 128 px"),
    (["--task=flat"], "only --task=psf"),
    (["--task=psf", "--checkpoint=runs/x"], "runs/x: neither a run directory"),
    (["--task=psf", "--real_dir=x"], "drop --real_dir"),
    (["--task=psf", "--cases=flatai,wide"], "unknown case(s) ['wide']"),
])
def test_cli_bad_input_is_one_line(args, says):
  out = _evaluate(*args)
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert says in out.stderr, out.stderr


@pytest.mark.slow
def test_cli_writes_every_method_and_zone(tmp_path):
  """192² (~80 s for the project's optics on the 2-core CPU; hcipy's frame at 192² leaves the
  fit 14 isolated stars: its case is recorded as failed, one line — as may the stronger
  aberrations' cases there, whose corner stars are wider: with ``sep``'s RMS as the fit's σ the
  project's optics gave the fit 23 stars, its field terms 5–13 % strong, and the guard refused the
  deconvolution, which would have broadened the stars 5.9 → 14.3 px by moments; with the σ off the
  sources it takes 27 stars, +2–6 %, and corrects the frame — a refusal stays allowed)."""
  out = _evaluate("--task=psf", "--size=192", f"--output_dir={tmp_path}")
  assert out.returncode == 0, out.stderr
  assert "| physics: fitted field + RL" in out.stdout
  report = json.loads((tmp_path / "psf_eval.json").read_text())
  assert (tmp_path / "psf_eval.md").read_text().strip() == aberration.markdown(report).strip()
  assert report["size"] == 192 and set(report["cases"]) == set(aberration.CASES)
  for name, case in report["cases"].items():
    if "skipped" in case:
      assert aberration.CASES[name].optics == "hcipy" and hcipy_optics.missing(), case
      continue
    if "failed" in case:
      assert name != "flatai", case
      assert ("measurable stars" in case["failed"] or case["failed"].startswith("not corrected: ")
              and aberration.CASES[name].params is star_field.STRONG), case
      continue
    assert list(case["methods"]) == [k for k in aberration.METHODS
                                     if k != "model" or report["model"]]
    for key, m in case["methods"].items():
      assert set(m["zones"]) == {"centre", "corner", "all"}
      for z in m["zones"].values():
        assert set(z) == {"fwhm_px", "ellipticity", "flux_ratio", "ringing_sigma", "stars"}
      assert (m["noise_gain_sky"] is None) == (key == "ideal")
    m = case["methods"]
    assert m["uncorrected"]["fwhm_ratio"] > 2.0, name  # the frame is as aberrated as claimed
    assert 0.9 < m["ideal"]["fwhm_ratio"] < 1.1, name
    assert m["ideal"]["zones"]["all"]["flux_ratio"] == 1.0
    assert m["physics"]["fwhm_ratio"] < 0.6 * m["uncorrected"]["fwhm_ratio"], name
    assert m["rl_true_field"]["fwhm_ratio"] < 1.3, name


def test_rendered_aberration_blurs_by_the_field_and_restores_the_noise():
  """``aberration_real.render_aberrations``: a point on a node comes out as that node's PSF, the
  truth as the diffraction target, light is kept, and white noise keeps its per-pixel σ."""
  from flatai_jax.evaluation import aberration_real
  from flatai_jax.physics import deconvolve
  cfg = star_field.optics_cfg()
  n, c = 191, 95  # 11 × 11 nodes every 19 px: node 5 on the centre pixel 95, node 1 on pixel 19
  point = np.zeros((n, n))
  point[c, c] = point[19, 19] = 1.0
  case = aberration_real.render_aberrations(point, cfg)
  k = case["psfs"].shape[-1] // 2
  np.testing.assert_allclose(case["observed"][c - k:c + k + 1, c - k:c + k + 1],
                             case["psfs"][5, 5], atol=2e-6)
  np.testing.assert_allclose(case["observed"][19 - k:19 + k + 1, 19 - k:19 + k + 1],
                             case["psfs"][1, 1], atol=2e-6)
  assert abs(case["observed"].sum() - 2.0) < 1e-4
  target = deconvolve.target_psf("diffraction", cfg)
  t = target.shape[0] // 2
  np.testing.assert_allclose(case["ideal"][c - t:c + t + 1, c - t:c + t + 1], target, atol=1e-6)
  # the noise: a noisy sky less the same sky without noise (a flat sky is not flat through this
  # field on 191 px: PSFs 2 → 6 px wide within ~60 px send more light inwards than out, +7 % in
  # the middle — the convolution's definition, checked against a brute-force sum; ~25× less on
  # the ~1000-px real frames)
  flat = np.full((n, n), 100.0)
  noise = (aberration_real.render_aberrations(flat + np.random.default_rng(3).normal(0, 2, (n, n)),
                                              cfg)["observed"]
           - aberration_real.render_aberrations(flat, cfg)["observed"])[20:-20, 20:-20]
  assert abs(noise.std() / 2.0 - 1.0) < 0.04
  assert abs(noise.mean()) < 0.05
