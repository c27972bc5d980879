"""Checkpoints: the only module that imports orbax.

A checkpoint is one Orbax step folder ``<workdir>/checkpoints/<step>/`` with
three items: ``state`` (TrainState pytree), ``data_iter`` (the data position,
JSON) and ``config`` (the resolved config, JSON). Saves are asynchronous;
Orbax writes each step to a temporary folder and renames it when complete,
so a checkpoint cut short by a crash is never seen as the latest.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp

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


def load_config(workdir, step: int | None = None) -> ml_collections.ConfigDict:
  """The config saved with a checkpoint (the latest by default)."""
  with create_manager(workdir, read_only=True, async_save=False) as m:
    step = m.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{checkpoint_dir(workdir)}: no checkpoint found")
    raw = m.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  return ml_collections.ConfigDict(_tuples(raw))


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
