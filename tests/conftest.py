"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))


def tiny_config(task="flat", **overrides):
  """The quickstart config shrunk further for tests (fast compile, seconds per step)."""
  from configs.default import get_config
  c = get_config(f"{task},quickstart")
  c.model.base_width = 8
  c.model.width_multipliers = (1, 2, 4)
  c.model.groups = 4
  c.data.crop_size = 32
  c.data.sensor_hw = (96, 128)
  c.sky.max_stars = 16
  c.sky.psf_size = 9
  c.train.batch_size = 8
  c.train.steps = 4
  c.train.log_every = 2
  c.train.sample_every = 4
  c.train.checkpoint_every = 2
  c.eval.num_examples = 8
  c.eval.batch_size = 8
  c.predict.tile = 32
  c.predict.overlap = 8
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:  # a stale knob name would silently test nothing
      raise KeyError(f"tiny_config: no config field {key!r}")
    node[leaf] = value
  return c


@pytest.fixture
def tiny():
  return tiny_config
