"""PSFs from Zernike wavefronts (physics/psf.py) and the field model (physics/optics.py)."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import interpolate, optimize, special

from configs.default import get_config
from flatai_jax.physics import geometry, optics, psf

J = 11


def coeffs(**by_noll):
  c = np.zeros(J, np.float32)
  for name, value in by_noll.items():
    c[int(name[1:]) - 1] = value
  return jnp.asarray(c)


@pytest.mark.parametrize("spec", [
    psf.PSFSpec(n_pupil=32, q=2, oversample=1, kernel_size=21),
    psf.PSFSpec(n_pupil=32, q=2.5, oversample=2, kernel_size=25, obstruction=0.3,
                spider_vanes=4, spider_width=0.02),
    psf.PSFSpec(n_pupil=40, q=2, oversample=3, kernel_size=31, wavelengths=(0.8, 1.0, 1.25),
                weights=(1.0, 2.0, 1.0)),
])
def test_psf_sums_to_one(spec):
  c = jax.random.normal(jax.random.key(0), (4, J)) * 0.1
  p = psf.psf(c, spec)
  assert p.shape == (4, spec.kernel_size, spec.kernel_size) and p.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(p.sum(axis=(-1, -2)), np.float64), 1.0, atol=1e-6)
  assert float(p.min()) >= 0.0


def _airy_profile(q):
  spec = psf.PSFSpec(n_pupil=128, q=q, oversample=1, kernel_size=41)
  p = np.asarray(psf.psf(jnp.zeros(J), spec), np.float64)
  h = spec.kernel_size // 2
  r = (np.arange(spec.kernel_size) - h) / q  # λ/D
  return interpolate.CubicSpline(r, p[h] / p[h, h])


def test_airy_fwhm_and_first_zero():
  prof = _airy_profile(8.0)
  half = optimize.brentq(lambda r: prof(r) - 0.5, 0.3, 0.8)
  assert abs(2 * half / 1.029 - 1) < 0.01
  zero = optimize.minimize_scalar(prof, bounds=(1.0, 1.5), method="bounded").x
  assert abs(zero / 1.2197 - 1) < 0.01
  assert prof(zero) < 1e-3


def _airy_pixel_integrals(q, n=5, sub=64):
  """∫∫ over pixels of the unit-flux Airy pattern (π/4)[2 J1(πr)/(πr)]², r in λ/D."""
  t = ((np.arange(sub) + 0.5) / sub - 0.5) / q
  out = np.zeros((n, n))
  for i, j in itertools.product(range(n), range(n)):
    yy, xx = np.meshgrid((i - n // 2) / q + t, (j - n // 2) / q + t, indexing="ij")
    x = np.pi * np.hypot(xx, yy)
    out[i, j] = np.mean(np.pi / 4 * (2 * special.j1(x) / x) ** 2) / q ** 2
  return out


def test_pixel_integration_matches_analytic_airy():
  q = 2.0
  ref = _airy_pixel_integrals(q)
  errs = []
  for s in (2, 4, 8):
    spec = psf.PSFSpec(n_pupil=128, q=q, oversample=s, kernel_size=15)
    p = np.asarray(psf.psf(jnp.zeros(J), spec, normalize=False))[5:10, 5:10]
    errs.append(np.abs(p[1:4, 1:4] / ref[1:4, 1:4] - 1).max())
    # even sub-sampling still centres the axis on the centre pixel
    full = np.asarray(psf.psf(jnp.zeros(J), spec))
    np.testing.assert_allclose(full, full[::-1, ::-1], atol=1e-7)
  assert errs[0] > errs[1] > errs[2] and errs[2] < 0.012
  # point-sampled peak: π/4 per (λ/D)², times the pixel area 1/q²
  spec = psf.PSFSpec(n_pupil=128, q=q, oversample=1, kernel_size=15)
  peak = float(psf.psf(jnp.zeros(J), spec, normalize=False)[7, 7])
  assert abs(peak / (math.pi / 4 / q ** 2) - 1) < 0.01


@pytest.mark.parametrize("noll", [4, 6, 8, 9, 11])
@pytest.mark.parametrize("sigma", [0.03, 0.06])
def test_strehl_follows_marechal(noll, sigma):
  spec = psf.PSFSpec(n_pupil=64, q=6, oversample=1, kernel_size=61)
  perfect = float(psf.psf(jnp.zeros(J), spec, normalize=False).max())
  aberrated = float(psf.psf(coeffs(**{f"z{noll}": sigma}), spec, normalize=False).max())
  marechal = math.exp(-(2 * math.pi * sigma) ** 2)
  assert abs(aberrated / perfect / marechal - 1) < 0.05


def test_tilt_moves_the_psf_by_the_documented_amount():
  spec = psf.PSFSpec(n_pupil=64, q=2, oversample=1, kernel_size=41)
  h = 20
  p = np.asarray(psf.psf(coeffs(z2=1.0), spec))  # 4 a λ/D = 8 px towards +x
  assert np.unravel_index(np.argmax(p), p.shape) == (h, h + 8)
  p = np.asarray(psf.psf(coeffs(z3=-0.5), spec))  # 4 px towards −y
  assert np.unravel_index(np.argmax(p), p.shape) == (h - 4, h)
  np.testing.assert_allclose(float(psf.geometric_radius_px(coeffs(z2=1.0), spec)), 8.0, rtol=1e-5)


@pytest.mark.parametrize("noll, axis, sign", [(8, 1, 1), (8, 1, -1), (7, 0, 1)])
def test_coma_centroid_direction(noll, axis, sign):
  a = 0.2 * sign
  spec = psf.PSFSpec(n_pupil=128, q=2, oversample=1, kernel_size=255)
  p = np.asarray(psf.psf(coeffs(**{f"z{noll}": a}), spec), np.float64)
  yx = np.mgrid[:255, :255] - 127
  centroid = (p * yx).sum(axis=(1, 2)) / spec.q  # λ/D, (y, x)
  # full-plane centroid = mean wavefront slope: 2 · √8 · a λ/D along the coma axis
  assert np.sign(centroid[axis]) == sign
  assert abs(centroid[axis] / (2 * math.sqrt(8) * a) - 1) < 0.05
  assert abs(centroid[1 - axis]) < 1e-4
  # the sharp core sits on the other side of the axis
  peak = np.array(np.unravel_index(np.argmax(p), p.shape)) - 127
  assert np.sign(peak[axis]) == -sign


def test_polychromatic_is_the_weighted_sum_of_rescaled_monochromatic_psfs():
  c = jax.random.normal(jax.random.key(3), (J,)) * 0.08
  lams, weights = (0.75, 1.0, 1.2), (1.0, 3.0, 2.0)
  poly = psf.PSFSpec(n_pupil=60, q=2, oversample=2, kernel_size=21, wavelengths=lams,
                     weights=weights)
  total = 0.0
  for lam, w in zip(lams, weights):
    # at λ the pupil spans 60/λ samples and λ/D is q·λ pixels; same OPD = c/λ waves
    mono = psf.PSFSpec(n_pupil=round(60 / lam), q=2 * lam, oversample=2, kernel_size=21)
    total = total + w / sum(weights) * psf.psf(c / lam, mono, normalize=False)
  np.testing.assert_allclose(np.asarray(psf.psf(c, poly)), np.asarray(total / total.sum()),
                             atol=1e-6)


def test_spec_rejects_wrapping_kernels():
  with pytest.raises(ValueError):
    psf.PSFSpec(n_pupil=16, q=2, kernel_size=33)
  with pytest.raises(ValueError):
    psf.PSFSpec(kernel_size=30)


def _hcipy_psf(hcipy, c, spec, obstruction=0.0, vanes=0, width=0.0):
  pupil_grid = hcipy.make_pupil_grid(spec.n_pupil, 1.0)
  parts = [hcipy.make_circular_aperture(1.0)]
  if obstruction:
    inner = hcipy.make_circular_aperture(obstruction)
    parts.append(lambda g: 1 - inner(g))
  for v in range(vanes):
    phi = 2 * np.pi * v / vanes
    parts.append(hcipy.make_spider((0, 0), (0.6 * np.cos(phi), 0.6 * np.sin(phi)), width))
  aperture = hcipy.evaluate_supersampled(
      lambda g: hcipy.Field(np.prod([f(g) for f in parts], axis=0), g), pupil_grid,
      spec.pupil_supersample)
  # hcipy zeroes the modes on grey edge samples whose centre is outside the disc by
  # default; the wavefront there is defined by the polynomial (radial_cutoff=False).
  basis = hcipy.make_zernike_basis(J, 1.0, pupil_grid, 1, radial_cutoff=False)
  field = aperture * np.exp(2j * np.pi * basis.linear_combination(np.asarray(c, np.float64)))
  n = spec.kernel_size * spec.oversample
  focal = hcipy.make_uniform_grid([n, n], [spec.kernel_size / spec.q] * 2)
  prop = hcipy.FraunhoferPropagator(pupil_grid, focal, focal_length=1)
  img = prop(hcipy.Wavefront(field, 1.0)).power.shaped
  s, k = spec.oversample, spec.kernel_size
  img = img.reshape(k, s, k, s).sum(axis=(1, 3))
  return img / img.sum()


@pytest.mark.parametrize("case", [
    dict(spec=psf.PSFSpec(n_pupil=64, q=2, oversample=1, kernel_size=41)),
    dict(spec=psf.PSFSpec(n_pupil=64, q=4, oversample=1, kernel_size=41)),
    dict(spec=psf.PSFSpec(n_pupil=48, q=2, oversample=3, kernel_size=31, obstruction=0.3,
                          spider_vanes=4, spider_width=0.02),
         hc=dict(obstruction=0.3, vanes=4, width=0.02)),
])
def test_matches_hcipy(case):
  hcipy = pytest.importorskip("hcipy")
  spec = case["spec"]
  c = np.array(jax.random.normal(jax.random.key(7), (J,)) * 0.1)
  c[:3] = 0.0
  ours = np.asarray(psf.psf(jnp.asarray(c), spec), np.float64)
  ref = _hcipy_psf(hcipy, c, spec, **case.get("hc", {}))
  assert np.abs(ours - ref).sum() < 0.01


# --- field model ------------------------------------------------------------

def _system(**kw):
  base = dict(defocus=0.0, spherical=0.0, trefoil=(0.0, 0.0), coma=0.0, astigmatism=0.0,
              field_curvature=0.0, tilt=(0.0, 0.0))
  base.update(kw)
  return optics.OpticalSystem(**{k: jnp.asarray(v, jnp.float32) for k, v in base.items()})


def test_field_model_dependence_on_h():
  sys = _system(defocus=0.05, spherical=0.02, trefoil=(0.01, -0.03), coma=0.2,
                astigmatism=0.1, field_curvature=-0.08, tilt=(0.02, 0.04))
  c0 = np.asarray(optics.field_coefficients(sys, jnp.zeros(2), J))
  np.testing.assert_allclose(c0, [0, 0, 0, 0.05, 0, 0, 0, 0, 0.01, -0.03, 0.02], atol=1e-7)
  ang, r = 0.7, 0.6
  h = jnp.asarray([r * math.cos(ang), r * math.sin(ang)])
  c = np.asarray(optics.field_coefficients(sys, h, J))
  # coma ∝ h, along the field direction
  np.testing.assert_allclose(c[[7, 6]], 0.2 * r * np.array([math.cos(ang), math.sin(ang)]),
                             atol=1e-7)
  # astigmatism ∝ h², oriented at twice the field angle
  np.testing.assert_allclose(c[[5, 4]], 0.1 * r ** 2 * np.array([math.cos(2 * ang),
                                                                  math.sin(2 * ang)]), atol=1e-7)
  # defocus: constant + curvature h² + sensor tilt · h
  np.testing.assert_allclose(c[3], 0.05 - 0.08 * r ** 2 + 0.02 * h[0] + 0.04 * h[1], atol=1e-7)
  np.testing.assert_allclose(c[8:], c0[8:], atol=1e-7)


def test_field_position_is_one_at_the_corners():
  h = geometry.field_position(jnp.asarray([[1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]]), 2 / 3)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(h), axis=-1), [1, 1, 0], atol=1e-6)


def test_draw_system_stays_in_its_ranges():
  cfg = get_config("psf,quickstart").degrade.psf
  systems = jax.vmap(lambda k: optics.draw_system(k, cfg))(jax.random.split(jax.random.key(0), 512))
  for name in ("defocus", "spherical", "coma", "astigmatism", "field_curvature"):
    v = np.asarray(getattr(systems, name))
    lo, hi = getattr(cfg, name)
    assert v.min() >= lo and v.max() <= hi and v.max() - v.min() > 0.9 * (hi - lo)
  tref = np.linalg.norm(np.asarray(systems.trefoil), axis=-1)
  tilt = np.linalg.norm(np.asarray(systems.tilt), axis=-1)
  assert tref.max() <= cfg.trefoil[1] + 1e-6 and tilt.max() <= cfg.sensor_tilt + 1e-6
  ang = np.arctan2(np.asarray(systems.tilt)[:, 1], np.asarray(systems.tilt)[:, 0])
  assert np.histogram(ang, bins=4, range=(-np.pi, np.pi))[0].min() > 80  # uniform direction


@pytest.mark.parametrize("size", ["quickstart", "base"])
def test_default_optics_never_wrap(size):
  """Worst case of the config ranges, at a corner: rays stay inside half the FFT period."""
  cfg = get_config(f"psf,{size}").degrade.psf
  spec = psf.PSFSpec.from_config(cfg)
  worst = 0.0
  for sd, ss, sc, sa, sf in itertools.product((0, 1), repeat=5):
    sys = _system(defocus=cfg.defocus[sd], spherical=cfg.spherical[ss],
                  trefoil=(cfg.trefoil[1], 0.0), coma=cfg.coma[sc],
                  astigmatism=cfg.astigmatism[sa], field_curvature=cfg.field_curvature[sf],
                  tilt=(cfg.sensor_tilt / math.sqrt(2),) * 2)
    c = optics.field_coefficients(sys, jnp.asarray([1.0, 1.0]) / math.sqrt(2), spec.num_modes)
    r = float(psf.geometric_radius_px(c, spec))
    if r > worst:
      worst, worst_c = r, c
  assert worst < spec.period_px / 2
  assert float(psf.psf(worst_c, spec, normalize=False).sum()) > 0.88  # kernel keeps the PSF


def test_corner_psfs_flare_outwards_with_positive_coma():
  cfg = get_config("psf,quickstart").degrade.psf
  spec = psf.PSFSpec.from_config(cfg)
  sys = _system(coma=0.15)
  k = spec.kernel_size
  yx = np.mgrid[:k, :k] - k // 2
  sensor_hw = jnp.asarray([384.0, 576.0])
  for offset in ([0, 0], [0, 512], [320, 0], [320, 512]):  # the four corner crops
    coords = geometry.frame_coords(jnp.asarray(offset, jnp.float32), (64, 64), sensor_hw)
    h = geometry.field_position(coords[0 if offset[0] == 0 else -1, 0 if offset[1] == 0 else -1],
                              384 / 576)
    u = np.asarray(h) / np.linalg.norm(h)
    p = np.asarray(psf.centred(optics.field_coefficients(sys, h, J), spec), np.float64)
    along = yx[1] * u[0] + yx[0] * u[1]  # px along the outward field direction
    across = -yx[1] * u[1] + yx[0] * u[0]
    assert (p * along ** 3).sum() > 1.0  # the flare points outwards (positive skewness)
    assert abs((p * across ** 3).sum()) < 0.05 * (p * along ** 3).sum()
    peak = np.unravel_index(np.argmax(p), p.shape)
    assert along[peak] < 0  # the sharp core sits on the inner side


def test_field_tilt_cancels_the_coma_centroid():
  for eps in (0.0, 0.3):
    spec = psf.PSFSpec(n_pupil=128, q=2, oversample=1, kernel_size=255, obstruction=eps)
    c = optics.field_coefficients(_system(coma=0.2), jnp.asarray([0.6, -0.8]), J, eps)
    p = np.asarray(psf.psf(c, spec), np.float64)
    # without the tilt the centroid would be 2 q √8 (1 + 3ε²) · 0.2 ≈ 2.3–2.9 px away
    assert np.abs(np.asarray(psf.centroid(p))).max() < 0.06


def test_psf_field_grid_sits_on_the_crop():
  cfg = get_config("psf,quickstart").degrade.psf
  coords = geometry.frame_coords(jnp.asarray([100.0, 200.0]), (64, 64), jnp.asarray([384.0, 576.0]))
  psfs = optics.psf_field(jax.random.key(1), coords, cfg, 384 / 576)
  gy, gx = cfg.grid
  assert psfs.shape == (gy, gx, cfg.kernel_size, cfg.kernel_size)
  np.testing.assert_allclose(np.asarray(psfs.sum(axis=(-1, -2))), 1.0, atol=1e-6)
  # the corner node's PSF is the PSF of the system at the crop's corner pixel
  system = optics.draw_system(jax.random.key(1), cfg)
  h = geometry.field_position(coords[-1, -1], 384 / 576)
  spec = psf.PSFSpec.from_config(cfg)
  ref = psf.centred(optics.field_coefficients(system, h, cfg.num_modes, cfg.obstruction), spec)
  np.testing.assert_allclose(np.asarray(psfs[-1, -1]), np.asarray(ref), atol=1e-6)
