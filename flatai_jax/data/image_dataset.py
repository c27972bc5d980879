"""The user's clean images as a TFDS array_record dataset (no TensorFlow needed).

``build_dataset(input_dir, data_dir)`` walks a directory tree, reads every
FITS/XISF/PNG/JPEG/TIFF with ``io.images.read_image``, converts it to the
training convention and writes ``train`` and ``validation`` splits.

Conversion rules (the only ones):
- 8-bit PNG/JPEG are display-encoded: they are decoded with the sRGB transfer
  function (``srgb_to_linear``); every other source is taken as linear.
- Each image is divided by its brightest pixel, so 1.0 is the saturation level
  of the training convention (the divisor is stored as ``scale``).
- The split is a deterministic hash of the relative path (``val_percent``).

Bad files (unreadable, truncated, all-NaN, NaN pixels, smaller than
``min_size``, unsupported) are skipped and listed, with the reason, in
``<data_dir>/build_summary.json``; one bad file never stops the build.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from flatai_jax.io import images
from flatai_jax.io.atomic import write_text_atomic

NAME = "flatai_images"
SUFFIXES = images.FITS_SUFFIXES + images.XISF_SUFFIXES + images.PIL_SUFFIXES + images.TIFF_SUFFIXES


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
  """Inverse sRGB transfer function for values in [0, 1] (IEC 61966-2-1)."""
  v = np.asarray(v, np.float64)
  return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


def to_training_image(path, min_size: int) -> tuple[np.ndarray, dict]:
  """Reads one file as a clean training image.

  Returns:
    ``(H, W, C) float32`` in [0, 1] (1.0 = saturation) and its metadata.
  Raises:
    images.ImageError naming the file and the problem.
  """
  pixels, meta = images.read_image(path)
  h, w, c = pixels.shape
  if min(h, w) < min_size:
    raise images.ImageError(path, f"too small ({h}×{w}); need at least {min_size} px per side")
  if meta.format in ("png", "jpeg") and meta.source_dtype == "uint8":
    pixels = srgb_to_linear(pixels)
  pixels = pixels - min(float(pixels.min()), 0.0)
  peak = float(pixels.max())
  if peak <= 0:
    raise images.ImageError(path, "image is blank (no positive pixels)")
  return (pixels / peak).astype(np.float32), {
      "format": meta.format, "source_dtype": meta.source_dtype, "height": h, "width": w,
      "channels": c, "scale": peak}


def split_of(relative_path: str, val_percent: int) -> str:
  digest = hashlib.sha256(relative_path.encode()).digest()
  return "validation" if int.from_bytes(digest[:4], "little") % 100 < val_percent else "train"


@functools.cache
def _builder_class():
  """The TFDS builder, defined on first use so that importing this module stays cheap."""
  import tensorflow_datasets as tfds

  class FlataiImages(tfds.core.GeneratorBasedBuilder):
    """Clean linear images from a directory tree."""
    VERSION = tfds.core.Version("1.0.0")
    # No checksums/URLs to resolve; also avoids TFDS locating the source folder
    # through importlib.resources, which fails under editable installs.
    code_path = None

    def __init__(self, *, input_dir=".", min_size=64, val_percent=10, **kwargs):
      self._input_dir = Path(input_dir)
      self._min_size, self._val_percent = min_size, val_percent
      self.skipped: list[dict] = []
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(None, None, None), dtype=np.float32,
                                        encoding="zlib"),
          "path": tfds.features.Text(),
          "shape": tfds.features.Tensor(shape=(3,), dtype=np.int32),
          "scale": tfds.features.Scalar(dtype=np.float32),
      }))

    def _split_generators(self, dl_manager):
      files = sorted(p for p in self._input_dir.rglob("*")
                     if p.is_file() and p.name.lower().endswith(SUFFIXES))
      good = {"train": [], "validation": []}
      for p in files:
        rel = str(p.relative_to(self._input_dir))
        try:
          to_training_image(p, self._min_size)
        except images.ImageError as e:
          self.skipped.append({"path": rel, "reason": e.problem})
          continue
        good[split_of(rel, self._val_percent)].append(p)
      others = sorted(str(p.relative_to(self._input_dir)) for p in self._input_dir.rglob("*")
                      if p.is_file() and not p.name.lower().endswith(SUFFIXES))
      self.skipped += [{"path": o, "reason": "unsupported file type"} for o in others]
      return {split: self._generate_examples(paths) for split, paths in good.items()}

    def _generate_examples(self, paths):
      for p in paths:
        pixels, meta = to_training_image(p, self._min_size)
        rel = str(p.relative_to(self._input_dir))
        yield rel, {"image": pixels, "path": rel, "scale": np.float32(meta["scale"]),
                    "shape": np.asarray(pixels.shape, np.int32)}

  return FlataiImages


def build_dataset(input_dir, data_dir, min_size: int = 64, val_percent: int = 10) -> dict:
  """Builds the dataset; returns the summary (counts per split, skipped files with reasons)."""
  import tensorflow_datasets as tfds
  input_dir = Path(input_dir)
  if not input_dir.is_dir():
    raise FileNotFoundError(f"{input_dir}: input directory not found")
  builder = _builder_class()(input_dir=input_dir, min_size=min_size, val_percent=val_percent,
                             data_dir=str(data_dir), file_format="array_record")
  out = Path(data_dir) / "build_summary.json"
  if Path(builder.data_dir).exists() and out.exists():  # already built: TFDS reuses it
    return json.loads(out.read_text())
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
  counts = {s: builder.info.splits[s].num_examples for s in ("train", "validation")
            if s in builder.info.splits}
  summary = {"input_dir": str(input_dir), "examples": counts,
             "skipped": sorted(builder.skipped, key=lambda d: d["path"])}
  write_text_atomic(out, json.dumps(summary, indent=2))
  return summary


def load_split(data_dir, split: str):
  """Random-access source of a built split (``image``, ``path``, ``shape``, ``scale``)."""
  builder = _builder_class()(data_dir=str(data_dir), file_format="array_record")
  return builder.as_data_source()[split]
