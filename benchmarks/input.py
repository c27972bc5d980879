"""Input pipeline throughput (grain over the TFDS image dataset) vs what the train step consumes.

  PYTHONPATH=. python benchmarks/input.py [--images 24] [--size 1024] [--crop 128] [--workers 0,2]

Builds a temporary dataset of synthetic 16-bit FITS frames, then measures crops/s of
``data.pipeline.Pipeline`` for each worker count, and the images/s a quickstart-width train step
(on image data, same crop size) consumes on this machine, in the same run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from astropy.io import fits

from configs.default import get_config
from flatai_jax import sharding
from flatai_jax.data import image_dataset, pipeline
from flatai_jax.train_step import bind_train_step, init_state, make_optimizer


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--images", type=int, default=24)
  p.add_argument("--size", type=int, default=1024)
  p.add_argument("--crop", type=int, default=128)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--workers", default="0,2")
  p.add_argument("--steps", type=int, default=20)
  a = p.parse_args()
  tmp = Path(tempfile.mkdtemp())
  rng = np.random.default_rng(0)
  for i in range(a.images):
    fits.PrimaryHDU((rng.random((a.size, a.size)) * 60000).astype(np.uint16)).writeto(
        tmp / f"f{i}.fits")
  t = time.perf_counter()
  image_dataset.build_dataset(tmp, tmp / "tfds", min_size=a.crop)
  print(f"built {a.images} × {a.size}² frames in {time.perf_counter() - t:.1f} s")
  c = get_config("flat,quickstart")
  c.data.source, c.data.tfds_dir, c.data.crop_size = "images", str(tmp / "tfds"), a.crop
  c.predict.tile = a.crop
  c.train.batch_size = a.batch
  print(f"{'workers':>7} {'crops/s':>9}")
  for w in (int(x) for x in a.workers.split(",")):
    c.data.workers = w
    pipe = pipeline.Pipeline(c)
    pipe.next_batch(0)
    t = time.perf_counter()
    for s in range(1, a.steps + 1):
      pipe.next_batch(s)
    print(f"{w:>7} {a.batch * a.steps / (time.perf_counter() - t):>9.1f}", flush=True)
  c.data.workers = 0
  pipe = pipeline.Pipeline(c)
  mesh = sharding.make_mesh(c.mesh)
  tx = make_optimizer(c)
  graphdef, state = init_state(c, tx)
  step = jax.jit(bind_train_step(graphdef, tx, c), donate_argnums=0)
  batches = [sharding.host_batch_to_global(pipe.next_batch(s), mesh) for s in range(4)]
  state, m = step(state, batches[0])
  jax.block_until_ready(m)
  t = time.perf_counter()
  for b in batches[1:]:
    state, m = step(state, b)
  jax.block_until_ready(m)
  rate = a.batch * 3 / (time.perf_counter() - t)
  print(f"train step consumes {rate:.1f} images/s ({jax.devices()[0].platform}, quickstart width, "
        f"{a.crop}² crops, batch {a.batch})")


if __name__ == "__main__":
  main()
