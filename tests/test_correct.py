"""Full-frame correction through the API: plumbing against a direct forward pass, seams,
NaN masks, RGB and 16-bit inputs, FITS HDUs / compressed FITS / XISF properties kept."""
import jax
import numpy as np
import pytest
from astropy.io import fits

from flatai_jax import correct
from flatai_jax.io import images
from flatai_jax.models import forward, model_inputs
from flatai_jax.physics import geometry, normalize
from flatai_jax.train_step import split_model


def _corrector(tiny, task="flat", random_head=True, seed=0):
  """A tiny model; with ``random_head`` its zero-initialised head gets random weights,
  so F, G and the residual vary across the frame (a non-trivial, trained-like model)."""
  config = tiny(task)
  graphdef, params = split_model(config)
  if random_head:
    key = jax.random.key(seed)
    kernel = params["head"]["kernel"]
    kernel[...] = 0.3 * jax.random.normal(key, kernel[...].shape)
  return correct.Corrector(config, graphdef, params, 0, "test")


def _sky(shape, seed=0):
  rng = np.random.default_rng(seed)
  h, w = shape[:2]
  img = rng.gamma(4.0, 50.0, shape) + 1000.0 + np.linspace(0, 300, w)[None, :, None]
  return img.astype(np.float32)


def test_one_tile_equals_a_direct_forward_pass(tiny):
  """A frame that is one tile: tiling, padding, blending and denormalisation add nothing."""
  c = _corrector(tiny)
  image = _sky((32, 32, 1))
  out = c.correct(image, tile=32, overlap=0)

  @jax.jit
  def direct(params, x):
    inputs = model_inputs(x)
    coords = geometry.frame_coords(np.zeros(2, np.float32), (32, 32), np.float32([32, 32]))[None]
    pred = forward(c.graphdef, params, {**inputs, "coords": coords})
    return pred, normalize.fields_from_normalized(pred["clean"], pred["F"], pred["G"],
                                                  inputs["offset"], inputs["scale"])

  pred, (clean, f, g) = direct(c.params, image[None])
  span = float(image.max() - image.min())
  assert np.abs(np.asarray(pred["F"]) - 1).max() > 0.05  # the model really changes the image
  np.testing.assert_allclose(out.corrected, clean[0], atol=1e-4 * span)
  np.testing.assert_allclose(out.F, f[0], atol=1e-5)
  np.testing.assert_allclose(out.G, g[0], atol=1e-4 * span)


def test_no_seams_at_tile_borders(tiny):
  """The largest pixel-to-pixel step of F across tile borders is no larger than inside tiles."""
  c = _corrector(tiny)
  image = _sky((96, 128, 1), seed=1)
  tile, overlap = 32, 8
  f = c.correct(image, tile=tile, overlap=overlap).F[..., 0]
  pad, stride = overlap // 2, tile - overlap
  # tile edges in frame columns/rows: where one tile's window ends and the next starts
  edges_x = {x - pad for x in correct.tile_origins(128 + 2 * pad, tile, stride)[1:]}
  edges_x |= {x + tile - pad for x in correct.tile_origins(128 + 2 * pad, tile, stride)[:-1]}
  step_x = np.abs(np.diff(f, axis=1))  # step between column j and j+1
  border = [j for j in range(127) if j + 1 in edges_x or j in edges_x]
  inside = [j for j in range(127) if j not in border]
  assert step_x[:, border].max() <= step_x[:, inside].max()
  assert step_x[:, border].mean() <= 1.5 * step_x[:, inside].mean()


def test_nan_pixels_stay_nan_and_the_rest_is_untouched(tiny):
  c = _corrector(tiny, random_head=False)  # identity model: output must equal input
  image = _sky((64, 64, 1), seed=2)
  image[10:14, 20:30] = np.nan
  out = c.correct(image, tile=32, overlap=8)
  assert np.isnan(out.corrected).sum() == 40 and np.isnan(out.corrected[10:14, 20:30]).all()
  valid = ~np.isnan(image)
  np.testing.assert_allclose(out.corrected[valid], image[valid], rtol=1e-5)
  filled, mask = correct.fill_masked(image)
  assert mask.sum() == 40 and np.isfinite(filled).all()
  assert 1000 < filled[12, 25, 0] < 1600  # filled by the local background, not by zeros


def test_rgb_frame_with_a_mono_model_and_absolute_scale(tiny):
  c = _corrector(tiny)
  rgb = np.concatenate([_sky((64, 64, 1), s) * k for s, k in ((3, 1.0), (4, 2.0), (5, 50.0))], -1)
  out = c.correct(rgb, tile=32, overlap=8)
  for ch in range(3):  # each channel is corrected on its own, in its own absolute scale
    alone = c.correct(rgb[..., ch], tile=32, overlap=8)
    np.testing.assert_allclose(out.corrected[..., ch], alone.corrected[..., 0], rtol=1e-6)
  assert np.median(out.corrected[..., 2]) > 20 * np.median(out.corrected[..., 0])
  assert out.corrected.max() > rgb.max() * 0.5  # not rescaled to [0, 1]


def test_16bit_png_gives_a_float_tiff_and_fits_hdus_are_kept(tiny, tmp_path):
  from PIL import Image
  c = _corrector(tiny, random_head=False)
  u16 = (np.random.default_rng(6).random((40, 48)) * 60000).astype(np.uint16)
  Image.fromarray(u16).save(tmp_path / "frame.png")
  report = c.correct_file(tmp_path / "frame.png", out_dir=tmp_path / "out", print_fn=lambda *a, **k: None)
  back, _ = images.read_image(report["outputs"]["corrected"])
  assert report["outputs"]["corrected"].endswith("frame_corrected.tif")
  np.testing.assert_allclose(back[..., 0], u16 / 65535.0, rtol=1e-5, atol=1e-7)
  # FITS: primary cards, an image extension and a table extension all carried over
  primary = fits.PrimaryHDU()
  primary.header["TELESCOP"] = ("RedCat 51", "optics")
  sci = fits.ImageHDU(_sky((40, 48, 1))[..., 0], name="SCI")
  sci.header["CRVAL1"] = 10.68
  table = fits.BinTableHDU.from_columns([fits.Column("flux", "E", array=np.arange(3.0))], name="CAT")
  fits.HDUList([primary, sci, table]).writeto(tmp_path / "m31.fits")
  report = c.correct_file(tmp_path / "m31.fits", out_dir=tmp_path / "out", print_fn=lambda *a, **k: None)
  with fits.open(report["outputs"]["corrected"]) as h:
    assert [x.name for x in h] == ["PRIMARY", "SCI", "CAT"]
    assert h[0].header["TELESCOP"] == "RedCat 51" and h[1].header["CRVAL1"] == 10.68
    np.testing.assert_array_equal(h[2].data["flux"], [0.0, 1.0, 2.0])
    assert "flatai correct: model=test step=0 task=flat" in str(h[1].header["HISTORY"])
    np.testing.assert_allclose(h[1].data, sci.data, rtol=1e-5)


def test_compressed_fits_in_and_out_losslessly(tmp_path):
  data = _sky((30, 40, 1))[..., 0]
  fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, quantize_level=0.0,
                                                     compression_type="GZIP_2")]
               ).writeto(tmp_path / "a.fits.fz")
  fits.PrimaryHDU(data).writeto(tmp_path / "b.fits.gz")
  for name in ("a.fits.fz", "b.fits.gz"):
    pixels, meta = images.read_image(tmp_path / name)
    np.testing.assert_array_equal(pixels[..., 0], data)
    images.write_image(tmp_path / f"out_{name}", pixels * 2, meta, history="x")
    back, _ = images.read_image(tmp_path / f"out_{name}")
    np.testing.assert_array_equal(back[..., 0], data * 2)
  with fits.open(tmp_path / "out_a.fits.fz") as h:
    assert isinstance(h[1], fits.CompImageHDU)


def test_xisf_properties_are_carried_over(tmp_path):
  from xisf import XISF
  props = {"PCL:AstrometricSolution:ReferenceCelestialCoordinates": {
      "id": "PCL:AstrometricSolution:ReferenceCelestialCoordinates", "type": "F64Vector",
      "value": np.array([10.684, 41.269])},
      "Observation:Object:Name": {"id": "Observation:Object:Name", "type": "String", "value": "M31"}}
  XISF.write(str(tmp_path / "in.xisf"), _sky((20, 24, 1)), "test",
             image_metadata={"XISFProperties": props, "FITSKeywords": {"OBJECT": [
                 {"value": "M31", "comment": ""}]}}, xisf_metadata={})
  pixels, meta = images.read_image(tmp_path / "in.xisf")
  assert meta.xisf_icc_profile is None
  meta.xisf_icc_profile = icc = bytes(range(256)) * 3  # as if read from a colour-managed file
  images.write_image(tmp_path / "mid.xisf", pixels, meta, history="flatai correct: test")
  pixels2, meta2 = images.read_image(tmp_path / "mid.xisf")
  assert meta2.xisf_icc_profile == icc  # the ICC profile survives a write and a read
  np.testing.assert_array_equal(pixels2, pixels)
  images.write_image(tmp_path / "out.xisf", pixels2, meta2, history="flatai correct: test")
  assert images.read_image(tmp_path / "out.xisf")[1].xisf_icc_profile == icc
  m = XISF(str(tmp_path / "out.xisf")).get_images_metadata()[0]
  np.testing.assert_array_equal(
      m["XISFProperties"]["PCL:AstrometricSolution:ReferenceCelestialCoordinates"]["value"],
      [10.684, 41.269])
  assert m["XISFProperties"]["Observation:Object:Name"]["value"] == "M31"
  assert m["FITSKeywords"]["OBJECT"][0]["value"] == "M31"
  assert "flatai correct: test" in str(m["FITSKeywords"]["HISTORY"])


def test_task_selection(tiny):
  assert correct.resolve_task("combined", "flat") == "flat"
  assert correct.resolve_task("psf", None) == "psf"
  with pytest.raises(ValueError, match="a flat model cannot apply --task=psf"):
    correct.resolve_task("flat", "psf")
  c = _corrector(tiny, task="combined")
  image = _sky((32, 32, 1), seed=7)
  full, flat_only = c.correct(image, tile=32, overlap=0), c.correct(image, tile=32, overlap=0, task="flat")
  np.testing.assert_allclose(flat_only.F, full.F)
  # the flat-only result is (observed − G) / F; the full one adds the aberration residual
  np.testing.assert_allclose(flat_only.corrected, (image - flat_only.G) / flat_only.F, rtol=1e-4)
  assert np.abs(full.corrected - flat_only.corrected).max() > 1.0


@pytest.mark.parametrize("which", ["default", "tile"])
def test_the_shipped_models_load_and_flatten_a_vignetted_frame(which):
  """``flatai_jax.load()`` with no argument: the whole-frame model (flatai_jax/assets/frame_model);
  the earlier tile model (assets/default_model) by its path."""
  import flatai_jax
  c = flatai_jax.load(None if which == "default" else correct.TILE_MODEL)
  assert c.step == (1500 if which == "default" else 3000)
  assert c.config.task == "flat" and c.config.data.channels == 1
  rng = np.random.default_rng(8)
  h, w = 128, 192
  yy, xx = np.mgrid[0:h, 0:w]
  r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (w / 2)) ** 2
  f_true = 1.0 - 0.3 * r2  # corner/centre ≈ 0.6
  sky = 0.05 + rng.normal(0, 0.001, (h, w))
  image = (sky * f_true + 0.01 * xx / w)[..., None].astype(np.float32)
  out = c.correct(image)
  before = correct.background_nonuniformity(image)
  after = correct.background_nonuniformity(out.corrected)
  assert after < 0.5 * before, (before, after)


def test_any_file_name_is_corrected_and_named_in_ascii_history(tmp_path):
  """``my frame é.fits`` and an XISF with a non-ASCII name, under a folder with spaces, through
  the shipped model; FITS and XISF HISTORY carry the name with ``é`` escaped."""
  from xisf import XISF

  import flatai_jax
  c = flatai_jax.load()
  folder = tmp_path / "dir with spaces"
  folder.mkdir()
  fits.PrimaryHDU(_sky((64, 96, 1), seed=4)[..., 0]).writeto(folder / "my frame é.fits")
  XISF.write(str(folder / "Ωmega 1.xisf"), _sky((64, 96, 1), seed=5), "test")
  settings = f"flatai correct: model=frame_model step={c.step} task=flat grid=96x128"
  for name, escaped in (("my frame é.fits", r"my frame \xe9.fits"),
                        ("Ωmega 1.xisf", r"\u03a9mega 1.xisf")):
    report = c.correct_file(folder / name, print_fn=lambda *a, **k: None)
    stem, ext = name.rsplit(".", 1)
    expected = {k: folder / f"{stem}_corrected{s}" for k, s in (
        ("corrected", f".{ext}"), ("F", f"_F.{ext}"), ("G", f"_G.{ext}"),
        ("confidence", f"_confidence.{ext}"), ("preview", "_preview.png"))}
    assert report["outputs"] == {k: str(v) for k, v in expected.items()}
    assert all(p.is_file() for p in expected.values())
    if ext == "fits":
      history = " ".join(fits.getheader(expected["corrected"])["HISTORY"])
    else:
      meta = XISF(str(expected["corrected"])).get_images_metadata()[0]
      history = meta["FITSKeywords"]["HISTORY"][-1]["comment"]
    assert history == f"{settings} input={escaped}"
