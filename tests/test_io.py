"""Image I/O: round trips of every format and each bad-input case."""
import os

import numpy as np
import pytest
from astropy.io import fits

from flatai_jax.io import images
from flatai_jax.io.images import ImageError


def _ramp(h=12, w=10, c=1, scale=1.0):
  rng = np.random.default_rng(0)
  return (rng.random((h, w, c)) * scale).astype(np.float32)


def test_fits_mono_round_trip_keeps_values_and_header(tmp_path):
  data = _ramp(scale=1000.0)[:, :, 0]
  hdr = fits.Header()
  hdr["EXPTIME"] = (300.0, "seconds")
  hdr["OBJECT"] = "M31"
  fits.PrimaryHDU(data, header=hdr).writeto(tmp_path / "in.fits")
  pixels, meta = images.read_image(tmp_path / "in.fits")
  assert pixels.shape == (12, 10, 1) and pixels.dtype == np.float32
  np.testing.assert_array_equal(pixels[:, :, 0], data)
  images.write_image(tmp_path / "out.fits", pixels, meta, history="flatai test")
  back, meta2 = images.read_image(tmp_path / "out.fits")
  np.testing.assert_array_equal(back, pixels)
  assert meta2.fits_header["EXPTIME"] == 300.0 and meta2.fits_header["OBJECT"] == "M31"
  assert "flatai test" in str(meta2.fits_header["HISTORY"])


def test_fits_rgb_cube_is_channels_last(tmp_path):
  cube = _ramp(c=3)
  fits.PrimaryHDU(np.moveaxis(cube, -1, 0)).writeto(tmp_path / "rgb.fits")
  pixels, meta = images.read_image(tmp_path / "rgb.fits")
  np.testing.assert_array_equal(pixels, cube)
  images.write_image(tmp_path / "rgb_out.fits", pixels, meta)
  with fits.open(tmp_path / "rgb_out.fits") as h:
    assert h[0].data.shape == (3, 12, 10)
    np.testing.assert_array_equal(np.moveaxis(h[0].data, 0, -1), cube)


def test_fits_bzero_uint16_and_big_endian_float(tmp_path):
  raw = np.array([[0, 1, 32768], [40000, 65535, 12]], np.uint16)
  fits.PrimaryHDU(raw).writeto(tmp_path / "u16.fits")  # astropy stores int16 + BZERO=32768
  with fits.open(tmp_path / "u16.fits", do_not_scale_image_data=True) as h:
    assert h[0].header["BZERO"] == 32768 and h[0].data.dtype.kind == "i"
  pixels, meta = images.read_image(tmp_path / "u16.fits")
  np.testing.assert_array_equal(pixels[:, :, 0], raw.astype(np.float32))
  assert meta.source_dtype == "uint16"
  be = np.arange(6, dtype=">f4").reshape(2, 3) * 1.5
  fits.PrimaryHDU(be).writeto(tmp_path / "be.fits")
  pixels, meta = images.read_image(tmp_path / "be.fits")
  assert pixels.dtype == np.dtype("float32") and pixels.dtype.byteorder in ("=", "<", "|")
  np.testing.assert_array_equal(pixels[:, :, 0], be.astype(np.float32))
  # scaled integers: physical = BZERO + BSCALE * stored
  hdu = fits.PrimaryHDU(np.array([[1, 2], [3, 4]], np.int16))
  hdu.header["BSCALE"], hdu.header["BZERO"] = 0.5, 10.0
  hdu.writeto(tmp_path / "scaled.fits")
  pixels, _ = images.read_image(tmp_path / "scaled.fits")
  np.testing.assert_allclose(pixels[:, :, 0], [[10.5, 11.0], [11.5, 12.0]])


def test_fits_image_in_extension(tmp_path):
  fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(_ramp()[:, :, 0], name="SCI")]).writeto(
      tmp_path / "ext.fits")
  pixels, _ = images.read_image(tmp_path / "ext.fits")
  np.testing.assert_array_equal(pixels, _ramp())


@pytest.mark.parametrize("channels", [1, 3])
def test_xisf_round_trip_keeps_metadata(tmp_path, channels):
  from xisf import XISF
  data = _ramp(c=channels)
  meta = {"FITSKeywords": {"OBJECT": [{"value": "'NGC 7000'", "comment": ""}]}}
  XISF.write(str(tmp_path / "in.xisf"), data, creator_app="test", image_metadata=meta)
  pixels, m = images.read_image(tmp_path / "in.xisf")
  np.testing.assert_array_equal(pixels, data)
  images.write_image(tmp_path / "out.xisf", pixels, m, history="flatai test")
  back, m2 = images.read_image(tmp_path / "out.xisf")
  np.testing.assert_array_equal(back, data)
  assert "NGC 7000" in str(m2.xisf_image_metadata["FITSKeywords"]["OBJECT"])
  assert "flatai test" in str(m2.xisf_image_metadata["FITSKeywords"]["HISTORY"])


def test_png_jpeg_tiff_scaling_rule(tmp_path):
  import tifffile
  from PIL import Image
  u8 = np.array([[0, 51, 255]], np.uint8)
  Image.fromarray(u8).save(tmp_path / "a.png")
  pixels, meta = images.read_image(tmp_path / "a.png")
  np.testing.assert_allclose(pixels[:, :, 0], [[0.0, 0.2, 1.0]], atol=1e-7)
  assert meta.int_scale == 255.0
  u16 = np.array([[0, 13107, 65535]], np.uint16)
  tifffile.imwrite(tmp_path / "a.tif", u16)
  pixels, _ = images.read_image(tmp_path / "a.tif")
  np.testing.assert_allclose(pixels[:, :, 0], [[0.0, 0.2, 1.0]], atol=1e-7)
  Image.fromarray(u16.astype(np.uint16)).save(tmp_path / "b.png")
  pixels, _ = images.read_image(tmp_path / "b.png")
  np.testing.assert_allclose(pixels[:, :, 0], [[0.0, 0.2, 1.0]], atol=1e-7)
  # writers invert the rule: PNG 16-bit mono and float TIFF are exact round trips
  vals = np.array([[[0.0], [0.2], [1.0]]], np.float32)
  images.write_image(tmp_path / "c.png", vals)
  np.testing.assert_allclose(images.read_image(tmp_path / "c.png")[0], vals, atol=1 / 65535)
  images.write_image(tmp_path / "c.tif", vals * 7.5)
  np.testing.assert_array_equal(images.read_image(tmp_path / "c.tif")[0], vals * 7.5)
  yy, xx = np.mgrid[0:16, 0:16]
  rgb = np.stack([yy * 16, xx * 16, (yy + xx) * 8], -1).astype(np.uint8)  # smooth: JPEG-friendly
  Image.fromarray(rgb).save(tmp_path / "d.jpg", quality=100)
  pixels, _ = images.read_image(tmp_path / "d.jpg")
  assert pixels.shape == (16, 16, 3)
  assert np.abs(pixels - rgb / 255.0).mean() < 0.02  # lossy, but the rule is /255


def _expect(path, fragment):
  with pytest.raises(ImageError) as e:
    images.read_image(path)
  assert str(path) in str(e.value) and fragment in str(e.value), str(e.value)


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
  _expect(tmp_path / "missing.fits", "not found")
  (tmp_path / "zero.fits").write_bytes(b"")
  _expect(tmp_path / "zero.fits", "empty")
  fits.PrimaryHDU(_ramp(64, 64)[:, :, 0]).writeto(tmp_path / "full.fits")
  blob = (tmp_path / "full.fits").read_bytes()
  (tmp_path / "trunc.fits").write_bytes(blob[: len(blob) // 2])
  _expect(tmp_path / "trunc.fits", "truncated or corrupt")
  (tmp_path / "junk.fits").write_bytes(os.urandom(5000))
  _expect(tmp_path / "junk.fits", "truncated or corrupt")
  (tmp_path / "junk.png").write_bytes(os.urandom(300))
  _expect(tmp_path / "junk.png", "truncated or corrupt")
  (tmp_path / "junk.xisf").write_bytes(b"XISF0100" + os.urandom(300))
  _expect(tmp_path / "junk.xisf", "truncated or corrupt")
  fits.PrimaryHDU().writeto(tmp_path / "nodata.fits")
  _expect(tmp_path / "nodata.fits", "no image data")
  fits.PrimaryHDU(np.full((4, 4), np.nan, np.float32)).writeto(tmp_path / "nan.fits")
  _expect(tmp_path / "nan.fits", "all pixels are NaN")
  part = np.ones((4, 4), np.float32)
  part[1, 2] = np.inf
  fits.PrimaryHDU(part).writeto(tmp_path / "inf.fits")
  _expect(tmp_path / "inf.fits", "1 of 16 pixels are NaN or Inf")
  fits.PrimaryHDU(np.ones((2, 3, 4, 4), np.float32)).writeto(tmp_path / "4d.fits")
  _expect(tmp_path / "4d.fits", "unsupported dimensions")
  fits.PrimaryHDU(np.ones((5, 4, 4), np.float32)).writeto(tmp_path / "5ch.fits")
  _expect(tmp_path / "5ch.fits", "unsupported number of channels 5")
  fits.PrimaryHDU(np.ones(7, np.float32)).writeto(tmp_path / "1d.fits")
  _expect(tmp_path / "1d.fits", "unsupported dimensions")
  (tmp_path / "notes.txt").write_text("hello")
  _expect(tmp_path / "notes.txt", "unsupported file type")


def test_writes_are_atomic_and_never_overwrite_inputs(tmp_path):
  src = tmp_path / "in.fits"
  fits.PrimaryHDU(_ramp()[:, :, 0]).writeto(src)
  before = src.read_bytes()
  pixels, meta = images.read_image(src)
  with pytest.raises(ImageError, match="refusing to overwrite an input"):
    images.write_image(src, pixels * 2, meta, protect=[src])
  assert src.read_bytes() == before
  with pytest.raises(ImageError, match="cannot write array"):
    images.write_image(tmp_path / "bad.fits", np.ones((2, 2, 5)))
  assert not (tmp_path / "bad.fits").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fits"]  # no temp leftovers
  assert images.split_suffix("a/b.c.fits.gz") == ("b.c", ".fits.gz")


def test_ascii_safe_escapes_what_fits_headers_refuse():
  assert images.ascii_safe("my frame é.fits") == r"my frame \xe9.fits"
  assert images.ascii_safe("a\tb\nΩ€ ~!") == r"a\tb\n\u03a9\u20ac ~!"
  assert images.ascii_safe("\udce9.fits") == r"\udce9.fits"  # undecodable byte of a file name
