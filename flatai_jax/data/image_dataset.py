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
  An empty split is allowed (a note says so). When the hash leaves no image
  for training (a folder of one or two images), all of them train.

Bad files (unreadable, truncated, all-NaN, NaN pixels, smaller than
``min_size``, unsupported) are skipped and listed, with the reason, in
``<data_dir>/build_summary.json``; one bad file never stops the build. A
folder without any usable image, and training on a folder that holds no
finished dataset, raise :class:`DatasetError` with one line.
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
VERSION = "1.0.0"
SPLITS = ("train", "validation")
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


class DatasetError(ValueError):
  """No usable images to build from, or no finished dataset to train on."""


def split_of(relative_path: str, val_percent: int) -> str:
  digest = hashlib.sha256(relative_path.encode()).digest()
  return "validation" if int.from_bytes(digest[:4], "little") % 100 < val_percent else "train"


def plan_splits(input_dir, min_size: int, val_percent: int):
  """Which file goes to which split, and which files are skipped.

  Returns:
    ``({"train": [Path], "validation": [Path]}, skipped [{"path", "reason"}], notes [str])``.
  Raises:
    DatasetError: when no file is usable.
  """
  input_dir = Path(input_dir)
  files = sorted(p for p in input_dir.rglob("*") if p.is_file())
  plan, skipped, notes = {s: [] for s in SPLITS}, [], []
  for p in files:
    rel = str(p.relative_to(input_dir))
    if not p.name.lower().endswith(SUFFIXES):
      skipped.append({"path": rel, "reason": "unsupported file type"})
      continue
    try:
      to_training_image(p, min_size)
    except images.ImageError as e:
      skipped.append({"path": rel, "reason": e.problem})
      continue
    plan[split_of(rel, val_percent)].append(p)
  usable = len(plan["train"]) + len(plan["validation"])
  if not usable:
    first = f"; {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
    raise DatasetError(f"{input_dir}: no usable images among {len(files)} file(s){first}")
  if not plan["train"]:
    plan = {"train": plan["validation"], "validation": []}
    notes.append(f"note: all {usable} image(s) fell in the {val_percent} % validation share; "
                 "they all train and the validation split is empty")
  elif not plan["validation"] and val_percent > 0:
    notes.append(f"note: the validation split is empty ({usable} image(s), none in the "
                 f"{val_percent} % share); training does not need it")
  return plan, sorted(skipped, key=lambda d: d["path"]), notes


@functools.cache
def _builder_class():
  """The TFDS builder, defined on first use so that importing this module stays cheap."""
  import tensorflow_datasets as tfds

  class FlataiImages(tfds.core.GeneratorBasedBuilder):
    """Clean linear images from a directory tree."""
    VERSION = tfds.core.Version(VERSION)
    # No checksums/URLs to resolve; also avoids TFDS locating the source folder
    # through importlib.resources, which fails under editable installs.
    code_path = None

    def __init__(self, *, input_dir=".", plan=None, min_size=64, **kwargs):
      self._input_dir, self._plan, self._min_size = Path(input_dir), plan, min_size
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(None, None, None), dtype=np.float32,
                                        encoding="zlib"),
          "path": tfds.features.Text(),
          "shape": tfds.features.Tensor(shape=(3,), dtype=np.int32),
          "scale": tfds.features.Scalar(dtype=np.float32),
      }))

    def _log_download_bytes(self):  # TFDS's "Downloading and preparing dataset Unknown
      pass  # size ..." lines: nothing is downloaded; build_dataset's summary says what was built

    def _log_download_done(self):
      pass

    def _split_generators(self, dl_manager):
      """One generator per non-empty split of the plan (TFDS refuses empty splits)."""
      return {split: self._generate_examples(paths) for split, paths in self._plan.items()
              if paths}

    def _generate_examples(self, paths):
      for p in paths:
        pixels, meta = to_training_image(p, self._min_size)
        rel = str(p.relative_to(self._input_dir))
        yield rel, {"image": pixels, "path": rel, "scale": np.float32(meta["scale"]),
                    "shape": np.asarray(pixels.shape, np.int32)}

  return FlataiImages


def build_dataset(input_dir, data_dir, min_size: int = 64, val_percent: int = 10) -> dict:
  """Builds the dataset; returns the summary (counts per split, skipped files with reasons,
  notes such as an empty validation split).

  Raises:
    FileNotFoundError: no ``input_dir``.
    DatasetError: no usable image in it.
  """
  import tensorflow_datasets as tfds
  input_dir = Path(input_dir)
  if not input_dir.is_dir():
    raise FileNotFoundError(f"{input_dir}: input directory not found")
  out = Path(data_dir) / "build_summary.json"
  if (Path(data_dir) / NAME / VERSION / "dataset_info.json").exists() and out.exists():
    return json.loads(out.read_text())  # already built: TFDS reuses it
  plan, skipped, notes = plan_splits(input_dir, min_size, val_percent)
  builder = _builder_class()(input_dir=input_dir, plan=plan, min_size=min_size,
                             data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
  summary = {"input_dir": str(input_dir),
             "examples": {s: len(paths) for s, paths in plan.items()},
             "skipped": skipped, "notes": notes}
  out.parent.mkdir(parents=True, exist_ok=True)
  write_text_atomic(out, json.dumps(summary, indent=2))
  return summary


def check_built(data_dir) -> None:
  """Raises :class:`DatasetError` (one line) unless ``data_dir`` holds a finished dataset."""
  build = ("build one with `flatai build_dataset --input_dir=IMAGES "
           f"--output_dir={data_dir or 'DIR'}`")
  if not data_dir:
    raise DatasetError(f"data.source=images needs --config.data.tfds_dir; {build}")
  if not Path(data_dir).is_dir():
    raise DatasetError(f"{data_dir}: dataset folder not found; {build}")
  if not (Path(data_dir) / NAME / VERSION / "dataset_info.json").is_file():
    raise DatasetError(f"{data_dir}: no finished dataset in this folder (its build did not "
                       f"complete, or it is not a dataset folder); {build}")


def load_split(data_dir, split: str):
  """Random-access source of a built split (``image``, ``path``, ``shape``, ``scale``).

  Raises:
    DatasetError: no finished dataset in ``data_dir``, or no such split in it.
  """
  check_built(data_dir)
  builder = _builder_class()(data_dir=str(data_dir), file_format="array_record")
  if split not in builder.info.splits:
    raise DatasetError(f"{data_dir}: the dataset has no {split!r} split "
                       f"(it has {sorted(builder.info.splits)})")
  return builder.as_data_source()[split]
