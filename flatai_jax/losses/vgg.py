"""VGG16 features (the one conv-net runner, also LPIPS's backbone) and the Gram-matrix style loss.

Weights are a pytree passed as an argument (``[{"kernel": (kh, kw, Cin, Cout), "bias": (Cout,)},
…]`` float32, torchvision's ``vgg16().features`` convolutions in HWIO layout, from
``lpips.load_weights("vgg")``), never closed over, so they are not baked into a compiled step.
Inputs are ``(N, H, W, 3)`` in LPIPS's [-1, 1] display units (``lpips.display_transform``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# LPIPS's ScalingLayer: ImageNet mean / std (which torchvision's backbones were trained on),
# written for inputs in [-1, 1]: (x - SHIFT) / SCALE == ((x + 1) / 2 - mean) / std, up to rounding.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

# A backbone as a list of ops: ("conv", Cout, kernel, stride, padding) with ReLU,
# ("pool", size, stride) max-pooling with floor, ("tap", name) a feature output.
VGG16 = (
    ("conv", 64, 3, 1, 1), ("conv", 64, 3, 1, 1), ("tap", "relu1_2"), ("pool", 2, 2),
    ("conv", 128, 3, 1, 1), ("conv", 128, 3, 1, 1), ("tap", "relu2_2"), ("pool", 2, 2),
    ("conv", 256, 3, 1, 1), ("conv", 256, 3, 1, 1), ("conv", 256, 3, 1, 1), ("tap", "relu3_3"),
    ("pool", 2, 2),
    ("conv", 512, 3, 1, 1), ("conv", 512, 3, 1, 1), ("conv", 512, 3, 1, 1), ("tap", "relu4_3"),
    ("pool", 2, 2),
    ("conv", 512, 3, 1, 1), ("conv", 512, 3, 1, 1), ("conv", 512, 3, 1, 1), ("tap", "relu5_3"),
)


def taps(spec) -> tuple[str, ...]:
  """Names of the feature outputs of a backbone spec, shallow to deep."""
  return tuple(op[1] for op in spec if op[0] == "tap")


def conv_shapes(spec, cin: int = 3) -> list[tuple[int, int, int, int]]:
  """HWIO kernel shapes of a spec's convolutions (to validate converted weights)."""
  shapes = []
  for op in spec:
    if op[0] == "conv":
      shapes.append((op[2], op[2], cin, op[1]))
      cin = op[1]
  return shapes


def tap_channels(spec) -> list[int]:
  """Channels of each tap's features (LPIPS's linear layer sizes)."""
  out, c = [], 3
  for op in spec:
    if op[0] == "conv":
      c = op[1]
    elif op[0] == "tap":
      out.append(c)
  return out


def imagenet_input(x: jnp.ndarray) -> jnp.ndarray:
  """``(N, H, W, 3)`` in [-1, 1] → the backbone's input units (LPIPS ScalingLayer)."""
  return (x - jnp.asarray(SHIFT, x.dtype)) / jnp.asarray(SCALE, x.dtype)


def run_backbone(spec, convs, x, wanted, dtype=jnp.float32) -> dict:
  """Runs a backbone up to its deepest wanted tap.

  Args:
    spec: ``VGG16`` or ``lpips.ALEXNET``.
    convs: list of ``{"kernel", "bias"}`` float32 arrays, one per conv of ``spec``.
    x: ``(N, H, W, 3)`` backbone input units (``imagenet_input``).
    wanted: tap names to return.
    dtype: compute dtype of the convolutions (float32 or bfloat16).
  Returns:
    ``{tap: (N, h, w, C) dtype}`` post-ReLU features.
  """
  wanted = set(wanted)
  unknown = wanted - set(taps(spec))
  if unknown:
    raise ValueError(f"unknown feature layers {sorted(unknown)}; choose from {taps(spec)}")
  out, i = {}, 0
  x = x.astype(dtype)
  for op in spec:
    if len(out) == len(wanted):
      break
    if op[0] == "conv":
      _, _, _, stride, pad = op
      w = convs[i]
      x = jax.lax.conv_general_dilated(
          x, w["kernel"].astype(dtype), (stride, stride), ((pad, pad), (pad, pad)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
      x = jax.nn.relu(x + w["bias"].astype(dtype))
      i += 1
    elif op[0] == "pool":
      _, size, stride = op
      x = jax.lax.reduce_window(x, np.array(-np.inf, dtype), jax.lax.max, (1, size, size, 1),
                                (1, stride, stride, 1), "VALID")
    elif op[1] in wanted:
      out[op[1]] = x
  return out


def gram(features: jnp.ndarray) -> jnp.ndarray:
  """``(N, H, W, C)`` → ``(N, C, C) float32`` Gram matrices ``G = F Fᵀ / (C·H·W)``."""
  n, h, w, c = features.shape
  f = features.astype(jnp.float32).reshape(n, h * w, c)
  return jnp.einsum("npc,npd->ncd", f, f) / (c * h * w)


def style_from_features(fx: dict, fy: dict, layers) -> jnp.ndarray:
  """Sum over ``layers`` of the mean squared difference of the Gram matrices, float32 scalar."""
  return sum(jnp.mean((gram(fx[name]) - gram(fy[name])) ** 2) for name in layers)


def style_loss(convs, x, y, layers, dtype=jnp.float32) -> jnp.ndarray:
  """Gram style loss between two ``(N, H, W, 3)`` batches in [-1, 1] (``y`` is the target).

  Args:
    convs: VGG16 weights (``lpips.load_weights("vgg")["convs"]``).
    layers: tap names of ``VGG16``, e.g. ``("relu1_2", "relu2_2", "relu3_3", "relu4_3")``.
  Returns:
    float32 scalar (see ``style_from_features``).
  """
  n = x.shape[0]
  both = imagenet_input(jnp.concatenate([x, jax.lax.stop_gradient(y)], axis=0))
  f = run_backbone(VGG16, convs, both, layers, dtype)
  return style_from_features({k: v[:n] for k, v in f.items()}, {k: v[n:] for k, v in f.items()},
                             layers)
