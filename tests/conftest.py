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
  """``configs/default.py:<task>,tiny`` with ``overrides`` (dotted field → value), as
  ``--config.<field>=<value>`` would set them."""
  from configs.default import get_config
  c = get_config(f"{task},tiny")
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
