"""Coordinates, normalisation and the forward model's algebra (analytic checks)."""
import jax
import jax.numpy as jnp
import numpy as np

from flatai_jax.physics import forward, geometry, noise, normalize


def test_frame_coords_are_global_pixel_centres():
  c = np.asarray(geometry.frame_coords(jnp.array([96.0, 0.0]), (32, 32), jnp.array([128.0, 256.0])))
  # bottom-left tile of a 128×256 sensor: first column centre x = 2*0.5/256 - 1
  np.testing.assert_allclose(c[0, 0], [2 * 0.5 / 256 - 1, 2 * 96.5 / 128 - 1], atol=1e-6)
  np.testing.assert_allclose(c[-1, -1], [2 * 31.5 / 256 - 1, 2 * 127.5 / 128 - 1], atol=1e-6)
  full = np.asarray(geometry.frame_coords(jnp.zeros(2), (4, 6), jnp.array([4.0, 6.0])))
  np.testing.assert_allclose(full[..., 0].mean(), 0.0, atol=1e-6)  # symmetric about the centre
  np.testing.assert_allclose(geometry.field_radius(jnp.array([1.0, 1.0]), 0.5), 1.0, atol=1e-6)


def test_normalisation_commutes_with_the_forward_model():
  k = jax.random.split(jax.random.key(0), 3)
  clean = jax.random.uniform(k[0], (2, 16, 16, 1), minval=0.0, maxval=0.5)
  f_field = jax.random.uniform(k[1], (2, 16, 16, 1), minval=0.6, maxval=1.0)
  g_field = jax.random.uniform(k[2], (2, 16, 16, 1), minval=0.0, maxval=0.1)
  observed = forward.expected_signal(clean, f_field, g_field, saturation=10.0)
  offset, scale = normalize.robust_stats(observed)
  obs_n = normalize.normalize(observed, offset, scale)
  clean_n, f_n, g_n = normalize.fields_to_normalized(clean, f_field, g_field, offset, scale)
  np.testing.assert_allclose(obs_n, clean_n * f_n + g_n, atol=1e-5)
  np.testing.assert_allclose(forward.invert_flat(obs_n, f_n, g_n), clean_n, atol=1e-4)
  back = normalize.fields_from_normalized(clean_n, f_n, g_n, offset, scale)
  for a, b in zip(back, (clean, f_field, g_field)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # the quantiles land where documented
  np.testing.assert_allclose(jnp.quantile(obs_n[0], 0.005), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.quantile(obs_n[0], 0.995), 1.0, atol=1e-5)


def test_saturation_clips_the_expected_signal_only_from_above():
  s = forward.expected_signal(jnp.array([0.0, 0.5, 3.0]), jnp.ones(3), jnp.full(3, 0.1), 1.0)
  np.testing.assert_allclose(s, [0.1, 0.6, 1.0], atol=1e-7)


def test_box_mean_is_the_reflected_box_average():
  """``noise.box_mean`` (separable) against scipy's uniform filter with the same reflection
  (``mirror``: the edge pixel not repeated, numpy's ``reflect``)."""
  from scipy import ndimage
  x = np.random.default_rng(4).random((23, 31, 2)).astype(np.float32)
  ref = ndimage.uniform_filter(x.astype(np.float64), size=(9, 9, 1), mode="mirror")
  np.testing.assert_allclose(np.asarray(noise.box_mean(jnp.asarray(x), 4)), ref, atol=1e-6)
