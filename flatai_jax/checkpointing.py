"""Checkpoints: the only module that imports orbax.

Two kinds of folder:

- a *training* checkpoint: one Orbax step folder ``<workdir>/checkpoints/<step>/``
  with three items: ``state`` (TrainState pytree), ``data_iter`` (the data
  position, JSON) and ``config`` (the resolved config, JSON). Saves are
  asynchronous; Orbax writes each step to a temporary folder and renames it
  when complete, so a checkpoint cut short by a crash is never seen as the latest.
- an *inference* checkpoint (``export_inference``): ``config.json``,
  ``model.json`` (step, format) and ``params/`` (the evaluation parameters
  only, an Orbax PyTree). Shipped models are of this kind.

``restore_params`` reads the parameters of either kind without building an
optimizer: from a training checkpoint it restores only ``state.params`` (or
``state.ema_params`` when kept), never the optimizer state.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp

from flatai_jax import config_args, config_validate
from flatai_jax.io.atomic import write_atomic

ITEMS = ("state", "data_iter", "config")


def checkpoint_dir(workdir: str | Path) -> Path:
  return Path(workdir).absolute() / "checkpoints"


def create_manager(workdir, max_to_keep: int = 3, async_save: bool = True,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """Orbax CheckpointManager rooted at ``<workdir>/checkpoints``."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), item_names=ITEMS, options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict,
         config: ml_collections.ConfigDict, force: bool = False) -> bool:
  """Saves (asynchronously) state, data position and config at ``step``."""
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(json.loads(config.to_json_best_effort()))), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores the latest (or given) step onto the shardings of ``abstract_state``.

  Args:
    abstract_state: pytree of ``jax.ShapeDtypeStruct`` with ``.sharding`` —
      the target layout, which may differ from the one that saved it.
  Returns:
    ``(state, data_state)``, or ``None`` when there is no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data_iter=ocp.args.JsonRestore()))
  return restored["state"], restored["data_iter"]


def latest_step(workdir) -> int | None:
  if not checkpoint_dir(workdir).exists():
    return None
  with create_manager(workdir, read_only=True, async_save=False) as m:
    return m.latest_step()


INFERENCE_FORMAT = "flatai-inference-1"


def is_inference(path) -> bool:
  """Whether ``path`` is an exported inference checkpoint (``export_inference``)."""
  return (Path(path) / "model.json").is_file() and (Path(path) / "params").is_dir()


def export_inference(path, params, config: ml_collections.ConfigDict, step: int) -> Path:
  """Writes an inference checkpoint: parameters and config only (no optimizer, no data state).

  The folder is assembled under a temporary name and renamed (``io.atomic``),
  so a reader never sees half of it. Returns the folder.
  """
  host = jax.tree.map(lambda x: jax.device_get(x), params)

  def write(tmp: Path):
    tmp.mkdir()
    ocp.PyTreeCheckpointer().save(tmp / "params", args=ocp.args.PyTreeSave(host))
    (tmp / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    (tmp / "model.json").write_text(json.dumps({"format": INFERENCE_FORMAT, "step": int(step)})
                                    + "\n")

  return write_atomic(Path(path).absolute(), write)


def restore_params(path, abstract_params, step: int | None = None):
  """Parameters only, from an inference or a training checkpoint.

  Args:
    path: inference checkpoint folder, or a run directory (``--workdir``).
    abstract_params: ``ShapeDtypeStruct`` pytree of the parameters
      (``models.abstract_params``); leaves with ``.sharding`` are restored onto
      it, others onto the first device.
    step: training step (run directories only); default the latest.
  Returns:
    ``(params, step)``. From a training checkpoint: the EMA parameters when the
    run kept them, else the live ones; the optimizer state is never read.
  """
  path = Path(path).absolute()  # Orbax refuses relative paths
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=getattr(x, "sharding", None) or dev), abstract_params)
  checkpointer = ocp.PyTreeCheckpointer()
  if is_inference(path):
    meta = json.loads((path / "model.json").read_text())
    restored = checkpointer.restore(path / "params", args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
    return restored, int(meta["step"])
  step = latest_step(path) if step is None else step
  if step is None:
    raise FileNotFoundError(f"{checkpoint_dir(path)}: no checkpoint found")
  state_dir = checkpoint_dir(path) / str(step) / "state"
  if not state_dir.is_dir():
    raise FileNotFoundError(f"{state_dir}: no checkpoint at step {step}")
  tree = checkpointer.metadata(state_dir).item_metadata.tree
  key = "ema_params" if tree.get("ema_params") is not None else "params"
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item={key: target}, restore_args={key: ocp.checkpoint_utils.construct_restore_args(target)},
      partial_restore=True))
  return restored[key], int(step)


def load_config(workdir, step: int | None = None) -> ml_collections.ConfigDict:
  """The config saved with a checkpoint (the latest by default), or an inference checkpoint's.

  The saved values are merged over today's default config of the same task and
  size (``with_defaults``), so a checkpoint written before a knob existed gets
  that knob's default; the result is validated (``config_validate.validate``).
  """
  if is_inference(workdir):
    return with_defaults(json.loads((Path(workdir) / "config.json").read_text()))
  if not checkpoint_dir(workdir).is_dir():
    raise FileNotFoundError(f"{workdir}: neither a run directory (no checkpoints/) nor an "
                            "exported model (no model.json)")
  with create_manager(workdir, read_only=True, async_save=False) as m:
    step = m.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{checkpoint_dir(workdir)}: no checkpoint found")
    raw = m.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  return with_defaults(raw)


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A saved config (JSON dict) over the default config of its task and size, validated.

  The one place that reconciles old checkpoints with new knobs: code reads
  every field directly and never repeats a default. Knobs the defaults no
  longer have are kept as saved.
  """
  saved = _tuples(saved)
  words = ",".join(saved[k] for k in ("task", "size") if k in saved)
  try:
    config = config_args.default_config(words)
  except ValueError:  # a size that no longer exists: the task's defaults
    config = config_args.default_config(saved["task"])
  if config is None:
    config = ml_collections.ConfigDict(saved)
  else:
    config.update(saved)
  config_validate.validate(config)
  return config


def _tuples(obj):
  """JSON lists back to tuples, as the config files write them."""
  if isinstance(obj, dict):
    return {k: _tuples(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return tuple(_tuples(v) for v in obj)
  return obj


def abstract_with_shardings(state, shardings):
  """``ShapeDtypeStruct`` pytree carrying the target shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
