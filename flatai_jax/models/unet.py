"""Attention Residual U-Net (Flax NNX) with heads for the flat, psf and combined tasks.

Input: the normalised observed image ``(N, H, W, C)`` and, when enabled, the
global coordinates ``(N, H, W, 2)`` in [-1, 1] and the noise-level map
``(N, H, W, C)``, concatenated on the channel axis. H and W must be multiples
of 2**depth.

Parameters carry logical axis names (``conv_in``, ``conv_out``, ``norm``) that
``flatai_jax.sharding`` maps onto mesh axes.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flatai_jax.config_validate import CHOICES
from flatai_jax.physics.convolve import node_positions
from flatai_jax.physics.forward import invert_flat

TASK_HEADS = {"flat": ("F", "G", "confidence"), "psf": ("residual",),
              "combined": ("F", "G", "confidence", "residual")}
NORMS = CHOICES["model.norm"]
UP_BLOCKS = CHOICES["model.up_block"]


def _conv(cin, cout, k, *, dtype, rngs, init=None):
  return nnx.Conv(
      cin, cout, (k, k), padding="SAME", dtype=dtype, rngs=rngs,
      kernel_init=nnx.with_partitioning(init or nnx.initializers.lecun_normal(),
                                        (None, None, "conv_in", "conv_out")),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)))


def _identity(x):
  return x


def _norm(kind, c, groups, *, dtype, rngs):
  """GroupNorm (``gcd(c, groups)`` groups), LayerNorm over channels (per pixel), or identity."""
  scale = nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",))
  bias = nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",))
  if kind == "group":
    return nnx.GroupNorm(c, num_groups=math.gcd(c, groups), dtype=dtype, rngs=rngs,
                         scale_init=scale, bias_init=bias)
  if kind == "layer":
    return nnx.LayerNorm(c, dtype=dtype, rngs=rngs, scale_init=scale, bias_init=bias)
  if kind == "none":
    return _identity
  raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


class ResBlock(nnx.Module):
  """norm → SiLU → conv3×3, twice, plus a (1×1-projected) shortcut."""

  def __init__(self, cin, cout, *, norm, groups, dtype, rngs):
    self.norm1 = _norm(norm, cin, groups, dtype=dtype, rngs=rngs)
    self.conv1 = _conv(cin, cout, 3, dtype=dtype, rngs=rngs)
    self.norm2 = _norm(norm, cout, groups, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(cout, cout, 3, dtype=dtype, rngs=rngs)
    self.skip = _conv(cin, cout, 1, dtype=dtype, rngs=rngs) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(nnx.silu(self.norm1(x)))
    h = self.conv2(nnx.silu(self.norm2(h)))
    return h + (self.skip(x) if self.skip is not None else x)


class AttentionGate(nnx.Module):
  """Additive attention gate (Oktay et al. 2018) weighting a skip connection by the decoder signal."""

  def __init__(self, c_gate, c_skip, c_inter, *, dtype, rngs):
    self.w_gate = _conv(c_gate, c_inter, 1, dtype=dtype, rngs=rngs)
    self.w_skip = _conv(c_skip, c_inter, 1, dtype=dtype, rngs=rngs)
    self.psi = _conv(c_inter, 1, 1, dtype=dtype, rngs=rngs)

  def __call__(self, skip, gate):
    a = nnx.relu(self.w_gate(gate) + self.w_skip(skip))
    return skip * nnx.sigmoid(self.psi(a))


class BottleneckAttention(nnx.Module):
  """Multi-head self-attention over the bottleneck's spatial positions, residual.

  Q/K/V kernels ``(C, heads, C/heads)`` are sharded over heads, the output
  kernel ``(heads, C/heads, C)`` over its output features (logical ``conv_out``).
  """

  def __init__(self, c, heads, *, norm, groups, dtype, rngs):
    self.norm = _norm(norm, c, groups, dtype=dtype, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
        num_heads=heads, in_features=c, qkv_features=c, decode=False, dtype=dtype, rngs=rngs,
        kernel_metadata={"out_sharding": (None, "conv_out", None)},
        out_kernel_metadata={"out_sharding": (None, None, "conv_out")})

  def __call__(self, x):
    n, h, w, c = x.shape
    t = self.norm(x).reshape(n, h * w, c)
    return x + self.attn(t).reshape(n, h, w, c)


def node_sampling_weights(image_len: int, feature_len: int, count: int) -> np.ndarray:
  """``(count, feature_len) float32`` linear-interpolation weights that sample a feature map
  (``image_len / feature_len`` pixels per cell) at the PSF grid nodes of
  :func:`flatai_jax.physics.convolve.node_positions` (outer nodes on the edge pixels)."""
  s = image_len / feature_len
  u = np.clip((node_positions(image_len, count) + 0.5) / s - 0.5, 0.0, feature_len - 1.0)
  cells = np.arange(feature_len, dtype=np.float64)
  return np.maximum(0.0, 1.0 - np.abs(u[:, None] - cells[None, :])).astype(np.float32)


class ZernikeHead(nnx.Module):
  """Physics-informed psf head: Noll coefficients of the wavefront at each PSF grid node.

  Bottleneck features → 1×1 conv + SiLU → linear interpolation at the node
  positions → linear map to ``num_modes`` coefficients (zero-initialised:
  the untrained head predicts a diffraction-limited system).
  """

  def __init__(self, c, hidden, num_modes, grid, *, dtype, rngs):
    self.grid = tuple(int(g) for g in grid)
    self.proj = _conv(c, hidden, 1, dtype=dtype, rngs=rngs)
    self.out = _conv(hidden, num_modes, 1, init=nnx.initializers.zeros_init(), dtype=dtype,
                     rngs=rngs)

  def __call__(self, features, image_hw):
    """``(N, h, w, c)`` features of an ``image_hw`` image → ``(N, gy, gx, J) float32`` waves RMS."""
    f = nnx.silu(self.proj(features))
    wy = node_sampling_weights(image_hw[0], f.shape[1], self.grid[0])
    wx = node_sampling_weights(image_hw[1], f.shape[2], self.grid[1])
    f = jnp.einsum("yi,nijc,xj->nyxc", wy.astype(f.dtype), f, wx.astype(f.dtype))
    return self.out(f).astype(jnp.float32)


class AttentionResUNet(nnx.Module):
  """The FlatAI network.

  Args:
    channels: image channels C (1 mono, 3 RGB).
    task: 'flat', 'psf' or 'combined' — selects the heads.
    widths: feature widths per level, e.g. (64, 128, 256, 512, 1024); the
      last is the bottleneck, so depth = len(widths) - 1 down/up levels.
    norm: 'group' (GroupNorm), 'layer' (LayerNorm over channels) or 'none'.
    groups: GroupNorm groups (gcd with the width is used).
    up_block: 'conv' (nearest ×2 + conv3×3, as PyTorch FlatAI's latest model) or
      'resblock' (nearest ×2 + residual block, as PyTorch FlatAI's 40.1 M model).
    coord_inputs: feed the two global coordinate channels.
    noise_input: feed the noise-level map.
    attention_gates: gate the skip connections.
    bottleneck_heads: self-attention heads at the bottleneck (0 = none).
    f_max: F is bounded to [1/f_max, f_max] by F = exp(tanh(a)·ln f_max).
    residual_bound: > 0: the residual is ``b·σ·tanh(a/b)``, ``a`` the head's output in units
      of ``σ`` (the median of the crop's noise map), so it changes no pixel by more than
      ``b`` noise σ (the aberration cleanup: it removes the deconvolution's noise and ringing,
      and cannot dig holes next to a star 10⁴ σ bright); 0: unbounded.
    zernike_grid: ``(gy, gx)`` PSF nodes of the Zernike head, or None (no head).
    num_modes: Noll modes j = 1 … num_modes predicted by the Zernike head.
    dtype: compute dtype (params are float32); outputs are float32.
    remat: rematerialise each residual block in the backward pass.
  """

  def __init__(self, channels: int, task: str, widths, *, norm="group", groups=32,
               up_block="conv", coord_inputs=True, noise_input=True, attention_gates=True,
               bottleneck_heads=0, f_max=3.0, zernike_grid=None, num_modes=11,
               residual_bound=0.0, dtype=jnp.float32, remat=False, rngs: nnx.Rngs):
    if task not in TASK_HEADS:
      raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_HEADS)}")
    if up_block not in UP_BLOCKS:
      raise ValueError(f"unknown up_block {up_block!r}; expected one of {UP_BLOCKS}")
    self.task, self.channels, self.f_max, self.remat = task, channels, f_max, remat
    if residual_bound and not noise_input:
      raise ValueError("residual_bound counts in the noise map's σ: needs noise_input")
    self.residual_bound = float(residual_bound)
    self.coord_inputs, self.noise_input = coord_inputs, noise_input
    self.depth = len(widths) - 1
    kw = dict(dtype=dtype, rngs=rngs)
    blk = dict(norm=norm, groups=groups, **kw)
    cin = channels + (2 if coord_inputs else 0) + (channels if noise_input else 0)
    self.stem = _conv(cin, widths[0], 3, **kw)
    self.enc = nnx.List([ResBlock(widths[max(i - 1, 0)], widths[i], **blk)
                         for i in range(self.depth + 1)])
    self.mid_attn = (BottleneckAttention(widths[-1], bottleneck_heads, **blk)
                     if bottleneck_heads else None)
    self.up = nnx.List([_conv(widths[i + 1], widths[i], 3, **kw) if up_block == "conv"
                        else ResBlock(widths[i + 1], widths[i], **blk) for i in range(self.depth)])
    self.gates = nnx.List([AttentionGate(widths[i], widths[i], max(widths[i] // 2, 1), **kw)
                           if attention_gates else None for i in range(self.depth)])
    self.dec = nnx.List([ResBlock(2 * widths[i], widths[i], **blk) for i in range(self.depth)])
    self.head_norm = _norm(norm, widths[0], groups, **kw)
    # Zero-initialised head: the untrained model returns F = 1, G = 0, residual = 0,
    # i.e. the observed image unchanged — training starts from the do-nothing baseline.
    self.head = _conv(widths[0], channels * len(TASK_HEADS[task]), 1,
                      init=nnx.initializers.zeros_init(), **kw)
    self.zernike = (ZernikeHead(widths[-1], widths[0], num_modes, zernike_grid, **kw)
                    if zernike_grid is not None else None)

  def _block(self, block, x):
    if self.remat:
      return nnx.remat(lambda b, y: b(y))(block, x)
    return block(x)

  def __call__(self, observed, coords, noise_map):
    """Predicts the fields and the corrected image.

    Args:
      observed: ``(N, H, W, C) float32`` normalised observed image.
      coords: ``(N, H, W, 2) float32`` global sensor coordinates (unused when
        ``coord_inputs`` is off).
      noise_map: ``(N, H, W, C) float32`` noise level, normalised units (unused
        when ``noise_input`` is off).
    Returns:
      dict of ``(N, H, W, C) float32``: ``clean`` always; ``F``, ``G``,
      ``confidence`` for flat/combined; ``residual`` for psf/combined; with the
      Zernike head, ``zernike`` ``(N, gy, gx, J) float32`` Noll coefficients in
      waves RMS at λ_ref at the PSF grid nodes (``physics.optics.render_psfs``).
    """
    parts_in = [observed] + ([coords] if self.coord_inputs else []) + (
        [noise_map] if self.noise_input else [])
    h = self.stem(jnp.concatenate(parts_in, axis=-1))
    skips = []
    for i, block in enumerate(self.enc):
      if i > 0:
        h = nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2))  # keyword: jax2onnx patches it
      h = self._block(block, h)
      skips.append(h)
    if self.mid_attn is not None:
      h = self.mid_attn(h)
    result = {}
    if self.zernike is not None:
      result["zernike"] = self.zernike(h, observed.shape[1:3])
    for i in reversed(range(self.depth)):
      n, hh, ww, c = h.shape
      h = jax.image.resize(h, (n, hh * 2, ww * 2, c), "nearest")
      h = self.up[i](h) if isinstance(self.up[i], nnx.Conv) else self._block(self.up[i], h)
      skip = skips[i] if self.gates[i] is None else self.gates[i](skips[i], h)
      h = self._block(self.dec[i], jnp.concatenate([skip, h], axis=-1))
    out = self.head(nnx.silu(self.head_norm(h))).astype(jnp.float32)
    parts = dict(zip(TASK_HEADS[self.task], jnp.split(out, len(TASK_HEADS[self.task]), axis=-1)))
    clean = observed
    if "F" in parts:
      result["F"] = jnp.exp(jnp.tanh(parts["F"]) * jnp.log(self.f_max))
      result["G"] = parts["G"]
      result["confidence"] = nnx.sigmoid(parts["confidence"])
      clean = invert_flat(observed, result["F"], result["G"])
    if "residual" in parts:
      residual = parts["residual"]
      if self.residual_bound:  # at most ± bound × the crop's typical noise σ, smoothly
        sigma = jnp.median(noise_map, axis=(1, 2), keepdims=True).astype(jnp.float32)
        b = self.residual_bound
        residual = b * sigma * jnp.tanh(residual / b)
      result["residual"] = residual
      clean = clean + residual
    result["clean"] = clean
    return result


def model_widths(model_cfg) -> tuple[int, ...]:
  """Feature widths per level from ``config.model`` (base width × multipliers)."""
  return tuple(int(model_cfg.base_width * mult) for mult in model_cfg.width_multipliers)


def build_model(config, rngs: nnx.Rngs) -> AttentionResUNet:
  """The model described by ``config.model`` for ``config.task``."""
  m = config.model
  zernike = m.zernike_head and config.task in ("psf", "combined")
  # Shardings are applied by flatai_jax.sharding (jit out_shardings), not at creation.
  with nnx.use_eager_sharding(False):
    return AttentionResUNet(
        channels=config.data.channels, task=config.task, widths=model_widths(m), norm=m.norm,
        groups=m.groups, up_block=m.up_block, coord_inputs=m.coord_inputs,
        noise_input=m.noise_input, attention_gates=m.attention_gates,
        bottleneck_heads=m.bottleneck_heads, f_max=m.f_max, residual_bound=m.residual_bound,
        zernike_grid=tuple(config.degrade.psf.grid) if zernike else None,
        num_modes=config.degrade.psf.num_modes, dtype=jnp.dtype(m.dtype), remat=m.remat,
        rngs=rngs)
