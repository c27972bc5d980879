"""ONNX export of a whole-frame model's network (``flatai export --format=onnx``).

Only the network runs in the ONNX graph: the binned frame on the working grid,
in its four flips, goes in; ``log F`` and ``G`` (linear, still flipped) come
out — exactly :func:`flatai_jax.correct.grid_fields`, whose input normalisation
(robust quantile offset and scale, noise map) is part of the graph. The host
does the rest in numpy: block-median binning, the flips, un-flipping, the mean,
median normalisation and upsampling. :data:`PREPROCESSING` describes those
steps; it is stored as JSON in the model's ``metadata_props`` under
``flatai.preprocessing`` (``examples/onnx_correct.py`` follows it). Needs the
optional ``jax2onnx`` and ``onnx`` packages (``pip install .[onnx]``).
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp

METADATA_KEY = "flatai.preprocessing"
INPUT_NAME = "grids"
OUTPUT_NAMES = ("log_f", "g")

PREPROCESSING = {
    "input": "grids: (4, gh, gw, C) float32, linear (not normalised: the graph normalises it "
             "by its own 1 %/99 % quantiles), the binned frame in its four flips",
    "outputs": {"log_f": "(4, gh, gw, C) float32, natural log of the flat F, per flip",
                "g": "(4, gh, gw, C) float32, additive background G in the input's units, "
                     "per flip"},
    "binning": "portrait frames (H > W) are transposed first; blocks of by = ceil(H/gh) x "
               "bx = ceil(W/gw) px after reflect-padding the frame evenly (pad_y = (gh*by - H)//2 "
               "before the first row, the rest after; the same for columns) to gh*by x gw*bx; each "
               "cell is the median of its block (NaN ignored; blocks of over 400 px may be "
               "subsampled every s = floor(sqrt(by*bx/400)) px from s//2); one plane per channel",
    "flips": ["identity", "left-right (axis 2 reversed)", "up-down (axis 1 reversed)",
              "both (axes 1 and 2 reversed)"],
    "postprocessing": "undo each flip on its output (each flip is its own inverse), take the mean "
                      "over the 4 flips, subtract the median over the grid (per channel) from "
                      "log F and from G (F keeps median 1, G median 0: the frame keeps its sky "
                      "level), upsample to the frame (cubic convolution between cell centres, "
                      "undo the transposition), corrected = (observed - G) / exp(log F)",
    "omitted": "flatai correct also weighs the network by the frame's structure and the flips' "
               "agreement, picks a safe strength and adds a robust smooth sky fit; the ONNX "
               "graph has none of that",
}


def export_onnx(checkpoint_dir, output, step: int | None = None) -> tuple[Path, int]:
  """Writes the network of a whole-frame model as an ONNX file (atomically).

  Args:
    checkpoint_dir: inference checkpoint or run directory of a whole-frame model
      (``config.data.whole_frame``).
    output: the ``.onnx`` file to write.
    step: checkpoint step; default: the latest.
  Returns:
    ``(path, step)``. The graph maps ``grids (4, gh, gw, C) float32`` to
    ``log_f, g`` of the same shape, ``(gh, gw) = config.data.sensor_hw``; static shapes.
  Raises:
    ValueError: a tile model (not whole-frame), or no flat outputs.
    ImportError: ``jax2onnx`` or ``onnx`` missing.
  """
  import onnx
  from jax2onnx import to_onnx

  from flatai_jax import correct
  from flatai_jax.io.atomic import write_atomic

  model = correct.load(checkpoint_dir, step)
  config = model.config
  if not config.data.whole_frame or config.task not in ("flat", "combined"):
    raise ValueError(f"{checkpoint_dir}: ONNX export needs a whole-frame flat model "
                     f"(configs/frame.py); this one is task={config.task}, "
                     f"whole_frame={bool(config.data.whole_frame)}")
  gh, gw = (int(v) for v in config.data.sensor_hw)
  channels = int(config.data.channels)
  graphdef, params = model.graphdef, model.params
  # A fresh closure, not correct.make_grid_fn: jax2onnx traces with patched primitives, and
  # a cached jit traced under them would fail when JAX runs it later in this process.
  proto = to_onnx(lambda grids: correct.grid_fields(graphdef, params, grids),
                  [jax.ShapeDtypeStruct((4, gh, gw, channels), jnp.float32)],
                  model_name="flatai_frame_model", input_names=[INPUT_NAME],
                  output_names=list(OUTPUT_NAMES))
  meta = {**PREPROCESSING, "grid_hw": [gh, gw], "channels": channels, "step": model.step,
          "checkpoint": str(checkpoint_dir), "task": "flat"}
  for key, value in ((METADATA_KEY, json.dumps(meta)), ("flatai.grid_hw", f"{gh},{gw}")):
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, value
  path = write_atomic(Path(output), lambda p: onnx.save(proto, str(p)))
  return path, model.step


def read_preprocessing(path) -> dict:
  """The ``flatai.preprocessing`` metadata of an exported ``.onnx`` file, as a dict."""
  import onnx
  proto = onnx.load(str(path), load_external_data=False)
  props = {p.key: p.value for p in proto.metadata_props}
  if METADATA_KEY not in props:
    raise ValueError(f"{path}: no {METADATA_KEY} metadata (not written by flatai export)")
  return json.loads(props[METADATA_KEY])
