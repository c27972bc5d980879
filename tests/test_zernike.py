"""Zernike polynomials: Noll/ANSI indices, unit-RMS normalisation, closed forms."""
import math

import numpy as np
import pytest

from flatai_jax.physics import zernike

# Noll (1976), Table 1: j -> (n, m), m < 0 = sin
NOLL = {1: (0, 0), 2: (1, 1), 3: (1, -1), 4: (2, 0), 5: (2, -2), 6: (2, 2), 7: (3, -1),
        8: (3, 1), 9: (3, -3), 10: (3, 3), 11: (4, 0), 12: (4, 2), 13: (4, -2), 14: (4, 4),
        15: (4, -4), 16: (5, 1), 17: (5, -1), 18: (5, 3), 19: (5, -3), 20: (5, 5),
        21: (5, -5), 22: (6, 0)}
# ANSI Z80.28: j = (n (n + 2) + m) / 2
ANSI = {0: (0, 0), 1: (1, -1), 2: (1, 1), 3: (2, -2), 4: (2, 0), 5: (2, 2), 6: (3, -3),
        7: (3, -1), 8: (3, 1), 9: (3, 3), 12: (4, 0), 24: (6, 0)}


def test_noll_table():
  for j, nm in NOLL.items():
    assert zernike.noll_to_nm(j) == nm
    assert zernike.nm_to_noll(*nm) == j


def test_ansi_table_and_round_trips():
  for j, nm in ANSI.items():
    assert zernike.ansi_to_nm(j) == nm
  for j in range(1, 120):
    assert zernike.ansi_to_noll(zernike.noll_to_ansi(j)) == j
  for a in range(0, 120):
    assert zernike.noll_to_ansi(zernike.ansi_to_noll(a)) == a
  assert zernike.noll_to_ansi(4) == 4 and zernike.noll_to_ansi(11) == 12
  assert zernike.noll_to_ansi(8) == 8 and zernike.noll_to_ansi(7) == 7
  assert zernike.noll_to_ansi(2) == 2 and zernike.noll_to_ansi(3) == 1


def test_invalid_indices_raise():
  with pytest.raises(ValueError):
    zernike.noll_to_nm(0)
  with pytest.raises(ValueError):
    zernike.nm_to_noll(2, 1)
  with pytest.raises(ValueError):
    zernike.noll_coefficients_to_ansi(np.zeros(11))


def _disc_grid(n):
  c = (np.arange(n) + 0.5) / n * 2.0 - 1.0
  yy, xx = np.meshgrid(c, c, indexing="ij")
  inside = xx ** 2 + yy ** 2 <= 1.0
  return xx[inside], yy[inside]


def test_gram_matrix_is_identity_on_fine_cartesian_disc():
  x, y = _disc_grid(512)
  b = np.asarray(zernike.zernike_basis(22, x, y), np.float64)
  gram = b @ b.T / x.size
  assert np.abs(gram - np.eye(22)).max() < 1e-3


def test_gram_matrix_exact_quadrature():
  # Gauss–Legendre in ρ² (exact for polynomials) × uniform θ (exact for trig. polys)
  t, wt = np.polynomial.legendre.leggauss(12)
  rho = np.sqrt((t + 1.0) / 2.0)  # ρ² uniform on [0, 1] ↔ area measure
  theta = np.arange(32) * 2.0 * np.pi / 32
  rr, th = np.meshgrid(rho, theta, indexing="ij")
  w = np.repeat(wt[:, None] / 2.0, 32, axis=1) / 32
  b = np.asarray(zernike.zernike_basis(22, rr * np.cos(th), rr * np.sin(th)), np.float64)
  gram = np.einsum("ipq,jpq,pq->ij", b, b, w)
  assert np.abs(gram - np.eye(22)).max() < 2e-6


def test_closed_forms():
  rng = np.random.default_rng(0)
  x, y = rng.uniform(-0.7, 0.7, (2, 200))
  rho, th = np.hypot(x, y), np.arctan2(y, x)
  closed = {
      1: np.ones_like(x),
      2: 2 * rho * np.cos(th),
      3: 2 * rho * np.sin(th),
      4: math.sqrt(3) * (2 * rho ** 2 - 1),
      5: math.sqrt(6) * rho ** 2 * np.sin(2 * th),
      6: math.sqrt(6) * rho ** 2 * np.cos(2 * th),
      7: math.sqrt(8) * (3 * rho ** 3 - 2 * rho) * np.sin(th),
      8: math.sqrt(8) * (3 * rho ** 3 - 2 * rho) * np.cos(th),
      9: math.sqrt(8) * rho ** 3 * np.sin(3 * th),
      10: math.sqrt(8) * rho ** 3 * np.cos(3 * th),
      11: math.sqrt(5) * (6 * rho ** 4 - 6 * rho ** 2 + 1),
      22: math.sqrt(7) * (20 * rho ** 6 - 30 * rho ** 4 + 12 * rho ** 2 - 1),
  }
  for j, ref in closed.items():
    np.testing.assert_allclose(np.asarray(zernike.zernike_noll(j, x, y)), ref, atol=1e-5)


def test_coefficient_conversion_preserves_the_wavefront():
  rng = np.random.default_rng(1)
  c_noll = rng.normal(size=(3, 21)).astype(np.float32)
  c_ansi = np.asarray(zernike.noll_coefficients_to_ansi(c_noll))
  np.testing.assert_array_equal(np.asarray(zernike.ansi_coefficients_to_noll(c_ansi)), c_noll)
  x, y = rng.uniform(-0.7, 0.7, (2, 50))
  w_noll = np.asarray(zernike.wavefront(c_noll, zernike.zernike_basis(21, x, y)))
  ansi_basis = np.stack([np.asarray(zernike.zernike_nm(*zernike.ansi_to_nm(a), x, y))
                         for a in range(21)])
  np.testing.assert_allclose(c_ansi @ ansi_basis, w_noll, atol=1e-5)


def test_matches_hcipy_indices_and_values():
  hcipy = pytest.importorskip("hcipy")
  for j in range(1, 67):
    assert zernike.noll_to_nm(j) == hcipy.noll_to_zernike(j)
  for a in range(0, 66):
    assert zernike.ansi_to_nm(a) == hcipy.ansi_to_zernike(a)
  grid = hcipy.CartesianGrid(hcipy.UnstructuredCoords(
      np.random.default_rng(2).uniform(-0.35, 0.35, (2, 100))))
  x, y = grid.x * 2.0, grid.y * 2.0  # hcipy: D = 1 → unit radius here
  for j in range(1, 23):
    np.testing.assert_allclose(np.asarray(zernike.zernike_noll(j, x, y)),
                               np.asarray(hcipy.zernike_noll(j, 1.0, grid)), atol=1e-5)
