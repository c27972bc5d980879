"""Model throughput: forward + backward images/s of the Flax U-Net vs PyTorch FlatAI's U-Net,
measured in the same run on the same inputs' shapes (1 JAX device; torch with its default threads).

  PYTHONPATH=. python benchmarks/model.py [--sizes quickstart,base] [--shapes 128x4,256x2]
      [--iters 2] [--torch old,latest] [--threads 1] [--dtype bfloat16] [--peak_tflops 989]

A shape ``SxB`` is an S² crop at batch B. The JAX loss is the L1 of the corrected image against a
target (heads of the ``flat`` task: F, G, confidence); torch's is the L1 of its output (``old``: the
PyTorch original's 40.1 M network, 1 in / 1 out; ``latest``: its 36.3 M network, 4 in / 3 out, the
architecture ``base`` rebuilds). Ratios are JAX / PyTorch old at the same shape. On an accelerator
``--peak_tflops`` adds MFU from XLA's FLOP count of the compiled step. ``--threads 1`` runs both
frameworks on one thread each (a fairer comparison on a CPU shared with other work).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if "--threads" in sys.argv:  # XLA reads its CPU thread flags once, before jax is imported
  _n = sys.argv[sys.argv.index("--threads") + 1]
  if _n == "1":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from configs.default import get_config  # noqa: E402
from flatai_jax.models import build_model  # noqa: E402


def _time(fn, iters):
  jax.block_until_ready(fn())  # warm-up (after compilation)
  t = time.perf_counter()
  for _ in range(iters):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / iters


def bench_jax(size, crop, batch, iters, dtype=None, remat=None):
  c = get_config(f"flat,{size}")
  if dtype:
    c.model.dtype = dtype
  if remat is not None:
    c.model.remat = remat
  graphdef, params = nnx.split(build_model(c, nnx.Rngs(params=0)), nnx.Param)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  keys = jax.random.split(jax.random.key(0), 3)
  shape = (batch, crop, crop, c.data.channels)
  observed = 1.0 + 0.1 * jax.random.normal(keys[0], shape)
  target = 1.0 + 0.1 * jax.random.normal(keys[1], shape)
  coords = jax.random.uniform(keys[2], (batch, crop, crop, 2), minval=-1.0, maxval=1.0)
  noise = jnp.full(shape, 0.01)

  def loss(p):
    out = nnx.merge(graphdef, p)(observed, coords, noise)
    return jnp.mean(jnp.abs(out["clean"] - target))

  t0 = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis() or {}
  flops = (cost[0] if isinstance(cost, list) else cost).get("flops", float("nan"))
  t = _time(lambda: compiled(params), iters)
  return {"name": f"jax {size}", "params": n_params, "crop": crop, "batch": batch,
          "dtype": c.model.dtype, "compile_s": compile_s, "images_per_s": batch / t,
          "flops": flops, "step_s": t}


def bench_torch(variant, crop, batch, iters, threads=None):
  import torch  # the bench extra

  from benchmarks.pytorch_original import VARIANTS, PyTorchUNet, num_params
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = PyTorchUNet(variant).train()
  cin, cout = VARIANTS[variant]
  x = torch.randn(batch, cin, crop, crop)
  target = torch.randn(batch, cout, crop, crop)

  def step():
    model.zero_grad(set_to_none=True)
    loss = torch.mean(torch.abs(model(x) - target))
    loss.backward()
    return loss.detach()

  step()  # warm-up
  t = time.perf_counter()
  for _ in range(iters):
    step()
  t = (time.perf_counter() - t) / iters
  return {"name": f"PyTorch {variant}", "params": num_params(model), "crop": crop,
          "batch": batch, "dtype": "float32", "compile_s": 0.0, "images_per_s": batch / t,
          "flops": float("nan"), "step_s": t}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--sizes", default="quickstart,base")
  p.add_argument("--shapes", default="128x4,256x2", help="comma-separated CROPxBATCH")
  p.add_argument("--iters", type=int, default=2, help="timed iterations after one warm-up")
  p.add_argument("--torch", default="old,latest",
                 help="PyTorch FlatAI variants to time ('' = none)")
  p.add_argument("--dtype", default=None, help="JAX compute dtype (default: the config's)")
  p.add_argument("--remat", default=None, choices=(None, "true", "false"))
  p.add_argument("--threads", type=int, default=None,
                  help="1: one thread per framework (default: each framework's own default)")
  p.add_argument("--peak_tflops", type=float, default=None, help="per-device peak, for MFU")
  a = p.parse_args()
  shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
  remat = None if a.remat is None else a.remat == "true"
  print(f"device: {jax.devices()[0].device_kind} ({jax.device_count()} visible, 1 used), "
        f"threads: {a.threads or 'default'}, {os.cpu_count()} CPUs")
  print(f"{'model':>18} {'params':>8} {'crop':>4} {'batch':>5} {'dtype':>8} {'compile s':>9} "
        f"{'s/step':>7} {'img/s':>7} {'vs PyTorch old':>14} {'MFU':>6}")
  for crop, batch in shapes:
    rows = [bench_torch(v, crop, batch, a.iters, a.threads) for v in a.torch.split(",") if v]
    rows += [bench_jax(s, crop, batch, a.iters, a.dtype, remat) for s in a.sizes.split(",")]
    ref = next((r["images_per_s"] for r in rows if r["name"] == "PyTorch old"), None)
    for r in rows:
      ratio = f"{r['images_per_s'] / ref:.2f}×" if ref else "-"
      mfu = (f"{r['flops'] / r['step_s'] / (a.peak_tflops * 1e12):.1%}"
             if a.peak_tflops and r["flops"] == r["flops"] else "-")
      print(f"{r['name']:>18} {r['params'] / 1e6:>7.2f}M {r['crop']:>4} {r['batch']:>5} "
            f"{r['dtype']:>8} {r['compile_s']:>9.1f} {r['step_s']:>7.2f} {r['images_per_s']:>7.2f} "
            f"{ratio:>14} {mfu:>6}", flush=True)


if __name__ == "__main__":
  main()
