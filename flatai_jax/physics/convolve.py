"""Spatially varying convolution of an image by a grid of PSFs (per-cell FFTs, overlap-add).

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
(``psf.centred``); a drift of the centroids would act as a distortion. Between
four nodes (a cell) the weights are bilinear, so the cell's share of the sum is
four small FFT convolutions of the cell's four bilinearly weighted blocks with
the PSFs of its corner nodes, summed in the Fourier domain, one inverse
(:func:`spatially_varying_convolve`), added back at the cell's place
(overlap-add).

Everything static (node positions, cells, weights, FFT sizes) is computed
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
def _cell_plan(length: int, count: int, margin: int):
  """The cells between consecutive nodes along one axis: ``(starts, stops, t)`` and the
  longest cell. Cell ``c`` holds the pixels from node ``c`` to node ``c + 1`` (the first also
  those before node 0, the last those after the last node); ``t (cells, L) float32`` is
  ``(p − node_c) / spacing`` on its pixels (0 past its end), so that node ``c`` weighs
  ``1 − t`` there and node ``c + 1`` weighs ``t`` — :func:`tent_weights`, margins included."""
  nodes = node_positions(length - 2 * margin, count, margin)
  if count == 1:
    return (0,), (length,), np.zeros((1, length), np.float32), length
  spacing = nodes[1] - nodes[0]
  bounds = [0] + [int(np.ceil(n)) for n in nodes[1:-1]] + [length]
  starts, stops = tuple(bounds[:-1]), tuple(bounds[1:])
  cell = max(b - a for a, b in zip(starts, stops))
  t = np.zeros((count - 1, cell), np.float32)
  for c, (a, b) in enumerate(zip(starts, stops)):
    t[c, :b - a] = (np.arange(a, b) - nodes[c]) / spacing
  return starts, stops, t, cell


def _psf_spectra(psfs, fy: int, fx: int):
  """``rfft2`` of ``(..., k, k)`` kernels zero-padded to ``(fy, fx)``: the last axis first, on
  the k rows alone, then the columns (a padded 2-D FFT would transform ``fy − k`` zero rows)."""
  rows = jnp.fft.rfft(psfs.astype(jnp.float32), n=fx, axis=-1)
  return jnp.fft.fft(rows, n=fy, axis=-2)


def _plan(hw: tuple[int, int], grid: tuple[int, int], k: int, margin: int):
  """The static cell plans of both axes (:func:`_cell_plan`) and the FFT size ``(fy, fx)``."""
  py, px = _cell_plan(hw[0], grid[0], margin), _cell_plan(hw[1], grid[1], margin)
  return py, px, (fft_size(py[-1] + k - 1), fft_size(px[-1] + k - 1))


def _cell_weights(t: np.ndarray, starts, stops, length: int, n: int) -> np.ndarray:
  """``(2, cells, n) float32``: the weights ``(1 − t, t)`` of a cell's two nodes on its pixels,
  0 past the cell's end and on the FFT's zero padding (``length ≤ n``)."""
  inside = np.arange(length)[None] < (np.array(stops) - np.array(starts))[:, None]
  w = np.zeros((2, len(starts), n), np.float32)
  w[0, :, :length] = np.where(inside, 1 - t, 0)
  w[1, :, :length] = np.where(inside, t, 0)
  return w


def cell_kernels(psfs, hw: tuple[int, int], margin: int = 0):
  """The spectra of a PSF field's nodes on the cells' FFT grid of an ``hw`` image
  (:func:`spatially_varying_convolve`).

  They depend on the PSFs and the shapes only: an iteration that convolves many images with one
  field (Richardson–Lucy) computes them once.

  Args:
    psfs: ``(gy, gx, k, k)`` as :func:`spatially_varying_convolve`'s.
    hw: static ``(H, W)`` of the image, margin included.
    margin: static width of the margin, px.
  Returns:
    ``(gy, gx, fy, fx // 2 + 1) complex64``: the rfft2 of each PSF zero-padded to the cells'
    ``(fy, fx)`` FFT grid (a cell takes those of its four corner nodes).
  """
  gy, gx, k, _ = psfs.shape
  _, _, (fy, fx) = _plan(hw, (gy, gx), k, margin)
  return _psf_spectra(psfs, fy, fx)


def convolve_cells(image, kernels, grid: tuple[int, int], k: int, margin: int = 0):
  """:func:`spatially_varying_convolve` with the field's :func:`cell_kernels` given.

  One row of cells at a time (a Python loop, unrolled in the trace): its cells' four weighted
  blocks, their rfft2 against the corner nodes' spectra, one inverse and the overlap-add along
  the row, then the row's strip added into the frame. A row's arrays (~4 MB for 7 cells of
  180²) stay in the cache where those of all cells at once (~90 MB) would not; that, not the
  arithmetic, made the difference on the shared 2-core CPU (BENCHMARKS.md).

  Args:
    image: ``(H, W, C) float32`` as :func:`spatially_varying_convolve`'s.
    kernels: ``cell_kernels(psfs, (H, W), margin)``.
    grid: static ``(gy, gx)`` of the field; ``k``: static PSF side, px.
    margin: static width of the margin, px.
  Returns:
    ``(H, W, C) float32``.
  """
  h, w, c = image.shape
  gy, gx = grid
  half = k // 2
  (ys, ye, ty, ly), (xs, xe, tx, lx), (fy, fx) = _plan((h, w), grid, k, margin)
  oy, ox = ly + k - 1, lx + k - 1  # the linear convolution of a cell's block
  wy, wx = _cell_weights(ty, ys, ye, ly, fy), _cell_weights(tx, xs, xe, lx, fx)
  wx4 = wx[[0, 0, 1, 1]][:, :, None, None, :]  # x weights of the blocks 00, 10, 01, 11 (y, x)
  cx = len(xs)
  left = kernels[:, :cx][:, :, None]  # (gy, cx, 1, fy, fx'): node (i, j) of cell j
  right = kernels[:, 1:cx + 1][:, :, None] if gx > 1 else left  # node (i, j + 1)
  # channels first: a cell's block is then (C, fy, fx) with the FFT axes last
  src = jnp.pad(jnp.moveaxis(image.astype(jnp.float32), -1, 0), ((0, 0), (0, fy), (0, fx)))
  buf = jnp.zeros((c, h + ly + k, w + lx + k), jnp.float32)
  for i, a in enumerate(ys):
    below = i + 1 if gy > 1 else i
    blocks = jnp.stack([src[:, a:a + fy, b:b + fx] for b in xs])  # (cx, C, fy, fx)
    wy4 = wy[[0, 1, 0, 1], i][:, None, None, :, None]
    spec = jnp.fft.rfft2(blocks[None] * wy4 * wx4)  # (4, cx, C, fy, fx')
    total = (spec[0] * left[i] + spec[1] * left[below] + spec[2] * right[i]
             + spec[3] * right[below])
    full = jnp.fft.irfft2(total, s=(fy, fx))[..., :oy, :ox]  # (cx, C, oy, ox)
    # full[..., o, :] lands on image row a + o − half; buf row = image row + half
    strip = jnp.zeros((c, oy, w + lx + k), jnp.float32)
    for j, b in enumerate(xs):
      strip = strip.at[:, :, b:b + ox].add(full[j])
    buf = buf.at[:, a:a + oy].add(strip)
  return jnp.moveaxis(buf[:, half:half + h, half:half + w], 0, -1)


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

  Per cell between four nodes the tent weights are bilinear, ``(1 − t_y, t_y) ⊗ (1 − t_x,
  t_x)``, so the cell's share of ``Σ_n (w_n · image) ⊛ PSF_n`` is ``irfft2(Σ_ab rfft2(w^y_a ·
  w^x_b · block) · rfft2(P_ab))`` over its corner nodes ``ab``: four FFTs of one cell and one
  inverse, instead of an FFT of each node's window (twice a cell per axis) forward and back. The
  same sum, exactly. The nodes' spectra come from :func:`cell_kernels` (a cell takes slices of
  them, no per-cell kernels); :func:`convolve_cells` does the rest.
  """
  return convolve_cells(image, cell_kernels(psfs, image.shape[:2], margin), psfs.shape[:2],
                        psfs.shape[-1], margin)
