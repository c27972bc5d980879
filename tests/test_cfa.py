"""Bayer raw frames: the pattern from FITS / XISF metadata, the sub-planes, and the correction in
CFA space with one shared F (no checkerboard, keywords kept)."""
import numpy as np
import pytest
from astropy.io import fits

from flatai_jax import cfa, correct
from flatai_jax.io import images

H, W = 300, 400
SKY = {"R": 0.10, "G": 0.20, "B": 0.06}  # per-colour sky level
GRADIENT = {"R": 0.012, "G": 0.009, "B": 0.003}  # per-colour additive gradient across the frame


def test_offsets_shift_the_pattern_and_split_merge_round_trips():
  assert [cfa.effective_pattern("RGGB", dx, dy) for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1))] \
      == ["RGGB", "GRBG", "GBRG", "BGGR"]
  for shape in ((6, 8), (7, 9)):
    a = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    planes = cfa.split(a)
    assert planes.shape == (4, 4, 5) if shape == (7, 9) else (4, 3, 4)
    np.testing.assert_array_equal(cfa.merge(planes, shape), a)
    np.testing.assert_array_equal(planes[3][:3, :3], a[1::2, 1::2][:3, :3])


def test_resolve_decides_in_one_line_and_refuses_what_it_cannot_do():
  assert cfa.resolve("auto", None, (4, 4, 1)) == (None, None)
  pattern, line = cfa.resolve("auto", ("RGGB", 1, 0), (4, 4, 1))
  assert pattern == "GRBG" and line.startswith("CFA GRBG at pixel (0, 0) (detected RGGB (x offset 1")
  assert cfa.resolve("none", ("RGGB", 0, 0), (4, 4, 1))[0] is None
  assert cfa.resolve("BGGR", None, (4, 4, 1))[0] == "BGGR"
  with pytest.raises(ValueError, match="one channel"):
    cfa.resolve("RGGB", None, (4, 4, 3))
  with pytest.raises(ValueError, match="not a 2x2 Bayer pattern"):
    cfa.resolve("auto", ("GRBGGRBG", 0, 0), (4, 4, 1))


def _mosaic(seed=0, gradient=False):
  """``(observed mosaic, clean mosaic, true F)``, RGGB, each ``(H, W)``: per-colour sky (and
  additive gradient), stars, noise, 30 % vignetting."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:H, 0:W]
  f_true = 1.0 - 0.3 * (((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (W / 2)) ** 2)
  colour = np.empty((H, W), "<U1")
  for k, c in enumerate("RGGB"):
    colour[k // 2::2, k % 2::2] = c
  sky = np.vectorize(SKY.get)(colour)
  stars = np.zeros((H, W))
  for x, y in rng.uniform(20, 280, (15, 2)):
    stars += 0.5 * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 2.0 ** 2)
  clean = sky * (1.0 + stars) + rng.normal(0, 0.001, (H, W))
  g_true = np.vectorize(GRADIENT.get)(colour) * xx / W if gradient else 0.0
  return clean * f_true + g_true, clean, f_true


def test_cfa_frame_corrected_with_one_f_no_checkerboard_keywords_kept(tmp_path):
  import flatai_jax
  observed, clean, _ = _mosaic()
  header = fits.Header({"BAYERPAT": "RGGB", "XBAYROFF": 0, "YBAYROFF": 0, "EXPTIME": 30.0})
  fits.PrimaryHDU(observed.astype(np.float32), header=header).writeto(tmp_path / "raw.fits")
  lines = []
  report = flatai_jax.load().correct_file(tmp_path / "raw.fits",
                                          print_fn=lambda *a, **k: lines.append(" ".join(a)))
  assert any(line.endswith("raw.fits: CFA RGGB at pixel (0, 0) (detected RGGB (x offset 0, y "
                           "offset 0)): corrected as 4 sub-planes with one shared F and G per "
                           "colour") for line in lines), lines
  with fits.open(report["outputs"]["corrected"]) as hdul:
    out, head = hdul[0].data.astype(np.float64), hdul[0].header
  assert out.shape == (H, W)
  assert (head["BAYERPAT"], head["XBAYROFF"], head["YBAYROFF"]) == ("RGGB", 0, 0)
  assert "cfa=RGGB" in " ".join(head["HISTORY"])
  f_out = fits.getdata(report["outputs"]["F"])
  np.testing.assert_array_equal(f_out[0::2, 0::2], f_out[1::2, 1::2])  # one F for every colour
  # Residual flat error per sub-plane: non-uniformity of corrected / clean (1 = perfect).
  ratio = cfa.split(out / clean)
  before = [correct.background_nonuniformity(p[..., None])
            for p in cfa.split(observed / clean)]
  after = [correct.background_nonuniformity(p[..., None]) for p in ratio]
  # the sub-planes agree within 10 %, or all sit at the noise floor (0.2 % non-uniformity)
  assert max(after) - min(after) <= max(0.10 * min(after), 0.002), after
  assert max(after) < 0.5 * min(before), (before, after)
  # No checkerboard: every colour keeps its level relative to the truth.
  levels = np.median(ratio, axis=(1, 2))
  assert levels.max() <= 1.01 * levels.min(), levels


def _residuals(out, clean):
  return [correct.background_nonuniformity(p[..., None]) for p in cfa.split(out / clean)]


def test_cfa_space_beats_correcting_the_mosaic_as_mono_with_coloured_gradients():
  """Per-colour gradients: in CFA space every sub-plane is flattened (G per colour); as mono,
  the dimmest colour is left almost as it was."""
  import flatai_jax
  corrector = flatai_jax.load()
  observed, clean, _ = _mosaic(gradient=True)
  observed = observed[..., None].astype(np.float32)
  before = _residuals(observed[..., 0], clean)
  in_cfa = _residuals(cfa.correct_mosaic(corrector.correct, observed).corrected[..., 0], clean)
  as_mono = _residuals(corrector.correct(observed).corrected[..., 0], clean)
  assert max(in_cfa) < 0.3 * min(before), (before, in_cfa)
  assert max(in_cfa) < 0.7 * max(as_mono), (in_cfa, as_mono)


def test_xisf_color_filter_array_is_read_and_written_back(tmp_path):
  from xisf import XISF
  path = tmp_path / "raw.xisf"
  XISF.write(str(path), np.full((8, 12, 1), 0.25, np.float32), "test")
  element = '<ColorFilterArray pattern="GRBG" width="2" height="2" name="GRBG &amp; co"/>'
  images._xisf_add_elements(path, element)
  data, meta = images.read_image(path)
  assert meta.cfa == ("GRBG", 0, 0) and meta.xisf_cfa_element == element
  images.write_image(tmp_path / "out.xisf", data, meta, history="test")
  again, meta2 = images.read_image(tmp_path / "out.xisf")
  assert meta2.cfa == ("GRBG", 0, 0) and meta2.xisf_cfa_element == element
  np.testing.assert_array_equal(again, data)
