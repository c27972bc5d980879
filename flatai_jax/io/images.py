"""Reading and writing astronomical images: FITS, XISF, PNG, JPEG, TIFF.

Every reader returns ``(H, W, C) float32`` **linear** pixel values plus an
:class:`ImageMeta` that carries what is needed to write the result back in the
same spirit (FITS header, XISF metadata, source dtype).

Scaling rule (the only one): floating-point data are kept as they are; integer
data in FITS are scaled by the file's own BSCALE/BZERO (physical ADU);
integer data in PNG/JPEG/TIFF/XISF are divided by the largest value of their
type (255 for 8-bit, 65535 for 16-bit, 2**32-1 for 32-bit), so they land in
[0, 1]. No gamma or display stretch is undone: use linear data (FITS, XISF,
16-bit TIFF straight from the stacker) for real corrections.

Bad input raises :class:`ImageError` whose message names the file and the
problem. Outputs are written to a temporary name in the target folder and
renamed, so a failure never leaves a half-written file; a writer refuses to
overwrite any path listed in ``protect`` (the inputs).
"""
from __future__ import annotations

import dataclasses
import os
import textwrap
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from flatai_jax.io.atomic import write_atomic

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fit.fz",
                 ".fz")
XISF_SUFFIXES = (".xisf",)
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")


class ImageError(Exception):
  """A file that cannot be used as an image; the message names file and problem."""

  def __init__(self, path: str | os.PathLike, problem: str):
    self.path = str(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass
class ImageMeta:
  """What a reader learned about a file besides its pixels.

  Attributes:
    format: one of 'fits', 'xisf', 'png', 'jpeg', 'tiff'.
    source_dtype: numpy dtype name of the stored pixels (e.g. 'uint16', '>f4').
    fits_header: astropy Header of the image HDU (FITS only).
    fits_hdus: every HDU of the file as ``(kind, header, data)`` with the image
      HDU's data left out (FITS only), so outputs carry tables, masks and all cards.
    fits_image_index: position of the image HDU among ``fits_hdus``.
    xisf_image_metadata / xisf_file_metadata: dicts from the xisf package.
    xisf_icc_profile: the image's ICC profile bytes (XISF only; the xisf
      package does not read it, so this module does).
    int_scale: the divisor that mapped integer pixels to [0, 1] (1.0 if none).
    cfa: the colour-filter array as the file states it, ``(pattern, x offset, y offset)``,
      e.g. ``('RGGB', 0, 0)`` from FITS ``BAYERPAT``/``XBAYROFF``/``YBAYROFF`` or an XISF
      ``ColorFilterArray`` element (offsets 0); None for no CFA or a non-mono image.
    xisf_cfa_element: the XISF ``<ColorFilterArray …/>`` element as read, written back as is.
  """
  format: str
  source_dtype: str
  fits_header: Any = None
  fits_hdus: list | None = None
  fits_image_index: int = 0
  xisf_image_metadata: dict | None = None
  xisf_file_metadata: dict | None = None
  xisf_icc_profile: bytes | None = None
  int_scale: float = 1.0
  cfa: tuple[str, int, int] | None = None
  xisf_cfa_element: str | None = None


def image_format(path: str | os.PathLike) -> str:
  """The format name from a file's suffix; raises ImageError for unknown ones."""
  name = str(path).lower()
  if name.endswith(FITS_SUFFIXES):
    return "fits"
  if name.endswith(XISF_SUFFIXES):
    return "xisf"
  if name.endswith((".jpg", ".jpeg")):
    return "jpeg"
  if name.endswith(".png"):
    return "png"
  if name.endswith(TIFF_SUFFIXES):
    return "tiff"
  raise ImageError(path, "unsupported file type (use .fits/.fit/.fts, .xisf, "
                   ".png, .jpg/.jpeg or .tif/.tiff)")


def split_suffix(path: str | os.PathLike) -> tuple[str, str]:
  """``('name', '.fits.gz')`` for ``dir/name.fits.gz``: the stem and the image suffix."""
  name = Path(path).name
  for suffix in sorted(FITS_SUFFIXES + XISF_SUFFIXES + PIL_SUFFIXES + TIFF_SUFFIXES,
                       key=len, reverse=True):
    if name.lower().endswith(suffix):
      return name[:-len(suffix)], name[-len(suffix):]
  return Path(name).stem, Path(name).suffix


def _int_divisor(dtype: np.dtype) -> float:
  return float(np.iinfo(dtype).max)


def _to_hwc(path, data: np.ndarray, channels_first: bool) -> np.ndarray:
  """(H, W) / (C, H, W) / (H, W, C) → (H, W, C); rejects other layouts."""
  if data.ndim == 2:
    return data[:, :, None]
  if data.ndim == 3:
    if channels_first:
      data = np.moveaxis(data, 0, -1)
    if data.shape[-1] not in (1, 3):
      raise ImageError(path, f"unsupported number of channels {data.shape[-1]} "
                       f"(shape {tuple(data.shape)}); expected 1 (mono) or 3 (RGB)")
    return data
  raise ImageError(path, f"unsupported dimensions: {data.ndim}-D array of shape "
                   f"{tuple(data.shape)}; expected a 2-D image or a 3-channel cube")


def _validate(path, data: np.ndarray, allow_nan: bool = False) -> np.ndarray:
  if data.size == 0 or 0 in data.shape:
    raise ImageError(path, f"empty image (shape {tuple(data.shape)})")
  if data.dtype.kind not in "uif":
    raise ImageError(path, f"unsupported pixel type {data.dtype}; expected "
                     "integer or floating-point pixels")
  out = np.asarray(data, dtype=np.float32)  # native byte order
  finite = np.isfinite(out)
  if not finite.any():
    raise ImageError(path, "all pixels are NaN or Inf")
  if not finite.all() and allow_nan:
    out[~finite] = np.nan  # masked pixels: kept as NaN through correction
  elif not finite.all():
    bad = int(out.size - finite.sum())
    raise ImageError(path, f"{bad} of {out.size} pixels are NaN or Inf; "
                     "replace them (e.g. by the local background) before correcting")
  return out


def _fits_stored_dtype(header) -> str:
  """The dtype as stored on disk, e.g. 'uint16' for BITPIX=16 with BZERO=32768."""
  bitpix = int(header["BITPIX"])
  if bitpix < 0:
    return f">f{-bitpix // 8}"
  if bitpix == 8:
    return "uint8"
  if header.get("BSCALE", 1) == 1 and header.get("BZERO", 0) == 2 ** (bitpix - 1):
    return f"uint{bitpix}"
  return f">i{bitpix // 8}"


def _read_fits(path: Path) -> tuple[np.ndarray, ImageMeta]:
  from astropy.io import fits
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error")  # astropy only *warns* on truncation
      with fits.open(path, memmap=False) as hdul:
        index = next((i for i, h in enumerate(hdul) if h.is_image
                      and getattr(h, "data", None) is not None), None)
        if index is None:
          raise ImageError(path, "contains no image data (no HDU with pixels)")
        hdu = hdul[index]
        raw_dtype = _fits_stored_dtype(hdu.header)
        data = np.array(hdu.data)  # applies BSCALE/BZERO
        header = hdu.header.copy()
        hdus = [(type(h).__name__, h.header.copy(),
                 None if i == index or h.data is None else h.data.copy())
                for i, h in enumerate(hdul)]
  except ImageError:
    raise
  except FileNotFoundError:
    raise ImageError(path, "file not found") from None
  except Exception as e:  # astropy raises many types for damaged files
    raise ImageError(path, f"unreadable FITS (truncated or corrupt): {e}") from None
  if data.ndim == 3:
    data = _to_hwc(path, data, channels_first=True)
  else:
    data = _to_hwc(path, data, channels_first=False)
  meta = ImageMeta("fits", str(raw_dtype), fits_header=header, fits_hdus=hdus,
                   fits_image_index=index, cfa=_fits_cfa(path, header) if data.shape[-1] == 1
                   else None)
  return data, meta


def _fits_cfa(path, header) -> tuple[str, int, int] | None:
  """``(BAYERPAT, XBAYROFF, YBAYROFF)`` of a FITS header, or None without ``BAYERPAT``."""
  pattern = str(header.get("BAYERPAT", "")).strip().upper()
  if not pattern:
    return None
  try:
    return pattern, int(header.get("XBAYROFF", 0)), int(header.get("YBAYROFF", 0))
  except (TypeError, ValueError):
    raise ImageError(path, f"XBAYROFF/YBAYROFF must be integers, not "
                     f"{header.get('XBAYROFF')!r}/{header.get('YBAYROFF')!r}") from None


def _read_xisf(path: Path) -> tuple[np.ndarray, ImageMeta]:
  from xisf import XISF
  try:
    x = XISF(str(path))
    image_meta = x.get_images_metadata()
    if not image_meta:
      raise ImageError(path, "contains no image data")
    data = x.read_image(0)
    file_meta = x.get_file_metadata()
  except ImageError:
    raise
  except FileNotFoundError:
    raise ImageError(path, "file not found") from None
  except Exception as e:
    raise ImageError(path, f"unreadable XISF (truncated or corrupt): {e}") from None
  data = np.asarray(data)
  raw_dtype = data.dtype
  scale = 1.0
  if data.dtype.kind in "ui":
    scale = _int_divisor(data.dtype)
    data = data.astype(np.float64) / scale
  data = _to_hwc(path, data, channels_first=False)
  element = _xisf_read_cfa(path)
  cfa = None
  if element is not None and data.shape[-1] == 1:
    import xml.etree.ElementTree as ET
    cfa = (ET.fromstring(element).get("pattern", "").strip().upper(), 0, 0)
  return data, ImageMeta(
      "xisf", str(raw_dtype), xisf_image_metadata=image_meta[0],
      xisf_file_metadata=file_meta, int_scale=scale, xisf_icc_profile=_xisf_read_icc(path),
      cfa=cfa, xisf_cfa_element=element)


def _xisf_split(path) -> tuple[bytes, str]:
  """``(whole file, XML header)`` of an XISF file (signature, uint32 length, reserved, XML)."""
  import struct
  blob = Path(path).read_bytes()
  n = struct.unpack("<I", blob[8:12])[0]
  return blob, blob[16:16 + n].decode("utf-8")


def _xisf_read_icc(path) -> bytes | None:
  """The first image's uncompressed ICC profile (attachment, inline or embedded), or None."""
  import base64
  import xml.etree.ElementTree as ET
  blob, header = _xisf_split(path)
  ns = "{http://www.pixinsight.com/xisf}"
  image = ET.fromstring(header).find(f"{ns}Image")
  icc = None if image is None else image.find(f"{ns}ICCProfile")
  if icc is None or icc.get("compression"):
    return None
  kind, *rest = icc.get("location", "").split(":")
  if kind == "attachment":
    pos, size = int(rest[0]), int(rest[1])
    return blob[pos:pos + size]
  text = icc.text if kind == "inline" else getattr(icc.find(f"{ns}Data"), "text", "")
  encoding = rest[0] if rest else icc.find(f"{ns}Data").get("encoding", "base64")
  text = (text or "").strip()
  return base64.b64decode(text) if encoding == "base64" else bytes.fromhex(text)


def _xisf_read_cfa(path) -> str | None:
  """The first image's ``<ColorFilterArray …/>`` element (no namespace prefix), or None."""
  import xml.etree.ElementTree as ET
  _, header = _xisf_split(path)
  ns = "{http://www.pixinsight.com/xisf}"
  image = ET.fromstring(header).find(f"{ns}Image")
  cfa = None if image is None else image.find(f"{ns}ColorFilterArray")
  if cfa is None:
    return None
  from xml.sax.saxutils import quoteattr
  attributes = " ".join(f"{k}={quoteattr(v)}" for k, v in cfa.attrib.items())
  return f"<ColorFilterArray {attributes}/>"


def _xisf_icc_element(icc: bytes) -> str:
  import base64
  return f'<ICCProfile location="inline:base64">{base64.b64encode(icc).decode()}</ICCProfile>'


def _xisf_add_elements(path: Path, element: str, block: int = 4096) -> None:
  """Adds XML ``element`` (e.g. an inline ICC profile, a ColorFilterArray) to the first image of
  an XISF file written by the xisf package.

  The XML header grows, so the data blocks move: every ``attachment:POS:SIZE``
  is shifted to the new, block-aligned start of the data.
  """
  import re
  import struct
  blob, header = _xisf_split(path)
  m = re.search(r"<Image\b[^>]*?(/?)>", header)
  if m.group(1):  # self-closing <Image ... />
    header = header[:m.start()] + m.group(0)[:-2].rstrip() + ">" + element + "</Image>" + \
        header[m.end():]
  else:
    header = header[:m.end()] + element + header[m.end():]
  attachment = re.compile(r"attachment:(\d+):(\d+)")
  first = min([int(p) for p, _ in attachment.findall(header)] or [len(blob)])
  start = first
  while True:
    moved = attachment.sub(lambda a: f"attachment:{int(a.group(1)) - first + start}:{a.group(2)}",
                           header).encode("utf-8")
    if 16 + len(moved) <= start:
      break
    start += block
  path.write_bytes(blob[:8] + struct.pack("<I", len(moved)) + blob[12:16] + moved +
                   b"\0" * (start - 16 - len(moved)) + blob[first:])


def _read_raster(path: Path, fmt: str) -> tuple[np.ndarray, ImageMeta]:
  try:
    if fmt == "tiff":
      import tifffile
      data = tifffile.imread(path)
    else:
      from PIL import Image
      with Image.open(path) as im:
        im.load()
        data = np.asarray(im)
  except FileNotFoundError:
    raise ImageError(path, "file not found") from None
  except Exception as e:
    raise ImageError(path, f"unreadable {fmt.upper()} (truncated or corrupt): {e}") from None
  data = np.asarray(data)
  if data.ndim == 3 and data.shape[-1] == 4:  # RGBA: drop alpha
    data = data[..., :3]
  raw_dtype = data.dtype
  scale = 1.0
  if data.dtype.kind in "ui":
    scale = _int_divisor(data.dtype)
    data = data.astype(np.float64) / scale
  elif data.dtype == bool:
    raise ImageError(path, "1-bit images are not supported")
  return _to_hwc(path, data, channels_first=False), ImageMeta(
      fmt, str(raw_dtype), int_scale=scale)


def read_image(path: str | os.PathLike, allow_nan: bool = False) -> tuple[np.ndarray, ImageMeta]:
  """Reads an image file.

  Args:
    path: the file.
    allow_nan: keep NaN/Inf pixels as NaN (masked pixels, e.g. for correction)
      instead of rejecting the file; an all-NaN image is rejected either way.
  Returns:
    pixels: ``(H, W, C) float32``, C in {1, 3}, linear, finite unless ``allow_nan``.
    meta: :class:`ImageMeta` for writing outputs back.
  Raises:
    ImageError: missing, truncated, corrupt, empty, non-finite, or an
      unsupported shape or dtype; the message names the file.
  """
  path = Path(path)
  fmt = image_format(path)
  if not path.exists():
    raise ImageError(path, "file not found")
  if path.is_dir():
    raise ImageError(path, "is a directory, not an image file")
  if path.stat().st_size == 0:
    raise ImageError(path, "file is empty (0 bytes)")
  if fmt == "fits":
    data, meta = _read_fits(path)
  elif fmt == "xisf":
    data, meta = _read_xisf(path)
  else:
    data, meta = _read_raster(path, fmt)
  return _validate(path, data, allow_nan), meta


def _atomic_write(path: Path, write_fn, protect: Iterable[str | os.PathLike]) -> None:
  """``io.atomic.write_atomic(path, write_fn)``, refusing any path of ``protect``; errors name
  the file."""
  path = Path(path)
  for p in protect:
    if Path(p).exists() and path.exists() and os.path.samefile(p, path):
      raise ImageError(path, "refusing to overwrite an input file; choose another output name")
    if Path(p).resolve() == path.resolve():
      raise ImageError(path, "refusing to overwrite an input file; choose another output name")
  try:
    write_atomic(path, write_fn)
  except ImageError:
    raise
  except Exception as e:
    raise ImageError(path, f"could not write: {e}") from e


def ascii_safe(text: str) -> str:
  """``text`` in printable ASCII, as FITS header values must be: every other character
  becomes its Python escape (``é`` → ``\\xe9``, a newline → ``\\n``, ``€`` → ``\\u20ac``)."""
  return "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in text)


def write_image(path: str | os.PathLike, pixels: np.ndarray, meta: ImageMeta | None = None,
                history: str | None = None,
                protect: Iterable[str | os.PathLike] = (), carry_hdus: bool = True) -> None:
  """Writes ``(H, W, C)`` or ``(H, W)`` float pixels to ``path`` atomically.

  FITS and XISF keep float32 values unclipped (FITS: the input header with a
  HISTORY line added; XISF: the input's metadata). TIFF is float32 too. PNG and
  JPEG invert the reading rule (× 65535 for PNG, × 255 for JPEG) and must clip
  to their integer range; prefer FITS/XISF/TIFF for results. ``carry_hdus``:
  FITS outputs also copy the input's other HDUs (tables, masks, extensions).
  ``history`` goes into FITS and XISF headers through :func:`ascii_safe`, so any
  file name in it (``my frame é.fits``) can be written; in FITS it takes as many
  HISTORY cards as it needs, broken at spaces.
  """
  path = Path(path)
  history = ascii_safe(history) if history else history
  fmt = image_format(path)
  data = np.asarray(pixels, dtype=np.float32)
  if data.ndim == 2:
    data = data[:, :, None]
  if data.ndim != 3 or data.shape[-1] not in (1, 3):
    raise ImageError(path, f"cannot write array of shape {data.shape}; expected (H, W, 1|3)")

  def write(tmp: Path):
    if fmt == "fits":
      from astropy.io import fits
      header = meta.fits_header.copy() if meta is not None and meta.fits_header is not None \
          else fits.Header()
      for key in ("BZERO", "BSCALE", "BLANK"):
        header.remove(key, ignore_missing=True, remove_all=True)
      for line in textwrap.wrap(history or "", 72, break_on_hyphens=False):
        header.add_history(line)  # one card holds 72 characters: break at spaces
      arr = np.ascontiguousarray(data[:, :, 0] if data.shape[-1] == 1 else np.moveaxis(data, -1, 0))
      _fits_hdulist(arr, header, meta if carry_hdus else None,
                    compressed=str(path).lower().endswith(".fz")).writeto(tmp)
    elif fmt == "xisf":
      from xisf import XISF
      image_meta = dict(meta.xisf_image_metadata) if meta is not None and \
          meta.xisf_image_metadata else {}
      for key in ("geometry", "location", "sampleFormat", "compression", "bounds"):
        image_meta.pop(key, None)
      if history:
        kw = dict(image_meta.get("FITSKeywords", {}))
        kw.setdefault("HISTORY", [])
        kw["HISTORY"] = list(kw["HISTORY"]) + [{"value": "", "comment": history}]
        image_meta["FITSKeywords"] = kw
      XISF.write(str(tmp), np.ascontiguousarray(data), creator_app="flatai-jax",
                 image_metadata=image_meta,
                 xisf_metadata=dict(meta.xisf_file_metadata or {}) if meta else {})
      added = "".join([_xisf_icc_element(meta.xisf_icc_profile)] if meta is not None and
                      meta.xisf_icc_profile else []) + \
          (meta.xisf_cfa_element if meta is not None and meta.xisf_cfa_element else "")
      if added:
        _xisf_add_elements(tmp, added)
    elif fmt == "tiff":
      import tifffile
      tifffile.imwrite(tmp, data[:, :, 0] if data.shape[-1] == 1 else data)
    else:
      from PIL import Image
      if fmt == "png":
        q = np.clip(np.rint(data * 65535.0), 0, 65535).astype(np.uint16)
        if q.shape[-1] == 1:
          Image.fromarray(q[:, :, 0]).save(tmp, format="PNG")
        else:  # PIL has no 16-bit RGB: write 8-bit RGB
          Image.fromarray((q >> 8).astype(np.uint8)).save(tmp, format="PNG")
      else:
        q = np.clip(np.rint(data * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(q[:, :, 0] if q.shape[-1] == 1 else q).save(
            tmp, format="JPEG", quality=95)

  _atomic_write(path, write, protect)


def _fits_hdulist(arr, header, meta, compressed: bool):
  """The output HDU list: the input's HDUs with the image HDU's pixels replaced.

  Other HDUs (tables, masks, extra images) and every card are copied as they
  were. Tile-compressed output (``.fz``) is written losslessly (GZIP_2, no
  quantisation).
  """
  from astropy.io import fits
  hdus = meta.fits_hdus if meta is not None and meta.fits_hdus else [("PrimaryHDU", header, None)]
  index = meta.fits_image_index if meta is not None and meta.fits_hdus else 0
  out = []
  for i, (kind, h, data) in enumerate(hdus):
    if i == index:
      if i == 0 and not compressed:
        out.append(fits.PrimaryHDU(arr, header=_primary_safe(header)))
        continue
      if i == 0:
        out.append(fits.PrimaryHDU())
      image_header = _primary_safe(header)
      if i > 0 and "EXTNAME" in header:
        image_header["EXTNAME"] = header["EXTNAME"]
      if compressed:
        for key in ("ZIMAGE", "ZBITPIX", "ZCMPTYPE", "ZQUANTIZ", "ZDITHER0"):
          image_header.remove(key, ignore_missing=True, remove_all=True)
        out.append(fits.CompImageHDU(arr, header=image_header, compression_type="GZIP_2",
                                     quantize_level=0.0))
      else:
        out.append(fits.ImageHDU(arr, header=image_header))
    elif i == 0:
      out.append(fits.PrimaryHDU(data, header=_primary_safe(h)))
    else:
      cls = getattr(fits, kind, None)
      if kind == "CompImageHDU" and data is not None:
        out.append(fits.CompImageHDU(data, header=_primary_safe(h)))
      elif cls is not None and kind != "PrimaryHDU":
        out.append(cls(data=data, header=h))
      else:
        out.append(fits.ImageHDU(data, header=_primary_safe(h)))
  return fits.HDUList(out)


def _primary_safe(header):
  """Drops keywords that only make sense in an extension HDU."""
  h = header.copy()
  for key in ("XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "SIMPLE", "EXTEND"):
    h.remove(key, ignore_missing=True, remove_all=True)
  return h
