"""Zernike polynomials: Noll and ANSI/OSA indices, unit-RMS evaluation on the unit disc.

Conventions (the only place they are defined):

- Radial order ``n`` and signed azimuthal order ``m``: ``m > 0`` is ``cos(m θ)``,
  ``m < 0`` is ``sin(|m| θ)``, ``m = 0`` is rotationally symmetric.
- Noll index ``j = 1, 2, …`` (Noll 1976): within each ``n``, ``|m|`` increases;
  for ``m ≠ 0`` the two polynomials take consecutive indices, the *even* ``j``
  being the cosine. ``j`` = 1 piston, 2 tilt x, 3 tilt y, 4 defocus,
  5–6 astigmatism (sin 2θ, cos 2θ), 7–8 coma (y, x), 9–10 trefoil,
  11 primary spherical.
- ANSI/OSA index (ANSI Z80.28) ``j = (n (n + 2) + m) / 2``, from 0.
- Normalisation: the mean of ``Z²`` over the unit disc is 1 (unit RMS), e.g.
  ``Z4 = √3 (2ρ² − 1)``, ``Z8 = √8 (3ρ³ − 2ρ) cos θ``. Both index orders use it,
  so converting coefficients between them is a permutation.
- Pupil coordinates ``(x, y)`` in units of the pupil radius, ``θ = atan2(y, x)``.
  In this project x runs along image columns and y along image rows (see
  ``physics/psf.py`` for what that means on the sensor).

Index helpers take and return Python ints (static); evaluation is pure JAX.
"""
from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def noll_to_nm(j: int) -> tuple[int, int]:
  """Noll index ``j ≥ 1`` → ``(n, m)``, ``m`` signed (``m < 0`` = sine)."""
  if j < 1:
    raise ValueError(f"Noll index must be >= 1, got {j}")
  n = 0
  while (n + 1) * (n + 2) // 2 < j:
    n += 1
  k = n * (n + 1) // 2 + 1  # first Noll index of order n
  for am in range(n % 2, n + 1, 2):
    for jj in ((k,) if am == 0 else (k, k + 1)):
      if jj == j:
        return n, 0 if am == 0 else (am if j % 2 == 0 else -am)
    k += 1 if am == 0 else 2
  raise AssertionError("unreachable")


def nm_to_noll(n: int, m: int) -> int:
  """``(n, m)`` → Noll index (inverse of :func:`noll_to_nm`)."""
  _check_nm(n, m)
  k = n * (n + 1) // 2 + 1
  for am in range(n % 2, n + 1, 2):
    if am == abs(m):
      if m == 0:
        return k
      even_first = k % 2 == 0  # the even index of the pair is the cosine
      cos_j, sin_j = (k, k + 1) if even_first else (k + 1, k)
      return cos_j if m > 0 else sin_j
    k += 1 if am == 0 else 2
  raise AssertionError("unreachable")


def ansi_to_nm(j: int) -> tuple[int, int]:
  """ANSI/OSA index ``j ≥ 0`` → ``(n, m)``."""
  if j < 0:
    raise ValueError(f"ANSI index must be >= 0, got {j}")
  n = int(math.ceil((-3.0 + math.sqrt(9.0 + 8.0 * j)) / 2.0))
  return n, 2 * j - n * (n + 2)


def nm_to_ansi(n: int, m: int) -> int:
  """``(n, m)`` → ANSI/OSA index."""
  _check_nm(n, m)
  return (n * (n + 2) + m) // 2


def noll_to_ansi(j: int) -> int:
  return nm_to_ansi(*noll_to_nm(j))


def ansi_to_noll(j: int) -> int:
  return nm_to_noll(*ansi_to_nm(j))


def noll_coefficients_to_ansi(coeffs):
  """Reorders Zernike coefficients from Noll to ANSI order.

  Args:
    coeffs: ``(..., J)`` coefficients of Noll ``j = 1 … J``; ``J`` must hold
      complete radial orders (J = (N + 1)(N + 2) / 2, e.g. 10, 15, 21, 28).
  Returns:
    ``(..., J)``, entry ``a`` the coefficient of ANSI index ``a``.
  """
  num = coeffs.shape[-1]
  _check_complete(num)
  order = np.array([ansi_to_noll(a) - 1 for a in range(num)])
  return jnp.take(coeffs, order, axis=-1)


def ansi_coefficients_to_noll(coeffs):
  """Inverse of :func:`noll_coefficients_to_ansi`: ``(..., J)`` ANSI → Noll."""
  num = coeffs.shape[-1]
  _check_complete(num)
  order = np.array([noll_to_ansi(j) for j in range(1, num + 1)])
  return jnp.take(coeffs, order, axis=-1)


@functools.lru_cache(maxsize=None)
def radial_coefficients(n: int, m: int) -> tuple[tuple[int, int], ...]:
  """Terms ``(coefficient, power)`` of the radial polynomial ``R_n^|m|(ρ)``."""
  _check_nm(n, m)
  am = abs(m)
  return tuple(
      ((-1) ** s * math.factorial(n - s)
       // (math.factorial(s) * math.factorial((n + am) // 2 - s)
           * math.factorial((n - am) // 2 - s)), n - 2 * s)
      for s in range((n - am) // 2 + 1))


def radial(n: int, m: int, rho):
  """Radial polynomial ``R_n^|m|(ρ)`` (``R(1) = 1``), any shape, float32."""
  rho = jnp.asarray(rho, jnp.float32)
  return sum(c * rho ** p for c, p in radial_coefficients(n, m))


def zernike_nm(n: int, m: int, x, y):
  """Unit-RMS Zernike ``Z_n^m`` at pupil points.

  Args:
    n, m: static orders, ``m`` signed (``m < 0`` = sine).
    x, y: ``(...)`` pupil coordinates in units of the pupil radius. Points
      outside the unit disc get the polynomial's value (mask them yourself).
  Returns:
    ``(...)`` float32.
  """
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  rho = jnp.sqrt(x * x + y * y)
  r = radial(n, m, rho)
  if m == 0:
    return math.sqrt(n + 1) * r
  theta = jnp.arctan2(y, x)
  ang = jnp.cos(m * theta) if m > 0 else jnp.sin(-m * theta)
  return math.sqrt(2 * (n + 1)) * r * ang


def zernike_noll(j: int, x, y):
  """Unit-RMS Zernike of Noll index ``j`` at pupil points ``(x, y)``; see :func:`zernike_nm`."""
  return zernike_nm(*noll_to_nm(j), x, y)


def zernike_basis(num_modes: int, x, y):
  """Noll modes ``j = 1 … num_modes`` stacked on a new leading axis.

  Args:
    num_modes: static number of modes.
    x, y: ``(...)`` pupil coordinates in units of the pupil radius.
  Returns:
    ``(num_modes, ...)`` float32.
  """
  return jnp.stack([zernike_noll(j, x, y) for j in range(1, num_modes + 1)])


def wavefront(coeffs, basis):
  """Wavefront ``W = Σ_j c_j Z_j``.

  Args:
    coeffs: ``(..., J)`` Noll coefficients, waves RMS.
    basis: ``(J, *S)`` from :func:`zernike_basis`.
  Returns:
    ``(..., *S)`` float32, waves.
  """
  return jnp.tensordot(coeffs, basis, axes=[[-1], [0]])


def _check_nm(n: int, m: int) -> None:
  if n < 0 or abs(m) > n or (n - m) % 2:
    raise ValueError(f"invalid Zernike orders n={n}, m={m}")


def _check_complete(num: int) -> None:
  order = int(round((math.sqrt(8 * num + 1) - 3) / 2))
  if (order + 1) * (order + 2) // 2 != num:
    raise ValueError(f"{num} modes do not fill complete radial orders (use 10, 15, 21, 28, …)")
