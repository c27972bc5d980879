"""The pure training step: degrade on device → model → objective → optax update.

``train_step(state, indices) -> (state, metrics)`` is a pure function of a
:class:`TrainState` pytree; NNX split/merge happens only at its boundary.
``flatai_jax.train`` jits it once with shardings from ``flatai_jax.sharding``.
"""
from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics
from flax import nnx

from flatai_jax.data import synthetic
from flatai_jax.losses.objective import objective
from flatai_jax.models import build_model


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds of the model: step, parameters, optimizer state."""
  step: jax.Array  # int32 scalar
  params: nnx.State  # float32 parameters
  opt_state: optax.OptState


def base_keys(seed: int):
  """(data_key, init_key) derived from the config seed."""
  root = jax.random.key(seed)
  return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)


def make_optimizer(config) -> optax.GradientTransformation:
  """Global-norm clipping of the true gradients, then AdamW on a warmup-cosine schedule."""
  o = config.optim
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
      decay_steps=max(config.train.steps, o.warmup_steps + 1), end_value=o.learning_rate * 0.01)
  return optax.chain(optax.clip_by_global_norm(o.clip_norm),
                     optax.adamw(schedule, weight_decay=o.weight_decay))


def split_model(config):
  """``(graphdef, abstract-free params)`` of a freshly initialised model."""
  _, init_key = base_keys(config.seed)
  model = build_model(config, nnx.Rngs(params=init_key))
  return nnx.split(model, nnx.Param)


def init_state(config, tx) -> tuple[nnx.GraphDef, TrainState]:
  """Initial state (call under ``jax.jit`` with ``out_shardings`` to create it sharded)."""
  graphdef, params = split_model(config)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return graphdef, state


def abstract_train_state(config, tx):
  """``(graphdef, ShapeDtypeStruct TrainState)`` without allocating parameters."""
  holder = {}

  def init():
    graphdef, state = init_state(config, tx)
    holder["graphdef"] = graphdef
    return state

  abstract = jax.eval_shape(init)
  return holder["graphdef"], abstract


def metric_collection(config):
  """clu collection of averaged scalars for this task's loss terms."""
  names = ["loss", "clean_l1", "grad_norm"]
  if config.degrade.apply_flat:
    names += ["log_f_l1", "g_l1", "pedestal_l1"]
  return clu_metrics.Collection.create(
      **{n: clu_metrics.Average.from_output(n) for n in names})


def forward(graphdef, params, batch):
  """Model predictions for a prepared batch (see ``synthetic.make_batch``)."""
  model = nnx.merge(graphdef, params)
  return model(batch["observed"], batch["coords"], batch["noise"])


def train_step(state: TrainState, indices: jax.Array, *, graphdef, tx, config):
  """One optimisation step.

  Args:
    state: current TrainState.
    indices: ``(B,) int32`` global example indices, sharded over the batch axes.
  Returns:
    new state, clu metric collection (device arrays; read them on report steps).
  """
  data_key, _ = base_keys(config.seed)
  batch = synthetic.make_batch(data_key, state.step, indices, config)

  def loss_fn(params):
    pred = forward(graphdef, params, batch)
    return objective(pred, batch, config.loss)

  (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  terms["grad_norm"] = optax.global_norm(grads)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metric_collection(config).single_from_model_output(**terms)


def bind_train_step(graphdef, tx, config):
  """``train_step`` with its static parts bound, ready for ``jax.jit``."""
  return functools.partial(train_step, graphdef=graphdef, tx=tx, config=config)
