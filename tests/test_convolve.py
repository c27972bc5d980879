"""Spatially varying convolution (physics/convolve.py) and its use in the forward model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from configs.default import get_config
from flatai_jax.physics import convolve, forward, geometry, optics, psf


def _random_psfs(rng, gy, gx, k):
  p = rng.random((gy, gx, k, k)).astype(np.float32) ** 4
  return p / p.sum(axis=(2, 3), keepdims=True)


def _dense_reference(image, psfs, margin):
  """Every source pixel spread by Σ_ij w_i(y) w_j(x) PSF_ij (float64, loops)."""
  h, w, c = image.shape
  gy, gx, k, _ = psfs.shape
  wy = convolve.tent_weights(h, convolve.node_positions(h - 2 * margin, gy, margin))
  wx = convolve.tent_weights(w, convolve.node_positions(w - 2 * margin, gx, margin))
  out = np.zeros((h + k, w + k, c))
  for y in range(h):
    for x in range(w):
      kernel = np.einsum("i,j,ijab->ab", wy[:, y], wx[:, x], psfs.astype(np.float64))
      out[y:y + k, x:x + k] += kernel[:, :, None] * image[y, x]
  return out[k // 2:k // 2 + h, k // 2:k // 2 + w]


@pytest.mark.parametrize("h, w, gy, gx, k, margin", [
    (16, 20, 3, 4, 5, 0), (17, 13, 2, 3, 7, 3), (12, 12, 1, 1, 5, 0), (20, 15, 4, 2, 3, 1)])
def test_matches_dense_reference(h, w, gy, gx, k, margin):
  rng = np.random.default_rng(h * w)
  image = rng.random((h, w, 2)).astype(np.float32)
  psfs = _random_psfs(rng, gy, gx, k)
  out = jax.jit(convolve.spatially_varying_convolve, static_argnums=2)(image, psfs, margin)
  np.testing.assert_allclose(np.asarray(out), _dense_reference(image, psfs, margin), atol=2e-6)


def test_uniform_field_is_an_ordinary_convolution():
  rng = np.random.default_rng(1)
  image = rng.random((24, 30, 1)).astype(np.float32)
  one = _random_psfs(rng, 1, 1, 7)[0, 0]
  out = convolve.spatially_varying_convolve(image, np.broadcast_to(one, (3, 4, 7, 7)))
  ref = signal.convolve2d(image[..., 0], one, mode="same")
  np.testing.assert_allclose(np.asarray(out[..., 0]), ref, atol=2e-6)


def test_conserves_flux():
  rng = np.random.default_rng(2)
  image = np.zeros((48, 40, 3), np.float32)
  ys, xs = rng.integers(8, 32, 30), rng.integers(8, 32, 30)
  image[ys, xs] = rng.random((30, 3)) * 100.0
  psfs = _random_psfs(rng, 3, 3, 15)
  out = np.asarray(convolve.spatially_varying_convolve(image, psfs), np.float64)
  np.testing.assert_allclose(out.sum(axis=(0, 1)), image.sum(axis=(0, 1), dtype=np.float64),
                             rtol=1e-5)


def test_tent_weights_partition_of_unity_and_nodes_on_corners():
  nodes = convolve.node_positions(64, 3, margin=15)
  np.testing.assert_allclose(nodes, [15, 46.5, 78])
  w = convolve.tent_weights(94, nodes)
  np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
  np.testing.assert_allclose(w[:, [15, 78]], np.eye(3)[:, [0, 2]], atol=1e-12)
  np.testing.assert_allclose(w[:, 0], [1 + 15 / 31.5, -15 / 31.5, 0])  # linear into the margin
  np.testing.assert_allclose(w[:, 93], [0, -15 / 31.5, 1 + 15 / 31.5])
  # no kink anywhere except at the nodes: second differences vanish off-node
  d2 = np.abs(np.diff(w, 2, axis=1))
  off_node = np.ones(92, bool)
  off_node[[14, 45, 46, 77]] = False
  assert d2[:, off_node].max() < 1e-12


def test_node_coords_interpolate_the_crop_coordinates():
  coords = geometry.frame_coords(jnp.asarray([10.0, 20.0]), (33, 65), jnp.asarray([100.0, 200.0]))
  nodes = np.asarray(convolve.node_coords(coords, (3, 5)))
  np.testing.assert_allclose(nodes[0, 0], coords[0, 0], atol=1e-6)
  np.testing.assert_allclose(nodes[-1, -1], coords[-1, -1], atol=1e-6)
  np.testing.assert_allclose(nodes[1, 2], coords[16, 32], atol=1e-6)
  np.testing.assert_allclose(nodes[0, 1], coords[0, 16], atol=1e-6)


def test_reflect_padded_blur_keeps_a_flat_image_flat():
  rng = np.random.default_rng(3)
  one = _random_psfs(rng, 1, 1, 11)
  out = optics.blur(jnp.full((32, 40, 1), 0.25, jnp.float32), jnp.tile(one, (2, 3, 1, 1)))
  np.testing.assert_allclose(np.asarray(out), 0.25, atol=1e-6)
  # a real field: only the second difference of the PSF widths between nodes remains
  cfg = get_config("psf,quickstart").degrade.psf
  for i, offset in enumerate(([0.0, 0.0], [160.0, 256.0], [320.0, 512.0])):
    coords = geometry.frame_coords(jnp.asarray(offset), (64, 64), jnp.asarray([384.0, 576.0]))
    psfs = optics.psf_field(jax.random.key(i), coords, cfg, 384 / 576)
    out = optics.blur(jnp.full((64, 64, 1), 0.25, jnp.float32), psfs)
    assert float(jnp.abs(out / 0.25 - 1).max()) < 3e-3


def test_centred_field_psfs_have_centred_centroids_and_are_not_blurred():
  cfg = get_config("psf,quickstart").degrade.psf
  coords = geometry.frame_coords(jnp.asarray([320.0, 512.0]), (64, 64), jnp.asarray([384.0, 576.0]))
  spec = psf.PSFSpec.from_config(cfg)
  system = optics.draw_system(jax.random.key(3), cfg)
  nodes = geometry.field_position(convolve.node_coords(coords, tuple(cfg.grid)), 384 / 576)
  coeffs = optics.field_coefficients(system, nodes, spec.num_modes)
  raw = psf.psf(coeffs, spec)
  assert float(jnp.abs(psf.centroid(raw)).max()) > 0.2  # the kernel cut the coma wing
  fixed = psf.centred(coeffs, spec)
  assert float(jnp.abs(psf.centroid(fixed)).max()) < 0.01
  np.testing.assert_allclose(np.asarray(fixed.sum(axis=(-1, -2))), 1.0, atol=1e-6)
  # a pure tilt moves the PSF: centred, it is the untilted PSF again, to the pixel (a linear
  # interpolation's shift would have blurred it by up to 1/4 px² of variance per axis)
  tilted = psf.centred(jnp.zeros(spec.num_modes).at[1:3].set(jnp.asarray([0.37, -0.21])), spec)
  straight = psf.centred(jnp.zeros(spec.num_modes), spec)
  assert float(jnp.abs(tilted - straight).sum()) < 0.005


def test_vmap_matches_loop():
  rng = np.random.default_rng(4)
  images = rng.random((3, 16, 16, 1)).astype(np.float32)
  psfs = np.stack([_random_psfs(rng, 2, 2, 5) for _ in range(3)])
  batched = jax.jit(jax.vmap(convolve.spatially_varying_convolve))(images, psfs)
  for b in range(3):
    np.testing.assert_allclose(np.asarray(batched[b]),
                               np.asarray(convolve.spatially_varying_convolve(images[b], psfs[b])),
                               atol=1e-6)


def test_gradient_wrt_zernike_coefficients_matches_finite_differences():
  spec = psf.PSFSpec(n_pupil=16, q=2, oversample=2, kernel_size=9)
  rng = np.random.default_rng(5)
  image = jnp.asarray(rng.random((20, 20, 1)), jnp.float32)
  target = jnp.asarray(rng.random((20, 20, 1)), jnp.float32)
  base = jnp.asarray(rng.normal(size=(2, 2, 11)) * 0.1, jnp.float32)

  def loss(c):
    out = convolve.spatially_varying_convolve(image, psf.psf(c, spec))
    return jnp.sum((out - target) ** 2)

  grad = np.asarray(jax.jit(jax.grad(loss))(base))
  f = jax.jit(loss)
  eps = 1e-2
  for idx in [(0, 0, 3), (1, 0, 7), (0, 1, 5), (1, 1, 10)]:
    d = jnp.zeros_like(base).at[idx].set(eps)
    fd = (float(f(base + d)) - float(f(base - d))) / (2 * eps)
    assert abs(grad[idx] - fd) < 0.02 * abs(fd) + 1e-3


def test_degrade_blurs_with_the_returned_psf_field():
  config = get_config("psf,quickstart")
  config.degrade.noise.enabled = False
  rng = np.random.default_rng(6)
  clean = jnp.asarray(rng.random((64, 64, 1)) * 0.5, jnp.float32)
  coords = geometry.frame_coords(jnp.asarray([0.0, 0.0]), (64, 64), jnp.asarray([384.0, 576.0]))
  out = jax.jit(lambda k: forward.degrade(k, clean, coords, config.degrade, (384, 576)))(
      jax.random.key(0))
  gy, gx = config.degrade.psf.grid
  k = config.degrade.psf.kernel_size
  assert out["psf"].shape == (gy, gx, k, k) and out["psf"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out["psf"].sum(axis=(-1, -2))), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out["observed"]),
                             np.asarray(optics.blur(clean, out["psf"])), atol=1e-6)
  assert float(jnp.abs(out["observed"] - clean).mean()) > 1e-3  # it did blur
  np.testing.assert_array_equal(np.asarray(out["F"]), 1.0)
