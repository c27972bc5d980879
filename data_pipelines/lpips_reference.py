"""Run-once job: reference LPIPS values from the PyTorch ``lpips`` package, for tests/test_lpips.py.

  pip install -e '.[bench]'   # torch, torchvision, lpips
  python data_pipelines/lpips_reference.py [--output=tests/data]

Builds ``lpips.LPIPS(pretrained=True, pnet_rand=True, net=…)`` (its own v0.1 linear layers),
loads the backbone convolutions from the *same* ``flatai_jax/assets/lpips_<net>.npz`` the JAX
code uses (torchvision's download is not reachable), and scores the deterministic pairs of
``reference_pairs`` for ``vgg`` and ``alex``. Writes ``lpips_reference.json`` (values, seed, a
SHA-256 of the pairs) and two small ``torch.save`` files (zip and legacy format) that test the
torch-free reader of ``convert_lpips_weights``.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = 20240607
SIZE = 64  # px
NUM_PAIRS = 10


def _smooth(rng, size, scale):
  """A smooth random field (sum of a few random low-frequency cosines), (size, size)."""
  yy, xx = np.mgrid[0:size, 0:size] / size
  f = np.zeros((size, size))
  for _ in range(6):
    kx, ky = rng.uniform(-scale, scale, 2)
    f += rng.normal() * np.cos(2 * np.pi * (kx * xx + ky * yy) + rng.uniform(0, 2 * np.pi))
  return f


def _blur(img):
  """3×3 box blur with edge replication, per channel."""
  p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
  return sum(p[i:i + img.shape[0], j:j + img.shape[1]] for i in range(3) for j in range(3)) / 9


def reference_pairs(seed: int = SEED, size: int = SIZE, num: int = NUM_PAIRS):
  """Deterministic image pairs: ``(x, y)`` each ``(num, size, size, 3)`` float32 in [-1, 1].

  Kinds, cycling: textured image vs a noisy copy, vs a blurred copy, vs a shifted copy,
  vs an unrelated image, vs itself (distance 0); grey (mono → 3 channels) for odd indices.
  """
  rng = np.random.default_rng(seed)
  xs, ys = [], []
  for i in range(num):
    base = np.stack([_smooth(rng, size, 6) for _ in range(3)], -1) + 0.3 * rng.normal(
        size=(size, size, 3))
    if i % 2:
      base = np.repeat(base.mean(-1, keepdims=True), 3, -1)
    x = np.tanh(0.6 * base)
    kind = i % 5
    if kind == 0:
      y = x + 0.1 * rng.normal(size=x.shape)
    elif kind == 1:
      y = _blur(x)
    elif kind == 2:
      y = np.roll(x, (1 + i // 5, 2), axis=(0, 1))
    elif kind == 3:
      y = np.tanh(0.6 * np.stack([_smooth(rng, size, 3) for _ in range(3)], -1))
    else:
      y = x.copy()
    xs.append(x)
    ys.append(np.clip(y, -1, 1))
  return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def pairs_sha256(x, y) -> str:
  return hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()
                        ).hexdigest()


def torch_lpips(net: str, npz_path):
  """``lpips.LPIPS`` with its backbone convolutions loaded from our ``.npz`` (HWIO → OIHW)."""
  import lpips  # noqa: F401 (the bench extra must be installed; fail before any work)
  import torch
  model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False).eval()
  convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
  with np.load(npz_path) as z, torch.no_grad():
    if len(convs) != sum(k.endswith(".kernel") for k in z.files):
      raise ValueError(f"{npz_path}: conv count does not match lpips' {net}")
    for i, conv in enumerate(convs):
      conv.weight.copy_(torch.from_numpy(z[f"conv{i}.kernel"].transpose(3, 2, 0, 1).copy()))
      conv.bias.copy_(torch.from_numpy(z[f"conv{i}.bias"]))
  return model


def to_nchw(x):
  import torch
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def write_torch_fixtures(out: Path) -> dict:
  """Small state dicts in both torch.save formats, with strided views, fp16 and int64."""
  import torch
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  state = {"dense": base, "transposed": base.t(), "offset_view": base[1:, 2:5],
           "half": torch.linspace(-1, 1, 5, dtype=torch.float16),
           "long": torch.tensor([3, -2, 7], dtype=torch.int64)}
  torch.save(state, out / "torch_zip.pth")
  torch.save(state, out / "torch_legacy.pth", _use_new_zipfile_serialization=False)
  return {k: v.tolist() for k, v in state.items()}


def main(argv=None):
  import lpips  # noqa: F401 (the bench extra must be installed; fail before any work)
  import torch
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--output", default=str(ROOT / "tests" / "data"))
  args = p.parse_args(argv)
  out = Path(args.output)
  out.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(0)
  x, y = reference_pairs()
  values = {}
  for net in ("vgg", "alex"):
    model = torch_lpips(net, ROOT / "flatai_jax" / "assets" / f"lpips_{net}.npz")
    with torch.no_grad():
      values[net] = model(to_nchw(x), to_nchw(y)).reshape(-1).double().tolist()
    print(net, np.round(values[net], 5))
  record = {"seed": SEED, "size": SIZE, "num_pairs": NUM_PAIRS, "pairs_sha256": pairs_sha256(x, y),
            "lpips_version": importlib.metadata.version("lpips"),
            "torch_version": torch.__version__, "values": values,
            "torch_fixtures": write_torch_fixtures(out)}
  (out / "lpips_reference.json").write_text(json.dumps(record, indent=1) + "\n")
  print(f"wrote {out / 'lpips_reference.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
