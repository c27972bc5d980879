"""Flat-field, sensor-noise and sky generators: keys, the F convention, drawn distributions,
dust shadows against a ray trace of an annular pupil, the noise variance model, star counts,
synth's full frames."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs.default import get_config
from flatai_jax.io import images
from flatai_jax.physics import distributions as dist
from flatai_jax.physics import flat, forward, geometry, noise, sky

N_DRAWS = 2000


def _flat_cfg(**overrides):
  cfg = get_config("flat,quickstart").degrade.flat
  for switch in ("vignetting", "dust", "specks", "prnu", "prnu_blotches", "gradient", "quadratic",
                 "dome", "glow"):
    cfg[switch] = False
  cfg.gradient_level = ("fixed", 0.0)
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _fields(key, coords, channels, cfg, sensor):
  """Jitted F, G (eager op-by-op dispatch would compile every op separately)."""
  return jax.jit(lambda k, c: flat.draw_flat_fields(k, c, channels, cfg, sensor))(key, coords)


def _scipy(spec):
  kind, (a, b) = dist.parse(spec)
  return {"uniform": stats.uniform(a, b - a), "loguniform": stats.loguniform(a, b),
          "normal": stats.norm(a, b)}[kind]


def _ks(values, spec):
  return stats.kstest(np.asarray(values).ravel(), _scipy(spec).cdf).pvalue


def _example_fn():
  """``key -> {clean, observed, F, G}`` of a 32-px mono crop at one offset (RGB on a sharded
  batch hits an XLA CPU FFT layout check, so the sharded comparison below is mono)."""
  config = get_config("flat,quickstart")
  config.sky.max_stars = 16
  config.sky.psf_size = 9
  hw = (32, 32)
  sensor = tuple(config.data.sensor_hw)

  def example(key):
    coords = geometry.frame_coords(jnp.array([40.0, 100.0]), hw, jnp.asarray(sensor, jnp.float32))
    clean = sky.render_sky(key, hw, 1, config.sky)
    return {"clean": clean, **forward.degrade(jax.random.fold_in(key, 1), clean, coords,
                                              config.degrade, sensor)}

  return example


def test_an_example_depends_on_its_key_only():
  """The same key gives the same example at any batch position, alone (no vmap) and on a batch
  sharded over 4 devices; different keys give different examples."""
  example = _example_fn()
  k = jax.random.split(jax.random.key(3), 3)
  keys = jnp.stack([k[0], k[1], k[0], k[2]])
  a = jax.jit(jax.vmap(example))(keys)
  alone = jax.jit(example)(k[1])
  mesh = jax.make_mesh((4,), ("b",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:4])
  sharded = jax.jit(jax.vmap(example))(
      jax.device_put(keys, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("b"))))
  for name in ("clean", "observed", "F", "G"):
    x = np.asarray(a[name])
    assert x.shape == (4, 32, 32, 1), name
    np.testing.assert_array_equal(x[0], x[2], err_msg=name)  # same key, other batch position
    np.testing.assert_allclose(x[1], alone[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(x, sharded[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for i, j in ((0, 1), (0, 3), (1, 3)):  # different keys → different
      assert np.abs(x[i] - x[j]).max() > 1e-4, name


SENSOR = (96, 128)


def _sensor_coords(sensor=SENSOR):
  return geometry.frame_coords(jnp.zeros(2), sensor, jnp.asarray(sensor, jnp.float32))


def test_f_is_one_and_g_zero_with_every_artifact_off():
  f_field, g_field = _fields(jax.random.key(0), _sensor_coords(), 3, _flat_cfg(), SENSOR)
  np.testing.assert_array_equal(f_field, 1.0)
  np.testing.assert_array_equal(g_field, 0.0)


def test_centred_vignetting_is_one_on_axis_and_one_minus_strength_at_the_corners():
  cfg = _flat_cfg(vignetting=True, centre_offset=("fixed", 0.0), asymmetry=("fixed", 0.0))
  corners = jnp.array([[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]])  # (1, 3, 2)
  keys = jax.random.split(jax.random.key(0), 64)
  params = jax.jit(jax.vmap(lambda k: flat.draw_flat_params(k, cfg, 1)))(keys)
  v = jax.jit(jax.vmap(lambda p: flat.vignetting(p, corners, SENSOR)))(params)[:, 0]
  np.testing.assert_allclose(v[:, 2], 1.0, atol=1e-6)
  np.testing.assert_allclose(v[:, 0], 1.0 - params.strength, atol=1e-5)
  np.testing.assert_allclose(v[:, 1], 1.0 - params.strength, atol=1e-5)
  assert float(np.std(params.strength)) > 0.01  # many strengths were drawn


def test_offset_tilted_vignetting_is_one_on_its_axis_and_dust_only_darkens():
  cfg = _flat_cfg(vignetting=True, dust=True, centre_offset=(-0.1, 0.1), asymmetry=(0.0, 0.1))
  p = flat.draw_flat_params(jax.random.key(5), cfg, 1)
  assert abs(float(p.centre[0])) > 1e-3 and float(p.asymmetry) > 1e-3
  render = jax.jit(lambda p, c: (flat.render_flat(p, jax.random.key(0), c, cfg, SENSOR)[0],
                                 flat.vignetting(p, c, SENSOR)))
  f_axis, v_axis = render(p, p.centre[None, None, :])
  np.testing.assert_allclose(v_axis, 1.0, atol=1e-6)
  f_all, v_all = render(p, _sensor_coords())
  assert float(v_all.max()) <= 1.0 and float(v_all.min()) < 0.99
  assert float(f_all.max()) <= 1.0 and float(f_axis[0, 0, 0]) <= 1.0


def test_specks_only_brighten():
  cfg = _flat_cfg(specks=True, speck_probability=1.0)
  f_sp, _ = _fields(jax.random.key(0), _sensor_coords(), 1, cfg, SENSOR)
  assert float(f_sp.min()) == 1.0 and float(f_sp.max()) > 1.01


def test_prnu_has_expectation_one_and_the_drawn_rms():
  cfg = _flat_cfg(prnu=True, prnu_blotches=True, prnu_sigma=("fixed", 0.006),
                  prnu_blotch_sigma=("fixed", 0.004))
  f_pr, _ = _fields(jax.random.key(0), _sensor_coords((256, 256)), 3, cfg, (256, 256))
  f_pr = np.asarray(f_pr)
  np.testing.assert_allclose(f_pr.mean(), 1.0, atol=5 * 0.006 / np.sqrt(f_pr.size) + 1e-4)
  np.testing.assert_allclose(f_pr.std(), np.hypot(0.006, 0.004), rtol=0.03)


def test_drawn_flat_parameters_follow_their_configured_distributions():
  cfg = get_config("flat,quickstart").degrade.flat
  keys = jax.random.split(jax.random.key(11), N_DRAWS)
  p = jax.jit(jax.vmap(lambda k: flat.draw_flat_params(k, cfg, 3)))(keys)
  checks = {
      "vignetting_strength": p.strength, "mechanical_fraction": p.mechanical_fraction,
      "mechanical_onset": p.mechanical_onset, "centre_offset": p.centre[:, 0],
      "asymmetry": p.asymmetry, "focal_ratio": p.focal_ratio, "exit_pupil_mm": p.exit_pupil_mm,
      "dust_distance_mm": p.dust_distance_mm[:, 0], "dust_depth": p.dust_depth[:, 3],
      "dust_softness": p.dust_softness[:, 1], "prnu_sigma": p.prnu_sigma,
      "prnu_blotch_sigma": p.blotch_sigma, "gradient_level": p.level,
      "gradient_slope": np.linalg.norm(p.slope, axis=-1),
      "quadratic_amplitude": np.linalg.norm(p.quadratic, axis=-1),
      "glow_scale": p.glow_scale, "dome_scale": p.dome_scale,
  }
  for name, values in checks.items():
    assert _ks(values, cfg[name]) > 1e-3, name
  # the KS test has power: a log-uniform parameter is not uniform on the same range
  lo, hi = dist.parse(cfg.dust_distance_mm)[1]
  assert _ks(p.dust_distance_mm[:, 0], (lo, hi)) < 1e-6
  # mixtures: obstructed share, ring ratio when obstructed, dome / glow presence, Poisson count
  obstructed = np.asarray(p.obstruction) > 0
  assert abs(obstructed.mean() - cfg.obstruction_probability) < 4 * np.sqrt(0.25 / N_DRAWS)
  assert _ks(np.asarray(p.obstruction)[obstructed], cfg.obstruction) > 1e-3
  dome = np.asarray(p.dome_amplitude) > 0
  assert abs(dome.mean() - cfg.dome_probability) < 4 * np.sqrt(0.25 / N_DRAWS)
  assert _ks(np.asarray(p.dome_amplitude)[dome], cfg.dome_amplitude) > 1e-3
  glow = np.asarray(p.glow_amplitude) > 0
  assert abs(glow.mean() - cfg.glow_probability) < 4 * np.sqrt(0.25 / N_DRAWS)
  counts = np.asarray(p.dust_active).sum(-1)
  expected = stats.poisson(cfg.dust_mean)
  mean = (np.minimum(np.arange(200), cfg.max_dust) * expected.pmf(np.arange(200))).sum()
  assert abs(counts.mean() - mean) < 4 * np.sqrt(cfg.dust_mean / N_DRAWS)
  # RGB tints of G have mean 1 over channels; light pollution is redder than blue on average
  np.testing.assert_allclose(np.asarray(p.tint).mean(-1), 1.0, atol=1e-5)
  assert np.asarray(p.tint)[:, 2, 0].mean() > np.asarray(p.tint)[:, 2, 2].mean() * 1.4


def test_drawn_noise_and_sky_parameters_follow_their_distributions():
  config = get_config("flat,quickstart")
  keys = jax.random.split(jax.random.key(12), N_DRAWS)
  n = jax.jit(jax.vmap(lambda k: noise.draw_noise_params(k, config.degrade.noise)))(keys)
  assert _ks(n.full_well_e, config.degrade.noise.full_well_e) > 1e-3
  assert _ks(n.read_noise_e, config.degrade.noise.read_noise_e) > 1e-3
  stars = jax.jit(jax.vmap(lambda k: sky.draw_stars(k, config.sky, (64, 64))))(keys[:500])
  assert _ks(stars.temperature_k, config.sky.star_temperature_k) > 1e-3


def _ray_traced_shadow(shape, p_px, axis_px, d, big_l, n_focal, eps):
  """Pixels (y, x from the sensor centre) whose ray through a point particle at height d hits
  the annular exit pupil of radius L/(2N) (hole eps × that) at height L around the axis."""
  h, w = shape
  ys = np.arange(h) + 0.5 - h / 2.0
  xs = np.arange(w) + 0.5 - w / 2.0
  qx, qy = np.meshgrid(xs, ys)
  px = qx + (p_px[0] - qx) * big_l / d - axis_px[0]
  py = qy + (p_px[1] - qy) * big_l / d - axis_px[1]
  rho = np.hypot(px, py)
  r_pupil = big_l / (2.0 * n_focal)
  return ((rho <= r_pupil) & (rho >= eps * r_pupil)).astype(np.float64), qx, qy


def _half_crossings(profile, radii):
  """Radii where a radial profile normalised to its peak crosses 0.5: (inner, outer)."""
  prof = profile / profile.max()
  peak = int(np.argmax(prof))
  outer = peak + int(np.argmax(prof[peak:] < 0.5))
  inner = peak - int(np.argmax(prof[:peak + 1][::-1] < 0.5))
  interp = lambda i, j: radii[i] + (0.5 - prof[i]) * (radii[j] - radii[i]) / (prof[j] - prof[i])
  return (interp(inner, inner + 1) if prof[0] < 0.5 else 0.0), interp(outer - 1, outer)


def test_dust_shadow_matches_the_ray_traced_annular_pupil():
  sensor = (400, 400)
  cfg = _flat_cfg(dust=True, pixel_size_um=4.0)
  pix = cfg.pixel_size_um * 1e-3
  d_mm, l_mm, n_focal, eps = 1.2, 40.0, 4.0, 0.4
  p = flat.draw_flat_params(jax.random.key(0), cfg, 1)
  one = lambda v: jnp.zeros_like(p.dust_depth).at[0].set(v)
  p = p._replace(centre=jnp.array([0.05, -0.05]), focal_ratio=jnp.float32(n_focal),
                 exit_pupil_mm=jnp.float32(l_mm), obstruction=jnp.float32(eps),
                 dust_active=jnp.arange(p.dust_active.shape[0]) == 0,
                 dust_xy=jnp.zeros_like(p.dust_xy).at[0].set(jnp.array([0.5, 0.3])),
                 dust_distance_mm=one(d_mm), dust_depth=one(0.05), dust_softness=one(0.05))
  coords = geometry.frame_coords(jnp.zeros(2), sensor, jnp.asarray(sensor, jnp.float32))
  shadow = 1.0 - np.asarray(jax.jit(lambda p: flat.dust_shadows(p, coords, cfg, sensor))(p))
  axis_px = (0.05 * 200, -0.05 * 200)
  ref, qx, qy = _ray_traced_shadow(sensor, (0.5 * 200, 0.3 * 200), axis_px, d_mm / pix,
                                   l_mm / pix, n_focal, eps)
  # centre: the ray trace's centroid, moved outwards by d·tanθ from the particle
  cx, cy = (ref * qx).sum() / ref.sum(), (ref * qy).sum() / ref.sum()
  gx, gy = (shadow * qx).sum() / shadow.sum(), (shadow * qy).sum() / shadow.sum()
  assert np.hypot(gx - cx, gy - cy) < 0.3, ((gx, gy), (cx, cy))
  assert np.hypot(cx - 100.0, cy - 60.0) > 3.0  # the off-axis shift is really there
  np.testing.assert_allclose(np.asarray(shadow).max(), 0.05, rtol=0.05)  # depth
  r = np.hypot(qx - cx, qy - cy)
  bins = np.arange(0.0, 60.0, 0.5)
  idx = np.digitize(r.ravel(), bins)
  prof = lambda img: np.array([img.ravel()[idx == i].mean() for i in range(1, len(bins))])
  radii = 0.5 * (bins[1:] + bins[:-1])
  inner_g, outer_g = _half_crossings(prof(shadow), radii)
  inner_r, outer_r = _half_crossings(prof(ref), radii)
  np.testing.assert_allclose(2 * outer_g, 2 * outer_r, rtol=0.05)  # diameter
  np.testing.assert_allclose(2 * inner_g, 2 * inner_r, rtol=0.05)  # hole
  np.testing.assert_allclose(inner_r / outer_r, eps, rtol=0.05)
  # ≈ d/N in px (exactly (L/N)·d/(L−d))
  np.testing.assert_allclose(2 * outer_g, d_mm / n_focal / pix, rtol=0.05)


def test_noise_variance_follows_the_gain_read_noise_model():
  levels = jnp.array([0.0, 0.003, 0.05, 0.4, 0.9])
  signal = jnp.broadcast_to(levels, (256, 256, 5))
  for fw, rn in ((8000.0, 8.0), (40000.0, 2.0)):
    noisy = noise.add_sensor_noise(jax.random.key(int(fw)), signal, fw, rn)
    var = np.asarray(noisy - signal).reshape(-1, 5).var(axis=0)
    model = levels / fw + (rn / fw) ** 2  # electrons: N_e + read², divided by full well²
    np.testing.assert_allclose(var, model, rtol=0.03)
    np.testing.assert_allclose(noise.noise_variance(levels, fw, rn), model, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(noisy - signal).mean(axis=(0, 1)), 0.0,
                               atol=4 * float(np.sqrt(model.max() / 65536)))
  # the noise-level map the model receives estimates that sigma on a flat frame
  sigma_map = noise.estimate_noise_map(noisy)
  np.testing.assert_allclose(np.asarray(sigma_map)[8:-8, 8:-8].mean(axis=(0, 1)),
                             np.sqrt(model), rtol=0.03)


def test_star_counts_follow_the_configured_slope():
  cfg = get_config("flat").sky  # 400 star slots
  cats = jax.jit(jax.vmap(lambda k: sky.draw_stars(k, cfg, (96, 96))))(
      jax.random.split(jax.random.key(4), 1000))
  flux = np.asarray(cats.flux)[np.asarray(cats.active)]
  assert flux.size > 50_000
  lo, hi, alpha = cfg.star_flux_min, cfg.star_flux_max, cfg.star_flux_alpha
  # cumulative counts N(>f) ∝ f^-alpha − f_max^-alpha over two decades
  grid = np.geomspace(lo, hi / 30, 12)
  n_above = np.array([(flux > g).sum() for g in grid])
  slope = np.polyfit(np.log(grid), np.log(n_above), 1)[0]
  slope_expected = np.polyfit(np.log(grid), np.log(grid ** -alpha - hi ** -alpha), 1)[0]
  np.testing.assert_allclose(slope, slope_expected, rtol=0.03)
  np.testing.assert_allclose(slope, -alpha, rtol=0.03)
  # KS against the truncated Pareto law
  cdf = lambda f: (1.0 - (f / lo) ** -alpha) / (1.0 - (lo / hi) ** alpha)
  assert stats.kstest(flux, cdf).pvalue > 1e-3
  assert flux.max() <= hi * (1 + 1e-5) and flux.min() >= lo * (1 - 1e-5)
  # sparse fields come in the configured share
  sparse = np.asarray(cats.active).mean(-1) < 0.15
  assert abs(sparse.mean() - cfg.sparse_probability) < 0.04


@pytest.mark.parametrize("n", [1.0, 2.0])
def test_sersic_galaxy_flux_and_half_light_radius(n):
  cfg = get_config("flat,quickstart").sky
  cfg.max_galaxies = 1
  cfg.galaxy_probability = 1.0
  cfg.sersic_index = ("fixed", n)
  cfg.galaxy_radius_px = ("fixed", 6.0)
  cfg.galaxy_axis_ratio = ("fixed", 1.0)
  cfg.galaxy_flux = ("fixed", 5.0)
  img = np.asarray(sky.sersic_images(jax.random.key(1), cfg, (301, 301), 1))[..., 0]
  assert abs(img.sum() - 5.0) < 0.02 * 5.0
  yy, xx = np.indices(img.shape)
  cy, cx = (img * yy).sum() / img.sum(), (img * xx).sum() / img.sum()
  inside = img[np.hypot(yy - cy, xx - cx) <= 6.0].sum() / img.sum()
  assert abs(inside - 0.5) < 0.03


def test_black_body_colours():
  rgb = np.asarray(sky.blackbody_rgb(jnp.array([3000.0, 5800.0, 15000.0]), 3))
  np.testing.assert_allclose(rgb.mean(-1), 1.0, atol=1e-6)
  assert rgb[0, 0] > 2 * rgb[0, 2] and rgb[2, 2] > 1.5 * rgb[2, 0]  # red M dwarf, blue B star
  np.testing.assert_allclose(rgb[1], 1.0, atol=0.1)  # the Sun is about white
  np.testing.assert_array_equal(sky.blackbody_rgb(jnp.array([3000.0]), 1), 1.0)


def test_synth_artifact_sheet_shows_every_artifact_type(tiny):
  from flatai_jax import synth
  panels = synth.artifact_panels(tiny("flat", **{"data.channels": 3}))
  titles = " ".join(panels)
  for word in ("vignetting", "discs", "rings", "cluster", "speck", "pixel PRNU", "blotches",
               "gradient", "dome", "glow", "F (all)", "G (all)", "clean", "observed"):
    assert word in titles, word
  for title, (img, kind) in panels.items():
    assert img.ndim == 3 and img.shape[-1] in (1, 3) and np.isfinite(img).all(), title
    assert img.std() > 0, title  # every panel shows something
    if title.startswith(("F: vignetting", "F: dust")):
      assert img.max() <= 1.0 and img.min() < 0.999, title
    if title.startswith("F: bright speck"):
      assert img.min() >= 1.0 and img.max() > 1.01, title
    if title.startswith("G:"):
      assert img.min() >= 0.0 and img.max() > 1e-3, title


def test_synth_psf_outputs_show_the_true_field(tiny, tmp_path):
  """psf task: the PSF grid is written as a mosaic (each node sums to 1), coma at the corners
  spreads their PSFs (lower peak than the centre's), and the point-source grid is regular."""
  from flatai_jax import synth
  config = tiny("psf", **{"eval.frame_psf_grid": (3, 3), "degrade.psf.coma": (0.25, 0.3)})
  paths = synth.write_examples(config, tmp_path, 1, full_frame=True)
  assert (tmp_path / "0000_psf.fits") in paths and (tmp_path / "psf_field.png").is_file()
  mosaic, _ = images.read_image(tmp_path / "0000_psf.fits")
  k = config.degrade.psf.kernel_size
  assert mosaic.shape == (3 * k, 3 * k, 1)
  nodes = mosaic[..., 0].reshape(3, k, 3, k).sum(axis=(1, 3))
  np.testing.assert_allclose(nodes, 1.0, atol=1e-5)
  assert mosaic[k:2 * k, k:2 * k].max() > mosaic[:k, :k].max()  # coma spreads corner PSFs
  stars = synth.point_source_grid((96, 128), 16)
  assert stars.sum() == 6 * 8


def test_synth_full_frame_has_the_training_crops_star_density(tiny):
  """``flatai synth --full_frame`` (= evaluate's generator) scales the star slots by the sensor's
  area over a crop's: 4 stars per 32² crop → 48 on the 96 × 128 sensor (not 4)."""
  from flatai_jax import synth
  from flatai_jax.data import synthetic
  c = tiny("flat", **{"sky.max_stars": 4, "sky.star_fraction": ("fixed", 1.0),
                      "sky.sparse_probability": 0.0, "sky.cluster_probability": 0.0,
                      "sky.galaxy_probability": 0.0, "sky.nebula_probability": 0.0,
                      "sky.star_flux_min": 0.5, "sky.star_flux_max": 0.5})  # every star 0.5
  assert synthetic.full_frame_config(c).sky.max_stars == 48
  clean = synth.make_examples(c, 1, full_frame=True)["clean"][0, ..., 0].astype(np.float64)
  assert clean.shape == (96, 128)
  # stars are uniform over the frame padded by psf_size // 2 = 4 px: 12288 / 14144 of 48 visible
  stars_seen = (clean - clean.min()).sum() / 0.5
  assert 48 * 12288 / 14144 - 8 < stars_seen < 48 * 12288 / 14144 + 8, stars_seen
