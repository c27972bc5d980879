"""The aberration model (``configs/psf.py``): the physics deconvolution run inside the training
step (``deconvolve.sharpen_traced`` against the host's ``sharpen``), the noise σ shared by both
(``noise.second_difference_sigma``), the deconvolved training pair, and the correction path —
the fitted field, RL, the learned cleanup, and a flat model chained before it (``combined``),
through the API and the files it writes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flatai_jax import correct
from flatai_jax.data import synthetic
from flatai_jax.evaluation import star_field
from flatai_jax.io import images
from flatai_jax.physics import deconvolve, noise, normalize, optics
from flatai_jax.train_step import split_model


def _psf_config(**overrides):
  """``configs/psf.py:tiny``: the shipped design on 32-px crops, 3 RL steps in the batch."""
  from configs.psf import get_config
  c = get_config("tiny")
  c.data.crop_size = 64
  c.degrade.psf.oversample = 2
  c.model.deconvolve_iterations = 3
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def _stars(hw=(128, 128), seed=0):
  """``(H, W, 1) float32``: a sky of 10, σ = 1, six stars blurred by a 3-px Gaussian."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:hw[0], :hw[1]]
  img = 10.0 + rng.normal(0.0, 1.0, hw)
  for x, y in rng.uniform(16, min(hw) - 16, (6, 2)):
    img += 300.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.3 ** 2))
  return img[..., None].astype(np.float32)


@pytest.mark.parametrize("sigma", [0.01, 1.0, 100.0])
def test_noise_sigma_is_one_definition_on_host_and_device(sigma):
  """The same σ from NumPy (``star_detect.sky_noise``'s path) and from JAX (the in-step RL)."""
  rng = np.random.default_rng(3)
  plane = 10.0 + rng.normal(0.0, sigma, (200, 200))
  data = plane - np.median(plane)
  host = noise.second_difference_sigma(plane, data)
  device = float(jax.jit(noise.second_difference_sigma)(jnp.asarray(plane), jnp.asarray(data)))
  assert abs(host / sigma - 1.0) < 0.03, host / sigma
  assert abs(device / host - 1.0) < 1e-4, (device, host)


@pytest.mark.parametrize("kept", [0.0, 0.1, 0.5])
def test_traced_sharpen_is_the_host_sharpen(kept):
  """In a trace (sky from the median, σ in JAX) the same RL, target and restoration rule as
  ``sharpen`` with ``deconvolve.restoration(kept)`` (the correction's): they differ by the two
  sky and σ estimates only, with the corners' round blur too. The rule: all of
  ``RETAIN_SIGMA`` retained and no compensation where nothing is kept; none retained above
  ``RETAIN_SIGMA²``, the compensation then the split's share of the variance."""
  image = _stars()
  # wider towards the corners: RL leaves its round blur there (deconvolve.rounding), both ways
  psfs = np.stack([np.stack([deconvolve.gaussian_psf(3.0 + 0.6 * (abs(i - 1) + abs(j - 1)), 15)
                             for j in range(3)]) for i in range(3)])
  target = deconvolve.gaussian_psf(1.5, 15)
  retain, compensation = deconvolve.restoration(kept)
  split = deconvolve.SPLIT_VARIANCE
  expected = {0.0: (deconvolve.RETAIN_SIGMA, 0.0), 0.5: (0.0, split / (split + 0.5))}
  if kept in expected:
    np.testing.assert_allclose((retain, compensation), expected[kept], atol=1e-7)
  host, iters, _ = deconvolve.sharpen(image, psfs, target, retain=retain,
                                      compensation=compensation,
                                      round_blur=deconvolve.rounding(psfs))
  traced = np.asarray(jax.jit(lambda im, v: deconvolve.sharpen_traced(
      im, jnp.asarray(psfs), target, deconvolve.MAX_ITER, v))(jnp.asarray(image), kept))
  print(f"{iters} RL iterations; max |traced − host| {np.abs(traced - host).max():.3f} σ")
  assert iters > 3
  assert np.abs(traced - host).max() < 0.01 * (host.max() - 10.0), np.abs(traced - host).max()
  np.testing.assert_allclose(traced.sum(), image.sum(), rtol=2e-3)


def test_training_pair_is_deconvolved_input_and_truth_through_the_target():
  """``model.input = 'deconvolved'``: the batch's input is the degraded crop deconvolved (its
  flux kept), the truth the clean crop through the target PSF (flux kept); both normalised
  with the input's offset and scale."""
  c = _psf_config()
  batch = jax.jit(lambda i: synthetic.make_batch(jax.random.key(0), jnp.int32(0), i, c))(
      jnp.arange(2, dtype=jnp.int32))
  seen = normalize.denormalize(batch["observed"], batch["offset"], batch["scale"])
  truth = normalize.denormalize(batch["clean"], batch["offset"], batch["scale"])
  assert seen.shape == truth.shape == (2, 64, 64, 1)
  assert np.all(np.isfinite(seen)) and np.all(np.isfinite(truth))
  # the same sky within the noise, the same total light within a few per cent (RL and the
  # target both keep flux; the noise and the crop's reflected border do not quite)
  np.testing.assert_allclose(np.sum(seen, axis=(1, 2, 3)), np.sum(truth, axis=(1, 2, 3)),
                             rtol=0.05)
  t = deconvolve.target_psf("diffraction", c.degrade.psf)
  assert abs(float(optics.blur(jnp.ones((32, 32, 1)), jnp.asarray(t)[None, None]).mean())
             - 1.0) < 1e-5


def _untrained(config):
  """An untrained model of ``config``: its zero-initialised head returns the input unchanged."""
  graphdef, params = split_model(config)
  return correct.Corrector(config, graphdef, params, 0, "untrained")


def test_combined_correction_writes_fields_and_psf_field(tmp_path, monkeypatch):
  """The shipped flat model chained before an untrained aberration model (whose cleanup is the
  identity): F, G and confidence from the flat model, the corrected frame exactly the physics
  deconvolution of the flat-corrected frame, and the PSF field files beside them."""
  from flatai_jax import correct_psf
  if not (correct.DEFAULT_MODEL / "model.json").is_file():
    pytest.skip("the shipped flat model is not in this install")
  psf_model = _untrained(_psf_config())
  flat_model = correct.load()
  chained = correct.Corrector(psf_model.config, psf_model.graphdef, psf_model.params, 0,
                              "untrained", flat=flat_model)
  assert chained.task == "combined"
  seen = []  # the physics correction the chain ran (a spy: the real function runs)
  physics = correct_psf.correct_physics
  monkeypatch.setattr(correct_psf, "correct_physics",
                      lambda *a, **k: seen.append(physics(*a, **k)) or seen[-1])
  field = star_field.make(256, 0, cfg=star_field.optics_cfg())
  path = tmp_path / "field.fits"
  images.write_image(path, field.observed[..., None].astype(np.float32))
  report = chained.correct_file(path, out_dir=tmp_path, print_fn=lambda *a, **k: None)
  for key in ("corrected", "F", "G", "confidence", "psf", "psf_json", "psf_field", "preview"):
    assert key in report["outputs"] and (tmp_path / report["outputs"][key]).is_file(), key
  assert report["stars"] >= 20 and report["rl_iterations"] > 0
  written, _ = images.read_image(tmp_path / report["outputs"]["corrected"])
  f_written, _ = images.read_image(tmp_path / report["outputs"]["F"])
  np.testing.assert_allclose(written, seen[0].deconvolved, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(f_written, flat_model.correct(field.observed).F, rtol=1e-6)
  with pytest.raises(ValueError, match="cannot apply --task=bad"):
    chained.correct(field.observed, task="bad")


def test_bounded_residual_moves_no_pixel_beyond_the_bound():
  """``model.residual_bound = b``: however large the head's output, ``|clean − input| < b·σ``
  with σ the median of the crop's noise map; an untrained head changes nothing."""
  from flatai_jax.models import forward
  c = _psf_config(**{"model.residual_bound": 2.0})
  graphdef, params = split_model(c)
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 1))
  noise_map = jnp.abs(jax.random.normal(jax.random.key(2), x.shape)) + 0.5
  batch = {"observed": x, "coords": jnp.zeros((2, 64, 64, 2)), "noise": noise_map}
  np.testing.assert_array_equal(forward(graphdef, params, batch)["clean"], x)
  kernel = params["head"]["kernel"]
  kernel[...] = 50.0 * jax.random.normal(jax.random.key(3), kernel[...].shape)
  change = np.abs(np.asarray(forward(graphdef, params, batch)["clean"] - x))
  sigma = np.median(np.asarray(noise_map), axis=(1, 2), keepdims=True)
  assert np.all(change < 2.0 * sigma + 1e-6) and change.max() > 1.5 * sigma.min(), change.max()


def test_the_shipped_cleanup_moves_no_light_in_or_out_of_a_star(monkeypatch):
  """The shipped cleanup's change is flux-neutral above 11 px (``correct.CLEANUP_FLUX_RADIUS``:
  its box mean is taken off). Summed over a 21-px box around each star (the evaluation's
  10-px aperture), the network's raw change adds 8–13 % of the star's light (it fills the
  surroundings' dip); the shipped change 0.9–3.4 %, a fifth of it on average."""
  corrector = correct.load(task="psf")
  frame = _stars((96, 96), seed=3)
  shipped = corrector.cleanup(frame)
  monkeypatch.setattr(noise, "box_mean", lambda x, r: jnp.zeros_like(x))
  raw = corrector.cleanup(frame)
  assert shipped.shape == frame.shape and shipped.dtype == np.float32
  plane = frame[..., 0]
  peaks = np.argwhere((plane > 40) & (plane == np.maximum.reduce(
      [np.roll(plane, s, a) for s in (-1, 0, 1) for a in (0, 1)])))
  rows = []
  for y, x in peaks:
    if 12 <= min(y, x) and max(y, x) <= 83:
      box = (slice(y - 10, y + 11), slice(x - 10, x + 11))
      light = float((plane[box] - 10.0).sum())
      rows.append([float((out - frame)[..., 0][box].sum()) / light for out in (shipped, raw)])
  rows = np.abs(np.array(rows))
  assert len(rows) >= 4, rows
  assert rows[:, 0].max() < 0.04, rows
  assert rows[:, 0].mean() < 0.3 * rows[:, 1].mean(), rows
