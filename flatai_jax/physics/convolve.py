"""Spatially varying convolution of an image by a grid of PSFs (windowed overlap-add, FFT).

A PSF field is sampled on a regular ``gy × gx`` grid of nodes whose outer
nodes sit on the corner pixels of the (inner) frame. Each node has a bilinear
"tent" weight that is 1 on the node and falls to 0 on its neighbours; the
weights of all nodes sum to 1 everywhere (pixels outside the outer nodes, e.g.
in a margin, extrapolate the outer two linearly). The image is

    out = Σ_ij (w_ij · image) ⊛ PSF_ij,

so the light of every source pixel is spread by the bilinear interpolation of
the PSFs of the nodes around it: the total flux is conserved exactly (each
PSF sums to 1) and the PSF varies smoothly across the frame. A flat image
stays flat up to the second difference of the PSFs' widths between nodes
(~1e-4 for the default optics) when their centroids are centred
(``psf.recenter``); a drift of the centroids would act as a distortion. Each weighted
window is non-zero only between a node's neighbours, so each product is a
small FFT convolution, added back at the window's place (overlap-add).

Everything static (node positions, windows, weights, FFT sizes) is computed
with numpy from the shapes; the computation is jittable and differentiable in
the PSFs (hence in the Zernike coefficients that made them).
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


def node_positions(inner: int, count: int, margin: int = 0) -> np.ndarray:
  """``(count,)`` float pixel positions of the nodes along one axis.

  Outer nodes on the first and last pixel of the inner ``inner`` pixels, which
  start after ``margin`` pixels; one node sits in the middle.
  """
  if count == 1:
    return np.array([margin + (inner - 1) / 2.0])
  return margin + np.linspace(0.0, inner - 1.0, count)


def tent_weights(length: int, nodes: np.ndarray) -> np.ndarray:
  """``(count, length)`` bilinear weights of evenly spaced nodes; columns sum to 1.

  Between the outer nodes each weight is a tent (1 on its node, 0 on its
  neighbours). Beyond them (a margin) the two outer weights continue linearly
  (the outer one above 1, its neighbour below 0), so the interpolated PSF is
  extrapolated without a kink: a kink would turn the PSFs' different widths
  into a brightness ripple of a flat image.
  """
  count = len(nodes)
  if count == 1:
    return np.ones((1, length))
  pos = np.arange(length, dtype=np.float64)
  spacing = nodes[1] - nodes[0]
  w = np.maximum(0.0, 1.0 - np.abs(np.clip(pos, nodes[0], nodes[-1])[None, :] - nodes[:, None])
                 / spacing)
  before = np.minimum(pos - nodes[0], 0.0) / spacing  # ≤ 0 left of the first node
  after = np.maximum(pos - nodes[-1], 0.0) / spacing  # ≥ 0 right of the last node
  w[0] -= before
  w[1] += before
  w[-1] += after
  w[-2] -= after
  return w


def node_coords(coords, grid: tuple[int, int]):
  """Global sensor coordinates of the PSF nodes of a crop.

  Args:
    coords: ``(H, W, 2) float32`` global coordinates of the crop's pixels.
    grid: static ``(gy, gx)``.
  Returns:
    ``(gy, gx, 2) float32``, bilinearly interpolated at the node positions.
  """
  h, w = coords.shape[:2]

  def lerp_axis(n, count):
    p = node_positions(n, count)
    lo = np.clip(np.floor(p).astype(int), 0, max(n - 2, 0))
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, (p - lo).astype(np.float32)

  ylo, yhi, fy = lerp_axis(h, grid[0])
  xlo, xhi, fx = lerp_axis(w, grid[1])
  fy, fx = fy[:, None, None], fx[None, :, None]
  c00 = coords[ylo][:, xlo]
  c01 = coords[ylo][:, xhi]
  c10 = coords[yhi][:, xlo]
  c11 = coords[yhi][:, xhi]
  return ((1 - fy) * ((1 - fx) * c00 + fx * c01) + fy * ((1 - fx) * c10 + fx * c11)).astype(jnp.float32)


def fft_size(n: int) -> int:
  """Smallest ``m ≥ n`` whose prime factors are 2, 3 and 5."""
  m = n
  while True:
    r = m
    for p in (2, 3, 5):
      while r % p == 0:
        r //= p
    if r == 1:
      return m
    m += 1


@functools.lru_cache(maxsize=64)
def _axis_plan(length: int, count: int, margin: int):
  """Window starts ``(count,)``, window length, and window weights ``(count, L)``."""
  nodes = node_positions(length - 2 * margin, count, margin)
  w = tent_weights(length, nodes)
  first = np.array([np.flatnonzero(row != 0)[0] for row in w])
  last = np.array([np.flatnonzero(row != 0)[-1] for row in w])
  win = int(np.max(last - first + 1))
  padded = np.pad(w, ((0, 0), (0, win)))
  win_w = np.stack([padded[i, s:s + win] for i, s in enumerate(first)])
  return tuple(int(s) for s in first), win, win_w.astype(np.float32)


def spatially_varying_convolve(image, psfs, margin: int = 0):
  """Blurs an image by a field of PSFs, bilinearly interpolated between grid nodes.

  Args:
    image: ``(H, W, C) float32`` linear, including ``margin`` pixels on every
      side whose light may spill inwards.
    psfs: ``(gy, gx, k, k) float32``, each summing to 1, centred on pixel
      ``k // 2``; node ``(i, j)`` at the pixel positions of
      :func:`node_positions` of the inner ``(H − 2·margin, W − 2·margin)`` region.
    margin: static width of the margin, px.
  Returns:
    ``(H, W, C) float32``; light pushed beyond the array is dropped (pad the
    input, e.g. by ``k // 2``, to keep it).
  """
  h, w, c = image.shape
  gy, gx, k, _ = psfs.shape
  half = k // 2
  ys, ly, wy = _axis_plan(h, gy, margin)
  xs, lx, wx = _axis_plan(w, gx, margin)
  fy, fx = fft_size(ly + k - 1), fft_size(lx + k - 1)

  src = jnp.pad(image.astype(jnp.float32), ((0, ly), (0, lx), (0, 0)))
  rows = jnp.stack([src[s:s + ly] * wy[i][:, None, None] for i, s in enumerate(ys)])
  patches = jnp.stack([rows[:, :, s:s + lx] * wx[j][None, None, :, None]
                       for j, s in enumerate(xs)], axis=1)  # (gy, gx, ly, lx, C)
  patches = jnp.moveaxis(patches, -1, 2)  # (gy, gx, C, ly, lx)
  spec_img = jnp.fft.rfft2(patches, s=(fy, fx))
  spec_psf = jnp.fft.rfft2(psfs.astype(jnp.float32), s=(fy, fx))[:, :, None]
  full = jnp.fft.irfft2(spec_img * spec_psf, s=(fy, fx))[..., :ly + k - 1, :lx + k - 1]
  full = jnp.moveaxis(full, 2, -1)  # (gy, gx, ly + k − 1, lx + k − 1, C)

  # full[..., o, :] lands on image row s + o − half; buffer row = image row + half
  buf = jnp.zeros((h + ly + k, w + lx + k, c), jnp.float32)
  for i, sy in enumerate(ys):
    for j, sx in enumerate(xs):
      buf = buf.at[sy:sy + ly + k - 1, sx:sx + lx + k - 1].add(full[i, j])
  return buf[half:half + h, half:half + w]
