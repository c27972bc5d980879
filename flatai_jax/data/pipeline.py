"""Host-side input pipelines: what each process feeds the train step.

Two sources, one interface (``next_batch(step) -> dict of numpy``, ``get_state``,
``set_state``):

- procedural (default): only example indices; the position is the step.
- images: a grain pipeline over the TFDS array_record dataset of the user's
  images (``data.image_dataset``): shuffle with a seed, repeat, per-process
  slice, random crops with their *global* offsets (so coordinate channels are
  right), worker processes and prefetch. A fraction of the slots
  (``config.data.procedural_fraction``) can still be procedural skies. The
  grain iterator state goes into every checkpoint.

Flips, quarter turns and intensity scaling happen on device in the train step
(``data.augment``) for both sources.
"""
from __future__ import annotations

import json
from pathlib import Path

import grain
import numpy as np

from flatai_jax.data import indices as data_indices
from flatai_jax.io.atomic import write_text_atomic


def _fit_channels(image: np.ndarray, channels: int) -> np.ndarray:
  if image.shape[-1] == channels:
    return image
  if channels == 1:
    return image.mean(axis=-1, keepdims=True)
  return np.repeat(image[..., :1], channels, axis=-1)


class RandomCrop(grain.transforms.RandomMap):
  """A ``crop × crop`` window at a random position, with its offset and the frame size."""

  def __init__(self, crop: int, channels: int):
    self.crop, self.channels = crop, channels

  def random_map(self, record, rng: np.random.Generator):
    image = record["image"]
    h, w = image.shape[:2]
    y = int(rng.integers(0, h - self.crop + 1))
    x = int(rng.integers(0, w - self.crop + 1))
    crop = _fit_channels(image[y:y + self.crop, x:x + self.crop], self.channels)
    return {"clean": np.ascontiguousarray(crop, np.float32),
            "offset": np.asarray([y, x], np.float32),
            "sensor_hw": np.asarray([h, w], np.float32)}


def crop_stream(source, config, process_index: int, process_count: int) -> grain.IterDataset:
  """Infinite per-process stream of crops from a random-access ``source``."""
  ds = grain.MapDataset.source(source).seed(config.seed).shuffle().repeat(None)
  ds = ds[process_index::process_count]
  ds = ds.random_map(RandomCrop(config.data.crop_size, config.data.channels))
  it = ds.to_iter_dataset()
  if config.data.workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (defaults are fine)
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.workers))
  return it


def is_real_slot(index: np.ndarray, procedural_fraction: float) -> np.ndarray:
  """Which global example indices take a real crop (deterministic, ~(1 - fraction) of them)."""
  return (index * 0.6180339887498949) % 1.0 >= procedural_fraction


class Pipeline:
  """Per-process batches for the train step, resumable."""

  def __init__(self, config, process_index: int = 0, process_count: int = 1, source=None):
    self.config = config
    self.batch = int(config.train.batch_size)
    self.pi, self.pc = process_index, process_count
    self.real = config.data.source == "images"
    self._it = None
    self._state = None
    if self.real:
      if source is None:
        from flatai_jax.data import image_dataset
        source = image_dataset.load_split(config.data.tfds_dir, "train")
      self._it = iter(crop_stream(source, config, process_index, process_count))

  def next_batch(self, step: int) -> dict:
    """``(B_local,)`` indices and, for image data, crops/offsets/frame sizes/real flags."""
    index = data_indices.process_indices(step, self.batch, self.pi, self.pc)
    out = {"index": index}
    if not self.real:
      return out
    c, k = self.config.data.channels, self.config.data.crop_size
    real = is_real_slot(index, self.config.data.procedural_fraction)
    clean = np.zeros((len(index), k, k, c), np.float32)
    offset = np.zeros((len(index), 2), np.float32)
    sensor = np.tile(np.asarray(self.config.data.sensor_hw, np.float32), (len(index), 1))
    for i in np.flatnonzero(real):
      ex = next(self._it)
      clean[i], offset[i], sensor[i] = ex["clean"], ex["offset"], ex["sensor_hw"]
    return {**out, "clean": clean, "offset": offset, "sensor_hw": sensor, "real": real}

  def get_state(self) -> dict | None:
    """This process's grain iterator state (JSON-able), None for procedural data."""
    return self._it.get_state() if self.real else None

  def set_state(self, state: dict | None) -> None:
    if self.real:
      if state is None:
        raise ValueError("no image-pipeline state saved for this checkpoint")
      self._it.set_state(state)

  def save_state(self, workdir, step: int) -> None:
    """Writes this process's iterator state for ``step`` (before the checkpoint is saved)."""
    if not self.real:
      return
    write_text_atomic(Path(workdir) / "data_state" / f"{step}.{self.pi}.json",
                      json.dumps(self.get_state()))

  def restore_state(self, workdir, step: int) -> None:
    if not self.real:
      return
    path = Path(workdir) / "data_state" / f"{step}.{self.pi}.json"
    if not path.exists():
      raise FileNotFoundError(f"{path}: image-pipeline state of step {step} for process "
                              f"{self.pi} is missing (resume with the same process count)")
    self.set_state(json.loads(path.read_text()))
