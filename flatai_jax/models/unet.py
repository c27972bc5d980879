"""Attention Residual U-Net (Flax NNX) with heads for the flat, psf and combined tasks.

Input: the normalised observed image ``(N, H, W, C)``, global coordinates
``(N, H, W, 2)`` in [-1, 1] and the noise-level map ``(N, H, W, C)``,
concatenated on the channel axis. H and W must be multiples of 2**depth.

Parameters carry logical axis names (``conv_in``, ``conv_out``, ``norm``) that
``flatai_jax.sharding`` maps onto mesh axes.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from flatai_jax.physics.forward import invert_flat

TASK_HEADS = {"flat": ("F", "G", "confidence"), "psf": ("residual",),
              "combined": ("F", "G", "confidence", "residual")}


def _conv(cin, cout, k, *, dtype, rngs, init=None):
  return nnx.Conv(
      cin, cout, (k, k), padding="SAME", dtype=dtype, rngs=rngs,
      kernel_init=nnx.with_partitioning(init or nnx.initializers.lecun_normal(),
                                        (None, None, "conv_in", "conv_out")),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)))


def _norm(c, groups, *, dtype, rngs):
  return nnx.GroupNorm(
      c, num_groups=math.gcd(c, groups), dtype=dtype, rngs=rngs,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)))


class ResBlock(nnx.Module):
  """GroupNorm → SiLU → conv3×3, twice, plus a (1×1-projected) shortcut."""

  def __init__(self, cin, cout, *, groups, dtype, rngs):
    self.norm1 = _norm(cin, groups, dtype=dtype, rngs=rngs)
    self.conv1 = _conv(cin, cout, 3, dtype=dtype, rngs=rngs)
    self.norm2 = _norm(cout, groups, dtype=dtype, rngs=rngs)
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
  """Multi-head self-attention over the bottleneck's spatial positions, residual."""

  def __init__(self, c, heads, *, groups, dtype, rngs):
    self.norm = _norm(c, groups, dtype=dtype, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=c, qkv_features=c,
                                       decode=False, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    n, h, w, c = x.shape
    t = self.norm(x).reshape(n, h * w, c)
    return x + self.attn(t).reshape(n, h, w, c)


class AttentionResUNet(nnx.Module):
  """The FlatAI network.

  Args:
    channels: image channels C (1 mono, 3 RGB).
    task: 'flat', 'psf' or 'combined' — selects the heads.
    widths: feature widths per level, e.g. (64, 128, 256, 512, 1024); the
      last is the bottleneck, so depth = len(widths) - 1 down/up levels.
    groups: GroupNorm groups (gcd with the width is used).
    attention_gates: gate the skip connections.
    bottleneck_heads: self-attention heads at the bottleneck (0 = none).
    f_max: F is bounded to [1/f_max, f_max] by F = exp(tanh(a)·ln f_max).
    dtype: compute dtype (params are float32); outputs are float32.
    remat: rematerialise each residual block in the backward pass.
  """

  def __init__(self, channels: int, task: str, widths, *, groups=32, attention_gates=True,
               bottleneck_heads=0, f_max=3.0, dtype=jnp.float32, remat=False,
               rngs: nnx.Rngs):
    if task not in TASK_HEADS:
      raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_HEADS)}")
    self.task, self.channels, self.f_max, self.remat = task, channels, f_max, remat
    self.depth = len(widths) - 1
    kw = dict(dtype=dtype, rngs=rngs)
    cin = 2 * channels + 2
    self.stem = _conv(cin, widths[0], 3, **kw)
    self.enc = nnx.List([ResBlock(widths[max(i - 1, 0)], widths[i], groups=groups, **kw)
                         for i in range(self.depth + 1)])
    self.mid_attn = (BottleneckAttention(widths[-1], bottleneck_heads, groups=groups, **kw)
                     if bottleneck_heads else None)
    self.up = nnx.List([_conv(widths[i + 1], widths[i], 3, **kw) for i in range(self.depth)])
    self.gates = nnx.List([AttentionGate(widths[i], widths[i], max(widths[i] // 2, 1), **kw)
                           if attention_gates else None for i in range(self.depth)])
    self.dec = nnx.List([ResBlock(2 * widths[i], widths[i], groups=groups, **kw)
                         for i in range(self.depth)])
    self.head_norm = _norm(widths[0], groups, **kw)
    # Zero-initialised head: the untrained model returns F = 1, G = 0, residual = 0,
    # i.e. the observed image unchanged — training starts from the do-nothing baseline.
    self.head = _conv(widths[0], channels * len(TASK_HEADS[task]), 1,
                      init=nnx.initializers.zeros_init(), **kw)

  def _block(self, block, x):
    if self.remat:
      return nnx.remat(lambda b, y: b(y))(block, x)
    return block(x)

  def __call__(self, observed, coords, noise_map):
    """Predicts the fields and the corrected image.

    Args:
      observed: ``(N, H, W, C) float32`` normalised observed image.
      coords: ``(N, H, W, 2) float32`` global sensor coordinates.
      noise_map: ``(N, H, W, C) float32`` noise level, normalised units.
    Returns:
      dict of ``(N, H, W, C) float32``: ``clean`` always; ``F``, ``G``,
      ``confidence`` for flat/combined; ``residual`` for psf/combined.
    """
    x = jnp.concatenate([observed, coords, noise_map], axis=-1)
    h = self.stem(x)
    skips = []
    for i, block in enumerate(self.enc):
      if i > 0:
        h = nnx.max_pool(h, (2, 2), strides=(2, 2))
      h = self._block(block, h)
      skips.append(h)
    if self.mid_attn is not None:
      h = self.mid_attn(h)
    for i in reversed(range(self.depth)):
      n, hh, ww, c = h.shape
      h = jax.image.resize(h, (n, hh * 2, ww * 2, c), "nearest")
      h = self.up[i](h)
      skip = skips[i] if self.gates[i] is None else self.gates[i](skips[i], h)
      h = self._block(self.dec[i], jnp.concatenate([skip, h], axis=-1))
    out = self.head(nnx.silu(self.head_norm(h))).astype(jnp.float32)
    parts = dict(zip(TASK_HEADS[self.task], jnp.split(out, len(TASK_HEADS[self.task]), axis=-1)))
    result = {}
    clean = observed
    if "F" in parts:
      result["F"] = jnp.exp(jnp.tanh(parts["F"]) * jnp.log(self.f_max))
      result["G"] = parts["G"]
      result["confidence"] = nnx.sigmoid(parts["confidence"])
      clean = invert_flat(observed, result["F"], result["G"])
    if "residual" in parts:
      result["residual"] = parts["residual"]
      clean = clean + parts["residual"]
    result["clean"] = clean
    return result


def build_model(config, rngs: nnx.Rngs) -> AttentionResUNet:
  """The model described by ``config.model`` for ``config.task``."""
  m = config.model
  widths = tuple(int(m.base_width * mult) for mult in m.width_multipliers)
  # Shardings are applied by flatai_jax.sharding (jit out_shardings), not at creation.
  with nnx.use_eager_sharding(False):
    return AttentionResUNet(
        channels=config.data.channels, task=config.task, widths=widths, groups=m.groups,
        attention_gates=m.attention_gates, bottleneck_heads=m.bottleneck_heads, f_max=m.f_max,
        dtype=jnp.dtype(m.dtype), remat=m.remat, rngs=rngs)
