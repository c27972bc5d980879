"""LPIPS throughput, JAX vs the PyTorch ``lpips`` package on the same machine, same weights.

  pip install -e '.[bench]'   # torch, torchvision, lpips
  PYTHONPATH=. python benchmarks/losses.py [--size 256] [--batch 4] [--reps 3] [--nets vgg,alex]

For each net: JAX compile time (forward, and forward + gradient w.r.t. the first image), then
image pairs/s of the jitted forward and forward + backward against ``lpips.LPIPS`` (eval mode,
``torch.no_grad`` for the forward) built by ``data_pipelines/lpips_reference.torch_lpips``, and
the largest difference of their values. Prints the JAX/PyTorch ratio.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.lpips_reference import reference_pairs, to_nchw, torch_lpips
from flatai_jax.losses import lpips


def _best(fn, reps):
  fn()  # warm-up
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def bench(net, size, batch, reps):
  import torch
  x, y = reference_pairs(size=size, num=batch)
  w = jax.device_put(lpips.load_weights(net))
  jx, jy = jnp.asarray(x), jnp.asarray(y)
  fwd = jax.jit(lambda w, a, b: lpips.distance(w, a, b, net))
  grad = jax.jit(jax.grad(lambda a, w, b: jnp.sum(lpips.distance(w, a, b, net))))
  t = time.perf_counter()
  fwd_c = fwd.lower(w, jx, jy).compile()
  compile_fwd = time.perf_counter() - t
  t = time.perf_counter()
  grad_c = grad.lower(jx, w, jy).compile()
  compile_grad = time.perf_counter() - t
  t_jax = _best(lambda: fwd_c(w, jx, jy).block_until_ready(), reps)
  t_jax_g = _best(lambda: grad_c(jx, w, jy).block_until_ready(), reps)

  model = torch_lpips(net, lpips.ASSETS / f"lpips_{net}.npz")
  tx, ty = to_nchw(x), to_nchw(y)

  def torch_fwd():
    with torch.no_grad():
      return model(tx, ty)

  def torch_grad():
    a = tx.clone().requires_grad_(True)
    model(a, ty).sum().backward()
    return a.grad

  t_torch = _best(torch_fwd, reps)
  t_torch_g = _best(torch_grad, reps)
  diff = float(np.max(np.abs(np.asarray(fwd_c(w, jx, jy)) - torch_fwd().reshape(-1).numpy())))
  return dict(net=net, compile_fwd=compile_fwd, compile_grad=compile_grad,
              jax=batch / t_jax, torch=batch / t_torch, jax_g=batch / t_jax_g,
              torch_g=batch / t_torch_g, diff=diff)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--nets", default="vgg,alex")
  a = p.parse_args()
  print(f"LPIPS at {a.size}², batch {a.batch} pairs, {jax.device_count()}× "
        f"{jax.devices()[0].device_kind}; pairs/s (best of {a.reps})")
  print(f"{'net':>5} {'compile fwd s':>13} {'compile grad s':>14} {'JAX fwd':>8} {'torch fwd':>9} "
        f"{'ratio':>6} {'JAX f+b':>8} {'torch f+b':>9} {'ratio':>6} {'max |Δ|':>8}")
  for net in a.nets.split(","):
    r = bench(net, a.size, a.batch, a.reps)
    print(f"{r['net']:>5} {r['compile_fwd']:>13.2f} {r['compile_grad']:>14.2f} {r['jax']:>8.2f} "
          f"{r['torch']:>9.2f} {r['jax'] / r['torch']:>6.2f} {r['jax_g']:>8.2f} "
          f"{r['torch_g']:>9.2f} {r['jax_g'] / r['torch_g']:>6.2f} {r['diff']:>8.1e}", flush=True)


if __name__ == "__main__":
  main()
