"""The pure training step: degrade on device → model → objective → optax update.

``train_step(state, inputs) -> (state, metrics)`` is a pure function of a
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

from flatai_jax import rng
from flatai_jax.data import synthetic
from flatai_jax.losses.objective import objective, term_names
from flatai_jax.models import forward
from flatai_jax.models import split_model as _split_model


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds of the model: step, parameters, optimizer state."""
  step: jax.Array  # int32 scalar
  params: nnx.State  # float32 parameters
  opt_state: optax.OptState
  ema_params: nnx.State | None = None  # EMA of params when config.optim.ema_decay > 0

  def eval_params(self):
    """The parameters to evaluate and export: the EMA if kept, else the live ones."""
    return self.params if self.ema_params is None else self.ema_params


def base_keys(seed: int):
  """(data_key, init_key) derived from the config seed."""
  root = jax.random.key(seed)
  return jax.random.fold_in(root, rng.DATA), jax.random.fold_in(root, rng.INIT)


def learning_rate_schedule(config) -> optax.Schedule:
  """Learning rate of update ``i`` (0-based): linear warmup from 0 over
  ``optim.warmup_steps`` updates to ``optim.learning_rate``, then cosine decay to 1 % of it
  at ``train.steps``. Pure, so the host evaluates it for logging without the device."""
  o = config.optim
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
      decay_steps=max(config.train.steps, o.warmup_steps + 1), end_value=o.learning_rate * 0.01)


def make_optimizer(config) -> optax.GradientTransformation:
  """Global-norm clipping of the true (float32, unscaled) gradients, then AdamW on
  :func:`learning_rate_schedule`; an update with a NaN/Inf gradient is skipped and counted
  (``optax.apply_if_finite``; skipped updates do not advance the schedule)."""
  o = config.optim
  inner = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                      optax.adamw(learning_rate_schedule(config), weight_decay=o.weight_decay))
  return optax.apply_if_finite(inner, max_consecutive_errors=o.max_nonfinite)


def nonfinite_count(opt_state) -> jax.Array:
  """Consecutive skipped (non-finite) updates so far."""
  return opt_state.notfinite_count


def split_model(config):
  """``(graphdef, params)`` of a freshly initialised model, from the config seed."""
  _, init_key = base_keys(config.seed)
  return _split_model(config, init_key)


def init_state(config, tx, params=None) -> tuple[nnx.GraphDef, TrainState]:
  """Initial state (call under ``jax.jit`` with ``out_shardings`` to create it sharded):
  freshly initialised parameters, or ``params`` (``train.init_params``) with a fresh optimizer."""
  graphdef, fresh = split_model(config)
  params = fresh if params is None else params
  ema = jax.tree.map(jnp.copy, params) if config.optim.ema_decay > 0 else None
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ema_params=ema)
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
  names = ["loss", "grad_norm", "skipped", *term_names(config)]
  return clu_metrics.Collection.create(
      **{n: clu_metrics.Average.from_output(n) for n in names})


def train_step(state: TrainState, inputs, nets=None, *, graphdef, tx, config,
               batch_sharding=None):
  """One optimisation step (``config.optim.grad_accum`` micro-batches, one update).

  Args:
    state: current TrainState.
    inputs: ``(B,) int32`` global example indices, or the dict of
      ``data.pipeline.Pipeline.next_batch`` (indices plus image crops), every
      leaf sharded over the batch axes on its leading axis.
    nets: pretrained loss nets (``losses.lpips.load_nets``), replicated; None unless
      ``loss.lpips`` or ``loss.style`` > 0. An argument, so not baked into the compiled step.
    batch_sharding: optional sharding of a micro-batch's inputs.
  Returns:
    new state, clu metric collection (device arrays; read them on report steps).
    Loss terms of a skipped (non-finite) step are logged as 0 and ``skipped`` as 1.
  """
  data_key, _ = base_keys(config.seed)
  accum = int(config.optim.grad_accum)

  def loss_and_grads(params, micro):
    if batch_sharding is not None:
      micro = jax.lax.with_sharding_constraint(micro, batch_sharding)
    batch = synthetic.make_batch(data_key, state.step, micro, config, augment=True)

    def loss_fn(p):
      return objective(forward(graphdef, p, batch), batch, config.loss, nets, config.perceptual,
                       config.degrade.psf)

    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  if accum == 1:
    (_, terms), grads = loss_and_grads(state.params, inputs)
  else:
    b = jax.tree.leaves(inputs)[0].shape[0]
    if b % accum:
      raise ValueError(f"batch {b} not divisible by grad_accum={accum}")
    micro = jax.tree.map(  # (accum, B/accum, ...): micro-batch j takes every accum-th example
        lambda x: jnp.swapaxes(x.reshape((b // accum, accum) + x.shape[1:]), 0, 1), inputs)

    def body(carry, idx):
      (_, t), g = loss_and_grads(state.params, idx)
      return jax.tree.map(jnp.add, carry, (t, g)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        loss_and_grads, state.params, jax.tree.map(lambda x: x[0], micro)))
    ((_, terms), grads), _ = jax.lax.scan(body, zeros, micro)
    terms, grads = jax.tree.map(lambda x: x / accum, (terms, grads))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = opt_state.last_finite
  ema = state.ema_params
  if ema is not None:
    d = config.optim.ema_decay
    ema = jax.tree.map(lambda e, p: jnp.where(finite, d * e + (1.0 - d) * p, e), ema, params)
  terms["grad_norm"] = optax.tree.norm(grads)
  terms = {k: jnp.where(finite, v, 0.0) for k, v in terms.items()}
  terms["skipped"] = 1.0 - finite.astype(jnp.float32)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema)
  return new_state, metric_collection(config).single_from_model_output(**terms)


def bind_train_step(graphdef, tx, config, batch_sharding=None):
  """``train_step`` with its static parts bound, ready for ``jax.jit``."""
  return functools.partial(train_step, graphdef=graphdef, tx=tx, config=config,
                           batch_sharding=batch_sharding)
