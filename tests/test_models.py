"""The Attention Residual U-Net: parameter counts against PyTorch FlatAI, heads, sharding, precision, Zernike head."""
import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

from configs.default import get_config
from flatai_jax import sharding
from flatai_jax.data import synthetic
from flatai_jax.losses import objective as obj
from flatai_jax.losses import physics as loss_physics
from flatai_jax.models import build_model
from flatai_jax.models.unet import AttentionResUNet, node_sampling_weights
from flatai_jax.physics import convolve, optics
from flatai_jax.physics.forward import invert_flat
from flatai_jax.train_step import base_keys

TINY = (8, 16, 32)


# --- PyTorch FlatAI's network, counted layer by layer from its unet_model.py -
def _original_resblock(cin, cout):  # conv3×3 (no bias) + GN, conv3×3 + GN, 1×1 shortcut + GN
  return 9 * cin * cout + 9 * cout * cout + 4 * cout + (cin * cout + 2 * cout if cin != cout else 0)


def _original_gate(c, inter):  # W_g, W_x: 1×1 conv + BN; psi: 1×1 conv + BN(1)
  return 2 * (c * inter + 3 * inter) + inter + 3


def original_params(cin, cout, up):
  """PyTorch FlatAI's AttentionResUNet, widths 64…1024. ``up='resblock'``: the old (40.1 M) decoder,
  Upsample → ResBlock(2w, w) → gate → ResBlock(2w, w); ``up='conv'``: the latest (36.3 M),
  Upsample → conv3×3 (no bias) + BN → gate → ResBlock(2w, w)."""
  w = (64, 128, 256, 512, 1024)
  n = _original_resblock(cin, 64) + sum(_original_resblock(w[i], w[i + 1]) for i in range(4))
  for i in range(4):
    up_params = _original_resblock(w[i + 1], w[i]) if up == "resblock" else 9 * w[i + 1] * w[i] + 2 * w[i]
    n += up_params + _original_gate(w[i], w[i] // 2) + _original_resblock(2 * w[i], w[i])
  return n + 64 * cout + cout


def count(cfg):
  m = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))


def original_equivalent_config():
  """1 channel in (the image only), 1 out (psf task: clean = observed + residual), widths
  64…1024, the old decoder: PyTorch FlatAI's 40.1 M network."""
  c = get_config("psf,base")
  c.model.coord_inputs = False
  c.model.noise_input = False
  c.model.up_block = "resblock"
  return c


def test_parameter_counts_match_the_pytorch_original():
  assert round(original_params(1, 1, "resblock") / 1e5) == 401  # ORIGINAL_NOTES: old version, 40.1 M
  assert round(original_params(4, 3, "conv") / 1e5) == 363  # latest version: 4 in, 3 out, 36.3 M
  n_old = count(original_equivalent_config())
  assert abs(n_old / original_params(1, 1, "resblock") - 1) < 0.01, n_old
  assert abs(n_old / 40.1e6 - 1) < 0.01
  n_base = count(get_config("flat,base"))  # image + x + y + noise in; F, G, confidence out
  assert abs(n_base / original_params(4, 3, "conv") - 1) < 0.01, n_base
  assert 34e6 < n_base < 44e6
  assert count(get_config("flat,quickstart")) <= 2e6
  assert count(get_config("combined,quickstart")) <= 2e6
  # the norm choice changes only the norm parameters (LayerNorm: as many as GroupNorm)
  c = get_config("flat,base")
  c.model.norm = "layer"
  assert count(c) == n_base
  c.model.norm = "none"
  norms = nnx.eval_shape(lambda: build_model(get_config("flat,base"), nnx.Rngs(0)))
  n_norm = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(nnx.state(norms, nnx.Param))
               if "norm" in jax.tree_util.keystr(path))
  assert count(c) == n_base - n_norm and n_norm > 0


# --- Tiny models for numbers -------------------------------------------------
def tiny_model(task="combined", seed=0, **kw):
  with nnx.use_eager_sharding(False):  # as build_model: shardings come from flatai_jax.sharding
    return AttentionResUNet(1, task, TINY, groups=4, rngs=nnx.Rngs(params=seed), **kw)


def inputs(n=8, hw=32, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  observed = jax.random.normal(k1, (n, hw, hw, 1)) * 0.5 + 1.0
  coords = jax.random.uniform(k2, (n, hw, hw, 2), minval=-1.0, maxval=1.0)
  noise = jax.random.uniform(k3, (n, hw, hw, 1), minval=0.01, maxval=0.1)
  return observed, coords, noise


def randomize_head(model, scale, seed=1):
  """Replaces the zero-initialised output head by random weights (an 'untrained but not zero' model)."""
  k = jax.random.key(seed)
  model.head.kernel[...] = scale * jax.random.normal(k, model.head.kernel.shape)
  if getattr(model, "zernike", None) is not None:
    model.zernike.out.kernel[...] = scale * jax.random.normal(
        jax.random.fold_in(k, 1), model.zernike.out.kernel.shape)


@jax.jit
def _apply(graphdef, state, observed, coords, noise):
  return nnx.merge(graphdef, state)(observed, coords, noise)


def apply(model, *args):
  graphdef, state = nnx.split(model)
  return _apply(graphdef, state, *args)


def test_zero_initialised_head_is_the_identity():
  x = inputs(n=2)
  out = apply(tiny_model("combined"), *x)
  np.testing.assert_array_equal(out["F"], 1.0)
  np.testing.assert_array_equal(out["G"], 0.0)
  np.testing.assert_array_equal(out["residual"], 0.0)
  np.testing.assert_array_equal(out["confidence"], 0.5)
  np.testing.assert_array_equal(out["clean"], x[0])


@pytest.mark.parametrize("task", ["flat", "psf", "combined"])
def test_heads_shapes_and_ranges(task):
  x = inputs(n=2)
  model = tiny_model(task, f_max=3.0)
  randomize_head(model, 30.0)  # large weights: tanh and sigmoid saturate, bounds are reached
  out = apply(model, *x)
  expected = {"flat": {"F", "G", "confidence"}, "psf": {"residual"},
              "combined": {"F", "G", "confidence", "residual"}}[task] | {"clean"}
  assert set(out) == expected
  for v in out.values():
    assert v.shape == (2, 32, 32, 1) and v.dtype == jnp.float32
  if "F" in out:
    f = np.asarray(out["F"])
    assert f.min() >= (1 / 3) * (1 - 1e-6) and f.max() <= 3 * (1 + 1e-6)
    assert f.min() < 1 / 2.9 and f.max() > 2.9  # the bound is what limits it
    conf = np.asarray(out["confidence"])
    assert conf.min() >= 0.0 and conf.max() <= 1.0 and 0.05 < conf.mean() < 0.95
  flat_part = invert_flat(x[0], out["F"], out["G"]) if "F" in out else x[0]
  clean = flat_part + out["residual"] if "residual" in out else flat_part
  np.testing.assert_allclose(out["clean"], clean, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(clean))))
  if task == "flat":  # (observed − G) / F exactly, i.e. observed = clean·F + G
    g_max = float(jnp.max(jnp.abs(out["G"])))  # large (saturated head): float32 cancellation
    np.testing.assert_allclose(out["clean"] * out["F"] + out["G"], x[0], atol=2e-7 * g_max + 1e-6)


def test_inputs_can_be_switched_off():
  """The image-only model ignores coordinates and noise map; the default one uses them."""
  x = inputs(n=2)
  other = (x[0], -x[1], 2 * x[2])
  for use, changes in ((False, False), (True, True)):
    model = tiny_model("psf", coord_inputs=use, noise_input=use)
    randomize_head(model, 1.0)
    assert model.stem.kernel.shape[2] == (4 if use else 1)
    diff = float(jnp.max(jnp.abs(apply(model, *x)["clean"] - apply(model, *other)["clean"])))
    assert (diff > 1e-4) == changes, diff


@nnx.use_eager_sharding(False)
def test_norm_layers_normalise_what_they_claim():
  from flatai_jax.models.unet import _norm
  x = jax.random.normal(jax.random.key(3), (2, 4, 4, 8)) * 3.0 + 5.0
  y = _norm("layer", 8, 4, dtype=jnp.float32, rngs=nnx.Rngs(0))(x)
  np.testing.assert_allclose(jnp.mean(y, -1), 0.0, atol=1e-5)  # per pixel, over channels
  np.testing.assert_allclose(jnp.std(y, -1), 1.0, atol=1e-4)
  y = _norm("group", 8, 4, dtype=jnp.float32, rngs=nnx.Rngs(0))(x)
  g = y.reshape(2, 16, 4, 2)  # 4 groups of 2 channels, per example over space
  np.testing.assert_allclose(jnp.mean(g, (1, 3)), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.std(g, (1, 3)), 1.0, atol=1e-4)
  np.testing.assert_array_equal(_norm("none", 8, 4, dtype=jnp.float32, rngs=nnx.Rngs(0))(x), x)
  with pytest.raises(ValueError, match="unknown norm"):
    _norm("batch", 8, 4, dtype=jnp.float32, rngs=nnx.Rngs(0))


def test_remat_gives_the_same_function_and_gradients():
  x = inputs(n=1, hw=16)
  outs = []
  for remat in (False, True):
    with nnx.use_eager_sharding(False):  # the 'resblock' decoder remats its up blocks too
      model = AttentionResUNet(1, "psf", (4, 8), groups=2, up_block="resblock", norm="layer",
                               remat=remat, rngs=nnx.Rngs(params=0))
    randomize_head(model, 1.0)
    graphdef, state = nnx.split(model)
    loss = lambda s: jnp.mean(nnx.merge(graphdef, s)(*x)["clean"] ** 2)  # noqa: E731
    outs.append(jax.jit(jax.value_and_grad(loss))(state))
  (l0, g0), (l1, g1) = outs
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  assert float(optax_norm(g0)) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g0, g1)


# --- Sharding -----------------------------------------------------------------
def test_data_sharded_forward_on_8_devices_equals_one_device():
  assert jax.device_count() == 8
  x = inputs(n=8)
  model = tiny_model("combined")
  randomize_head(model, 0.1)  # outputs O(1), as early in training
  graphdef, state = nnx.split(model)
  single = _apply(graphdef, state, *x)  # everything on device 0
  cfg = tiny_config().mesh
  mesh = sharding.make_mesh(cfg)
  xs = jax.device_put(x, sharding.batch_sharding(mesh))
  rep = jax.device_put(state, sharding.replicated(mesh))
  sharded = _apply(graphdef, rep, *xs)
  assert len(sharded["clean"].sharding.device_set) == 8
  for k in single:
    np.testing.assert_allclose(sharded[k], single[k], rtol=1e-5, atol=1e-5)


def test_fsdp_sharded_forward_equals_replicated():
  x = inputs(n=8)
  c = tiny_config("combined", **{"mesh.data": 4, "mesh.fsdp": 2})
  c.model.bottleneck_heads = 2
  c.model.zernike_head = True
  model = build_model(c, nnx.Rngs(params=0))
  randomize_head(model, 0.1)
  graphdef, state = nnx.split(model)
  mesh = sharding.make_mesh(c.mesh)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  shardings = sharding.state_shardings(state, mesh, c.mesh.rules)
  specs = [s.spec for s in jax.tree.leaves(shardings)]
  n_sharded = sum("fsdp" in tuple(s) for s in specs)
  assert n_sharded > len(specs) // 3, (n_sharded, len(specs))  # kernels, biases, attention
  fsdp_state = jax.device_put(state, shardings)
  attn = fsdp_state["mid_attn"]["attn"]["query"]["kernel"][...]
  assert attn.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
  xs = jax.device_put(x, sharding.batch_sharding(mesh))
  sharded = _apply(graphdef, fsdp_state, *xs)
  replicated = _apply(graphdef, jax.device_put(state, sharding.replicated(mesh)), *xs)
  assert set(sharded) == {"F", "G", "confidence", "residual", "clean", "zernike"}
  for k in sharded:
    np.testing.assert_allclose(sharded[k], replicated[k], rtol=1e-5, atol=1e-5)


# --- Precision ----------------------------------------------------------------
BF16_TOL = 5e-2  # relative RMS error of each output; measured 1.9–2.3 % (see the test)


def test_bfloat16_compute_matches_float32():
  """bf16 keeps 8 significant bits: each rounding is off by at most u = 2⁻⁹ ≈ 0.2 %. The tiny net
  has L ≈ 17 bf16 layers between input and head (stem, 3 + 2 residual blocks of 2 convs, gates,
  up-convs, attention), so the output error lies between the random-walk √L·u ≈ 0.8 % and the
  worst case L·u ≈ 3.3 % (norms can amplify it a little). Measured on two seeds: 1.9–2.3 % relative
  RMS on every output (relative to what the net adds to its input). 5 % is that worst case with
  margin; the lower bound 1e-4 proves the bf16 path is really taken. Parameters stay float32 and
  every output is float32."""
  x = inputs(n=4)
  outs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = tiny_model("combined", dtype=dtype, bottleneck_heads=2)
    randomize_head(model, 0.3)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    outs[dtype] = apply(model, *x)
  for k, ref in outs[jnp.float32].items():
    low = outs[jnp.bfloat16][k]
    assert low.dtype == jnp.float32
    signal = ref - jnp.mean(ref) if k != "clean" else ref - x[0]  # compare what the net adds
    rel = float(jnp.sqrt(jnp.mean((low - ref) ** 2) / jnp.mean(signal ** 2)))
    assert 1e-4 < rel < BF16_TOL, (k, rel)


# --- The physics-informed Zernike head -------------------------------------
def test_node_sampling_weights_interpolate_at_the_psf_nodes():
  for image, feat, count in ((32, 32, 3), (128, 8, 3), (64, 8, 2), (48, 3, 4)):
    w = node_sampling_weights(image, feat, count)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    centres = (np.arange(feat) + 0.5) * image / feat - 0.5  # pixel position of each cell centre
    nodes = convolve.node_positions(image, count)
    inside = (nodes >= centres[0]) & (nodes <= centres[-1])
    np.testing.assert_allclose((w @ centres)[inside], nodes[inside], atol=1e-4)  # a ramp: exact
    np.testing.assert_allclose(w[~inside].max(1), 1.0)  # beyond the outer cells: the edge cell
  np.testing.assert_allclose(node_sampling_weights(32, 32, 2), np.eye(32)[[0, 31]])
  np.testing.assert_allclose(node_sampling_weights(32, 32, 3)[1, 15:17], [0.5, 0.5])


@functools.lru_cache(maxsize=1)
def _psf_batch_cached():
  # small optics for speed: 32-sample pupil, 2×2 sub-pixels, 15-px kernels (2×2 nodes per crop)
  c = tiny_config("psf", **{"degrade.noise.enabled": False, "model.zernike_head": True,
                            "loss.zernike_psf": 1.0, "degrade.psf.n_pupil": 32,
                            "degrade.psf.oversample": 2, "degrade.psf.kernel_size": 15})
  idx = jnp.arange(2, dtype=jnp.int32)
  b = jax.jit(lambda i: synthetic.make_batch(base_keys(0)[0], 0, i, c))(idx)

  @jax.jit
  def true_coefficients(i, coords):
    # the optics key of each example, as data.synthetic and physics.forward derive it
    keys = synthetic.example_keys(base_keys(0)[0], 0, i)
    opt_keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, 1), 5))(keys)
    return jax.vmap(lambda k, xy: optics.node_coefficients(
        k, xy, c.degrade.psf, c.data.sensor_hw[0] / c.data.sensor_hw[1]))(opt_keys, coords)

  return c, b, true_coefficients(idx, b["coords"])


def _psf_batch():
  c, b, truth = _psf_batch_cached()
  return copy.deepcopy(c), b, truth


def test_zernike_loss_is_zero_for_the_true_coefficients_and_grows_with_error():
  c, b, truth = _psf_batch()
  assert truth.shape == (2, 2, 2, c.degrade.psf.num_modes)
  loss = jax.jit(lambda z: loss_physics.zernike_psf_l1({"zernike": z}, b, c.degrade.psf))
  assert float(loss(truth)) < 1e-5
  bump = jnp.zeros_like(truth).at[..., 3].set(1.0).at[..., 7].set(0.5)  # defocus + coma
  values = [float(loss(truth + eps * bump)) for eps in (0.02, 0.05, 0.15)]
  assert 1e-3 < values[0] < values[1] < values[2] < 2.0, values
  assert float(loss(truth.at[..., 0].add(0.3))) < 1e-5  # piston changes no PSF: not penalised
  terms = jax.jit(lambda z: obj.objective({"clean": b["clean"], "zernike": z}, b,
                                          {"zernike_psf": 1.0}, psf_cfg=c.degrade.psf)[1])(truth)
  assert set(terms) == {"zernike_psf", "loss"} and float(terms["loss"]) < 1e-5
  assert "zernike_psf" in obj.term_names(c)
  c.model.zernike_head = False
  assert "zernike_psf" not in obj.term_names(c)


def test_zernike_head_is_trained_through_the_optics():
  """The head's coefficients reach the loss through the re-rendered PSFs: the gradient of the
  loss of a zero-initialised head points towards the truth (first step lowers the loss)."""
  c, b, truth = _psf_batch()
  model = build_model(c, nnx.Rngs(params=0))
  graphdef, state = nnx.split(model)
  out = _apply(graphdef, state, b["observed"], b["coords"], b["noise"])
  assert out["zernike"].shape == (2, 2, 2, 11) and float(jnp.max(jnp.abs(out["zernike"]))) == 0.0

  def loss(s):
    pred = nnx.merge(graphdef, s)(b["observed"], b["coords"], b["noise"])
    return obj.objective(pred, b, {"zernike_psf": 1.0}, psf_cfg=c.degrade.psf)[0]

  value_and_grad = jax.jit(jax.value_and_grad(loss))
  value, grads = value_and_grad(state)
  assert float(jnp.max(jnp.abs(grads["zernike"]["out"]["kernel"][...]))) > 0
  stepped = jax.tree.map(lambda p, d: p - 1e-2 * d / (optax_norm(grads) + 1e-12), state, grads)
  assert float(value_and_grad(stepped)[0]) < float(value)


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))
