"""Training throughput: full jitted train step (on-device data + model + update) vs the same step
on a pre-made batch (model + update only), measured in the same run.

  PYTHONPATH=. python benchmarks/train.py [--sizes quickstart,base] [--steps 5] [--batch N] [--crop N]

Prints steps/s, images/s and the share of the step spent making data on device. On a GPU it also
prints MFU from XLA's FLOP count (peak from --peak_tflops, e.g. 989 for H100 bf16 dense).
"""
from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import optax

from configs.default import get_config
from flatai_jax import sharding
from flatai_jax.data import synthetic
from flatai_jax.losses import lpips
from flatai_jax.losses.objective import objective
from flatai_jax.models import forward
from flatai_jax.train_step import base_keys, bind_train_step, init_state, make_optimizer


def _time(fn, args, steps):
  out = fn(*args)
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def bench(size: str, steps: int, batch: int | None, crop: int | None, dtype: str | None,
          peak_tflops: float | None):
  c = get_config(f"flat,{size}")
  if batch:
    c.train.batch_size = batch
  if crop:
    c.data.crop_size = crop
  if dtype:
    c.model.dtype = dtype
  b = c.train.batch_size
  mesh = sharding.make_mesh(c.mesh)
  tx = make_optimizer(c)
  graphdef, state = init_state(c, tx)
  indices = jax.device_put(jnp.arange(b, dtype=jnp.int32), sharding.batch_sharding(mesh))
  nets = lpips.load_nets(c.loss, c.perceptual)  # pretrained loss nets (None if off)
  t0 = time.perf_counter()
  full = jax.jit(bind_train_step(graphdef, tx, c), donate_argnums=0)
  lowered = full.lower(state, indices, nets)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
  if isinstance(flops, list):
    flops = flops[0].get("flops", float("nan"))

  holder = {"s": state}

  def step_full():
    holder["s"], m = compiled(holder["s"], indices, nets)
    return m

  t_full = _time(step_full, (), steps)
  batch_data = jax.jit(lambda i: synthetic.make_batch(base_keys(c.seed)[0], 0, i, c))(indices)

  @functools.partial(jax.jit, donate_argnums=0)
  def model_only(s, batch, nets):
    def loss_fn(p):
      return objective(forward(graphdef, p, batch), batch, c.loss, nets, c.perceptual,
                       c.degrade.psf)[0]
    g = jax.grad(loss_fn)(s.params)
    u, o = tx.update(g, s.opt_state, s.params)
    return s.replace(params=optax.apply_updates(s.params, u), opt_state=o)

  def step_model():
    holder["s"] = model_only(holder["s"], batch_data, nets)
    return holder["s"].step

  t_model = _time(step_model, (), steps)
  row = {"size": size, "crop": c.data.crop_size, "batch": b, "dtype": c.model.dtype,
         "device": f"{jax.device_count()}× {jax.devices()[0].device_kind}",
         "compile_s": compile_s, "steps_per_s": 1 / t_full, "images_per_s": b / t_full,
         "model_only_images_per_s": b / t_model, "data_share": max(0.0, 1 - t_model / t_full)}
  if peak_tflops:
    row["mfu"] = flops / t_full / (peak_tflops * 1e12 * jax.device_count())
  return row


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--sizes", default="quickstart,base")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--crop", type=int, default=None)
  p.add_argument("--dtype", default=None)
  p.add_argument("--peak_tflops", type=float, default=None)
  a = p.parse_args()
  print(f"{'size':>10} {'crop':>4} {'batch':>5} {'dtype':>8} {'compile s':>9} {'steps/s':>8} "
        f"{'img/s':>8} {'model-only img/s':>16} {'data share':>10} {'MFU':>6}  device")
  for size in a.sizes.split(","):
    r = bench(size, a.steps, a.batch, a.crop, a.dtype, a.peak_tflops)
    mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
    print(f"{r['size']:>10} {r['crop']:>4} {r['batch']:>5} {r['dtype']:>8} {r['compile_s']:>9.1f} "
          f"{r['steps_per_s']:>8.3f} {r['images_per_s']:>8.2f} {r['model_only_images_per_s']:>16.2f} "
          f"{r['data_share']:>10.1%} {mfu:>6}  {r['device']}", flush=True)


if __name__ == "__main__":
  main()
