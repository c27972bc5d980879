"""Host-side training loop: mesh, sharded state, jitted step, periodic work, preemption.

``train_and_evaluate(config, workdir)`` is the whole job. A run restarted on
the same workdir resumes from its latest checkpoint, including the data
position (a pure function of the step for procedural skies). A run owns its
workdir (``run_lock``): a second run started on it is refused at once.

Each report step logs the loss terms with ``learning_rate`` (the schedule's
value for the step's last update, computed on the host) and ``steps_per_sec``.
"""
from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import jax
import numpy as np
from absl import logging

from flatai_jax import checkpointing, config_validate, metrics, run_lock, sharding
from flatai_jax.data import indices as data_indices
from flatai_jax.data.pipeline import Pipeline
from flatai_jax.evaluation import crops
from flatai_jax.io.atomic import write_text_atomic
from flatai_jax.losses import lpips
from flatai_jax.train_step import (
  abstract_train_state,
  bind_train_step,
  init_state,
  learning_rate_schedule,
  make_optimizer,
  nonfinite_count,
)


class _Preemption:
  """Records SIGTERM/SIGINT so the loop can save and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    logging.warning("signal %d received: saving a checkpoint and stopping", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _write_config(workdir: Path, config) -> None:
  if jax.process_index() != 0:
    return
  write_text_atomic(workdir / "config.json", config.to_json_best_effort(indent=2))


def _is_time(step: int, every: int, total: int) -> bool:
  return step == total or (every > 0 and step % every == 0)


def train_and_evaluate(config, workdir, devices=None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint).

  Args:
    config: the full config.
    workdir: run directory.
    devices: devices of the mesh (default: all devices of all processes).
  Returns:
    The last reported training scalars and, if run, the final evaluation.
  Raises:
    run_lock.WorkdirInUse: another live run holds ``workdir``.
    data.image_dataset.DatasetError: ``data.source='images'`` and no finished dataset.
  """
  devices = jax.devices() if devices is None else list(devices)
  config_validate.validate(config, len(devices))  # before the workdir is touched
  with run_lock.hold(workdir, jax.process_index()):
    return _train_and_evaluate(config, Path(workdir), devices)


def _train_and_evaluate(config, workdir: Path, devices) -> dict:
  """``train_and_evaluate`` once the workdir is held."""
  # --- Input (first: a missing dataset fails before any work) ---------------
  pipeline = Pipeline(config, jax.process_index(), jax.process_count())
  total = int(config.train.steps)
  batch = int(config.train.batch_size)
  # --- Mesh and shardings -------------------------------------------------
  mesh = sharding.make_mesh(config.mesh, devices)
  is_lead = jax.process_index() == 0
  say = print if is_lead else (lambda *a, **k: None)
  say(f"mesh {dict(mesh.shape)} over {mesh.size} {jax.devices()[0].platform} devices "
      f"({jax.process_count()} process(es))")
  tx = make_optimizer(config)
  schedule = learning_rate_schedule(config)
  graphdef, abstract = abstract_train_state(config, tx)
  state_sh = sharding.state_shardings(abstract, mesh, config.mesh.rules)
  batch_sh = sharding.batch_sharding(mesh)

  # --- State: restore or initialise, sharded from birth ---------------------
  manager = checkpointing.create_manager(workdir, config.train.max_to_keep)
  restored = checkpointing.restore(manager, checkpointing.abstract_with_shardings(abstract, state_sh))
  if restored is not None:
    state, data_state = restored
    start = int(jax.device_get(state.step))
    pipeline.restore_state(workdir, start)
    if int(data_state.get("next_step", start)) != start:
      raise RuntimeError(f"{workdir}: checkpoint data position {data_state} does not match "
                         f"step {start}")
    say(f"resumed from step {start} of {workdir}")
  elif config.train.init_params:  # a fine-tune: given parameters, a fresh optimizer
    src = config.train.init_params
    want = checkpointing.abstract_with_shardings(abstract, state_sh).params
    try:
      params, src_step = checkpointing.restore_params(src, want)
    except (FileNotFoundError, ValueError, KeyError) as e:
      raise ValueError(f"{src}: train.init_params does not hold parameters of this config's "
                       f"model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    state = jax.jit(lambda p: init_state(config, tx, p)[1], out_shardings=state_sh)(params)
    start = 0
    say(f"parameters from {src} (its step {src_step}); optimizer and schedule from step 0")
  else:
    state = jax.jit(lambda: init_state(config, tx)[1], out_shardings=state_sh)()
    start = 0
  _write_config(workdir, config)
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
  say(f"model: {config.task} task, {n_params / 1e6:.3f} M parameters; "
      f"training steps {start}..{total}, global batch {batch}")

  nets = lpips.load_nets(config.loss, config.perceptual)  # pretrained loss nets, or None
  nets = () if nets is None else (jax.device_put(nets, sharding.replicated(mesh)),)
  step_fn = jax.jit(bind_train_step(graphdef, tx, config, batch_sh),
                    in_shardings=(state_sh, batch_sh) + (sharding.replicated(mesh),) * len(nets),
                    out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  sample_fn = crops.make_eval_fn(graphdef, config, mesh, with_images=True)
  sample_indices = crops.eval_indices(0, config.eval.batch_size, mesh)

  writer = metrics.MetricWriter(workdir, enabled=is_lead)
  report = metrics.ProgressReporter(total, config.train.log_every, print_fn=say)
  report(start)
  last = {}
  acc = None
  step = start
  profile = tuple(config.train.profile_steps)
  with _Preemption() as preempt:
    while step < total:
      if profile and step == profile[0] and is_lead:
        jax.profiler.start_trace(str(workdir / "profile"))
      local = pipeline.next_batch(step)
      state, m = step_fn(state, sharding.host_batch_to_global(local, mesh), *nets)
      acc = m if acc is None else acc.merge(m)
      step += 1
      if profile and step == profile[1] and is_lead:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        say(f"profile of steps {profile[0]}..{profile[1]} written to {workdir / 'profile'}")
      if _is_time(step, config.train.log_every, total) or preempt.requested:
        last = {k: float(v) for k, v in jax.device_get(acc.compute()).items()}
        acc = None
        skipped = int(jax.device_get(nonfinite_count(state.opt_state)))
        if skipped >= config.optim.max_nonfinite or not all(np.isfinite(v) for v in last.values()):
          raise FloatingPointError(
              f"non-finite loss or gradients in {skipped} consecutive steps up to step {step}; "
              f"last metrics {last}. Lower optim.learning_rate or check the data.")
        last["learning_rate"] = float(schedule(step - 1))  # of the update that made `step`
        rate = report(step, {"loss": last["loss"], "lr": last["learning_rate"]})
        if rate is not None:
          last["steps_per_sec"] = rate
        writer.write_scalars(step, last)
      if _is_time(step, config.train.sample_every, total):
        b, pred, _ = sample_fn(state.eval_params(), sample_indices)  # every process computes
        b, pred = jax.device_get((b, pred))
        cols = {"observed": b["observed"], "prediction": pred["clean"], "truth": b["clean"]}
        if "F" in pred:
          cols.update({"F pred": pred["F"], "F true": b["F"], "G pred": pred["G"], "G true": b["G"]})
        if "psf" in b:
          cols["PSF true"] = metrics.psf_mosaic(b["psf"])
        if is_lead:
          metrics.save_sample_grid(workdir / "samples" / f"step_{step:06d}.png", cols)
          metrics.save_sample_grid(workdir / "samples.png", cols)
          metrics.save_loss_curve(workdir / "loss_curve.png", writer.jsonl_path)
      if config.train.eval_every and step % config.train.eval_every == 0 and step != total:
        ev = crops.evaluate_params(graphdef, state.eval_params(), config, mesh)
        writer.write_scalars(step, ev, prefix="eval")
      if _is_time(step, config.train.checkpoint_every, total) or preempt.requested:
        pipeline.save_state(workdir, step)
        checkpointing.save(manager, step, state, data_indices.iterator_state(step, batch),
                           config, force=True)
      if preempt.requested:
        logging.warning("stopped at step %d after a signal; rerun to resume", step)
        break
  manager.wait_until_finished()
  manager.close()
  result = {"step": step, "train": last}
  if step == total and start < total:
    ev = crops.evaluate_params(graphdef, state.eval_params(), config, mesh)
    writer.write_scalars(step, ev, prefix="eval")
    result["eval"] = ev
    if is_lead:
      crops.save_metric_chart(workdir / "eval_final.png", {"step": step, **ev})
      write_text_atomic(workdir / "eval_final.json", json.dumps({"step": step, **ev}, indent=2))
      metrics.save_loss_curve(workdir / "loss_curve.png", writer.jsonl_path)
  writer.close()
  return result
