"""Artifact-generator throughput: the jitted JAX generator vs a plain numpy implementation of the same
model, in the same run, and what the generator adds to a quickstart train step.

  PYTHONPATH=. python benchmarks/generators.py [--sizes 256,512] [--batch 8] [--reps 3]

The generator is what the train step adds to a clean image: draw F, G and a sensor
(``physics.flat``, ``physics.noise``), apply ``(clean·F + G)`` with saturation, add
Poisson–Gaussian noise (``physics.forward.degrade`` without the PSF). The numpy reference renders
the same parameters (drawn once by JAX, outside its timing) with the same formulas, pixel PRNU and
noise from numpy's generator and the blotch octaves upsampled by ``scipy.ndimage.zoom``; its
deterministic part (vignetting × dust × specks, and G) is checked against JAX's.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from configs.default import get_config
from flatai_jax.data import synthetic
from flatai_jax.physics import flat, forward, geometry, noise, sky
from flatai_jax.train_step import base_keys, bind_train_step, init_state, make_optimizer

# --- numpy reference of physics.flat / physics.noise -------------------------------------------

def np_vignetting(p, x, y, sensor):
  h, w = sensor
  half_diag = 0.5 * np.hypot(h, w)
  dx, dy = (x - p.centre[0]) * w / 2, (y - p.centre[1]) * h / 2
  c, s = np.cos(p.asymmetry_angle), np.sin(p.asymmetry_angle)
  u = (dx * c + dy * s) / (1 + p.asymmetry)
  v = (-dx * s + dy * c) / (1 - p.asymmetry)
  r = np.hypot(u, v) / half_diag
  log_corner = np.log1p(-min(p.strength, 0.95))
  c_nat, c_mech = np.exp((1 - p.mechanical_fraction) * log_corner), np.exp(
      p.mechanical_fraction * log_corner)
  natural = (1 + (c_nat ** -0.5 - 1) * r * r) ** -2
  ramp = np.maximum(r - p.mechanical_onset, 0) / (1 - p.mechanical_onset)
  return np.clip(natural * (1 - (1 - c_mech) * ramp * ramp), 0.05, 1.0)


def np_dust(p, x, y, cfg, sensor):
  h, w = sensor
  pix = cfg.pixel_size_um * 1e-3
  out = np.ones_like(x)
  big_l = p.exit_pupil_mm / pix
  ax, ay = p.centre[0] * w / 2, p.centre[1] * h / 2
  xp, yp = x * w / 2, y * h / 2
  for i in np.flatnonzero(p.dust_active):
    d = p.dust_distance_mm[i] / pix
    grow = big_l / (big_l - d)
    cx = ax + (p.dust_xy[i, 0] * w / 2 - ax) * grow
    cy = ay + (p.dust_xy[i, 1] * h / 2 - ay) * grow
    radius = 0.5 * (big_l / p.focal_ratio) * d / (big_l - d)
    rho = np.hypot(xp - cx, yp - cy)
    sig = lambda t: 0.5 * (1 + np.tanh(0.5 * t))  # the logistic sigmoid, without exp overflow
    disc = sig((radius - rho) / max(p.dust_softness[i] * radius, 0.3))
    inner = p.obstruction * radius
    hole = sig((inner - rho) / max(p.dust_softness[i] * inner, 0.3)) if p.obstruction > 0 else 0.0
    out *= 1 - np.clip(disc - hole, 0, 1) * p.dust_depth[i]
  return out


def np_specks(p, x, y, sensor):
  h, w = sensor
  out = np.ones_like(x)
  for i in np.flatnonzero(p.speck_active):
    r2 = ((x - p.speck_xy[i, 0]) * w / 2) ** 2 + ((y - p.speck_xy[i, 1]) * h / 2) ** 2
    out += p.speck_gain[i] * np.exp(-0.5 * r2 / p.speck_sigma_px[i] ** 2)
  return out


def np_g(p, x, y, sensor):
  q = p.quadratic
  parts = [np.full_like(x, p.level), p.slope[0] * x + p.slope[1] * y
           + q[0] * x * x + q[1] * y * y + q[2] * x * y,
           p.dome_amplitude * np.exp((p.dome_direction[0] * x + p.dome_direction[1] * y - 1)
                                     / p.dome_scale)]
  aspect = sensor[0] / sensor[1]
  dist_g = np.hypot(x - p.glow_xy[0], (y - p.glow_xy[1]) * aspect)
  parts.append(p.glow_amplitude * np.exp(-dist_g / p.glow_scale))
  return np.maximum(np.einsum("khw,kc->hwc", np.stack(parts), p.tint), 0.0)


def np_fractal(rng, hw, scales):
  h, w = hw
  total = np.zeros(hw, np.float32)
  for s in scales:
    coarse = rng.standard_normal((h // s + 3, w // s + 3), dtype=np.float32)
    total += ndimage.zoom(coarse, s, order=3)[s:s + h, s:s + w]
  return (total - total.mean()) / (total.std() + 1e-6)


def np_generator(rng, clean, p, sensor_p, coords, cfg, sensor, saturation):
  """One example: the same model as ``forward.degrade`` (no PSF), in numpy."""
  x, y = coords[..., 0], coords[..., 1]
  f_field = (np_vignetting(p, x, y, sensor) * np_dust(p, x, y, cfg, sensor)
             * np_specks(p, x, y, sensor))[..., None]
  f_field = f_field * (1 + p.prnu_sigma * rng.standard_normal(clean.shape, dtype=np.float32))
  f_field = f_field * (1 + p.blotch_sigma * np_fractal(rng, x.shape, cfg.prnu_blotch_scales_px)
                       )[..., None]
  g_field = np_g(p, x, y, sensor)
  signal = np.minimum(clean * f_field + g_field, saturation)
  var = signal / sensor_p.full_well_e + (sensor_p.read_noise_e / sensor_p.full_well_e) ** 2
  noisy = signal + np.sqrt(var) * rng.standard_normal(signal.shape, dtype=np.float32)
  return noisy, f_field, g_field


# --- timings -----------------------------------------------------------------------------------

def _time(fn, reps):
  jax.block_until_ready(fn())
  t = time.perf_counter()
  for _ in range(reps):
    jax.block_until_ready(fn())
  return (time.perf_counter() - t) / reps


def bench_generator(size: int, batch: int, reps: int):
  config = get_config("flat")
  config.degrade.apply_psf = False
  sensor = tuple(config.data.sensor_hw)
  cfg = config.degrade.flat
  keys = jax.random.split(jax.random.key(0), batch)
  offsets = jnp.asarray(np.random.default_rng(0).integers(0, 1500, (batch, 2)), jnp.float32)
  coords = jax.vmap(lambda o: geometry.frame_coords(o, (size, size), jnp.asarray(sensor)))(offsets)
  clean = jax.jit(jax.vmap(lambda k: sky.render_sky(k, (size, size), 1, config.sky)))(keys)

  gen = jax.jit(jax.vmap(lambda k, c, xy: forward.degrade(k, c, xy, config.degrade, sensor)))
  t_jax = _time(lambda: gen(keys, clean, coords)["observed"], reps)
  sky_fn = jax.jit(jax.vmap(lambda k: sky.render_sky(k, (size, size), 1, config.sky)))
  t_sky = _time(lambda: sky_fn(keys), reps)

  params = jax.device_get(jax.vmap(lambda k: flat.draw_flat_params(k, cfg, 1))(keys))
  sensors = jax.device_get(jax.vmap(lambda k: noise.draw_noise_params(k, config.degrade.noise))(keys))
  clean_np, coords_np = np.asarray(clean), np.asarray(coords)  # float32, like JAX
  rng = np.random.default_rng(0)
  take = lambda tree, i: type(tree)(*(np.asarray(v)[i] for v in tree))

  def numpy_batch():
    return [np_generator(rng, clean_np[i], take(params, i), take(sensors, i), coords_np[i], cfg,
                         sensor, config.degrade.saturation) for i in range(batch)]

  t0 = time.perf_counter()
  for _ in range(reps):
    ref = numpy_batch()
  t_np = (time.perf_counter() - t0) / reps

  # deterministic parts agree: V·D·S and G from the same parameters
  i = 0
  p_np, x, y = take(params, i), coords_np[i][..., 0], coords_np[i][..., 1]
  f_det_np = (np_vignetting(p_np, x, y, sensor) * np_dust(p_np, x, y, cfg, sensor)
              * np_specks(p_np, x, y, sensor))
  p_j = jax.tree.map(lambda v: v[i], jax.vmap(lambda k: flat.draw_flat_params(k, cfg, 1))(keys))
  f_det_j = (flat.vignetting(p_j, coords[i], sensor) * flat.dust_shadows(p_j, coords[i], cfg, sensor)
             * flat.specks(p_j, coords[i], sensor))
  g_j = flat.additive_field(p_j, coords[i], cfg, sensor)
  diff = max(float(np.abs(f_det_np - np.asarray(f_det_j)).max()),
             float(np.abs(np_g(p_np, x, y, sensor) - np.asarray(g_j)).max()))
  del ref
  return {"size": size, "batch": batch, "jax": batch / t_jax, "numpy": batch / t_np,
          "sky": batch / t_sky, "max_abs_diff": diff}


def bench_train_step(steps: int):
  """Seconds per quickstart train step, and per jitted batch with and without the generator."""
  c = get_config("flat,quickstart")
  tx = make_optimizer(c)
  graphdef, state = init_state(c, tx)
  idx = jnp.arange(c.train.batch_size, dtype=jnp.int32)
  step = jax.jit(bind_train_step(graphdef, tx, c), donate_argnums=0)
  holder = {"s": state}

  def run():
    holder["s"], m = step(holder["s"], idx)
    return m

  data_key = base_keys(c.seed)[0]
  with_gen = jax.jit(lambda i: synthetic.make_batch(data_key, 0, i, c, augment=True))
  c_off = get_config("flat,quickstart")
  c_off.degrade.apply_flat = False
  c_off.degrade.noise.enabled = False
  without = jax.jit(lambda i: synthetic.make_batch(data_key, 0, i, c_off, augment=True))
  fns = {"step": run, "with": lambda: with_gen(idx), "without": lambda: without(idx)}
  times = {k: [] for k in fns}
  for f in fns.values():
    jax.block_until_ready(f())
  for _ in range(steps):  # interleaved, median: robust to load from other processes
    for k, f in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(f())
      times[k].append(time.perf_counter() - t)
  med = {k: float(np.median(v)) for k, v in times.items()}
  return med["step"], med["with"], med["without"]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="256,512")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--steps", type=int, default=10)
  a = ap.parse_args()
  print(f"device: {jax.device_count()}× {jax.devices()[0].device_kind}")
  print(f"{'size':>5} {'batch':>5} {'JAX img/s':>10} {'numpy img/s':>12} {'ratio':>7} "
        f"{'sky img/s':>10} {'max |JAX−numpy|':>16}")
  for size in map(int, a.sizes.split(",")):
    r = bench_generator(size, a.batch, a.reps)
    print(f"{r['size']:>5} {r['batch']:>5} {r['jax']:>10.1f} {r['numpy']:>12.2f} "
          f"{r['jax'] / r['numpy']:>6.1f}× {r['sky']:>10.1f} {r['max_abs_diff']:>16.2e}", flush=True)
  t_step, t_with, t_without = bench_train_step(a.steps)
  gen = max(t_with - t_without, 0.0)
  print(f"quickstart train step {t_step * 1e3:.1f} ms; batch with generator {t_with * 1e3:.1f} ms, "
        f"without {t_without * 1e3:.1f} ms → generator {gen * 1e3:.1f} ms = "
        f"{gen / max(t_step - gen, 1e-9):.1%} added to the step without it")


if __name__ == "__main__":
  main()
