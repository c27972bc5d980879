"""``flatai synth``: write degraded examples with their truth, to look at what the model learns from.

Uses exactly the training generators (procedural sky → forward model), so
what you see is what the train step makes.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from flatai_jax import metrics
from flatai_jax.data import synthetic
from flatai_jax.io import images


def synth_key(config):
  """Base key of synth examples, distinct from training and evaluation keys."""
  return jax.random.fold_in(jax.random.key(config.seed), 2)


def make_examples(config, num: int, full_frame: bool = False) -> dict[str, np.ndarray]:
  """``num`` examples in linear units.

  Args:
    config: full config.
    num: number of examples.
    full_frame: render the whole virtual sensor (``config.data.sensor_hw``)
      instead of training crops.
  Returns:
    dict of ``(num, H, W, C) float32``: ``observed``, ``clean``, ``F``, ``G``.
  """
  crop_hw = tuple(config.data.sensor_hw) if full_frame else None
  offset = np.zeros(2, np.float32) if full_frame else None

  @jax.jit
  def one(key):
    clean, coords = synthetic.procedural_example(key, config, crop_hw, offset)
    deg = synthetic.degrade_example(key, clean, coords, config)
    return {"observed": deg["observed"], "clean": clean, "F": deg["F"], "G": deg["G"]}

  keys = synthetic.example_keys(synth_key(config), 0, np.arange(num, dtype=np.int32))
  outs = [jax.device_get(one(keys[i])) for i in range(num)]
  return {k: np.stack([o[k] for o in outs]) for k in outs[0]}


def write_examples(config, output_dir, num: int, full_frame: bool = False) -> list[Path]:
  """Writes ``NNNN_{observed,clean,F,G}.fits`` and ``contact_sheet.png``; returns the FITS paths."""
  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  ex = make_examples(config, num, full_frame)
  paths = []
  for i in range(num):
    for name in ("observed", "clean", "F", "G"):
      p = out / f"{i:04d}_{name}.fits"
      images.write_image(p, ex[name][i], history=f"flatai synth {name}, task={config.task}, "
                         f"seed={config.seed}, example={i}")
      paths.append(p)
  metrics.save_sample_grid(out / "contact_sheet.png",
                           {"observed": ex["observed"], "clean": ex["clean"], "F": ex["F"],
                            "G": ex["G"]}, max_rows=min(num, 8))
  (out / "synth_config.json").write_text(json.dumps(json.loads(config.to_json_best_effort()),
                                                    indent=2))
  return paths
