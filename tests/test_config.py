"""Config variants and overrides."""
import subprocess
import sys

import jax
import pytest

from configs.default import SIZES, TASKS, get_config
from flatai_jax.config_args import parse_arg
from flatai_jax.models import build_model
from flax import nnx


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("size", SIZES)
def test_every_variant_resolves(task, size):
  c = get_config(f"{task},{size}")
  assert c.task == task and c.size == size
  assert c.degrade.apply_flat == (task in ("flat", "combined"))
  assert c.degrade.apply_psf == (task in ("psf", "combined"))
  depth = len(c.model.width_multipliers) - 1
  assert c.data.crop_size % 2 ** depth == 0 and c.predict.tile % 2 ** depth == 0
  assert c.predict.overlap <= c.predict.tile // 2


def test_quickstart_is_small_and_base_is_the_pytorch_original_size():
  def count(cfg):
    m = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(get_config("flat,quickstart")) < 2e6
  assert 34e6 < count(get_config("flat,base")) < 44e6


def test_arguments_are_typed_and_strict():
  a = parse_arg("psf,seed=7,fast=false", {"task": ("flat", "psf")}, task="flat", seed=0, fast=True)
  assert (a.task, a.seed, a.fast) == ("psf", 7, False)
  with pytest.raises(ValueError, match="unknown config variant 'blurry'"):
    parse_arg("blurry", {"task": ("flat",)}, task="flat")
  with pytest.raises(ValueError, match="unknown config argument 'lr'"):
    parse_arg("lr=3", {"task": ("flat",)}, task="flat")
  with pytest.raises(ValueError, match="expected true or false"):
    parse_arg("fast=maybe", {}, fast=True)
  assert get_config("combined,quickstart,channels=3").data.channels == 3


def test_command_line_overrides_apply():
  """``--config.x.y=v`` flags reach the config the CLI uses (absl + config_flags)."""
  code = (
      "import sys\n"
      "from absl import app, flags\n"
      "from ml_collections import config_flags\n"
      "config_flags.DEFINE_config_file('config', None, lock_config=True)\n"
      "def main(_):\n"
      "  c = flags.FLAGS.config\n"
      "  print(c.task, c.train.steps, c.optim.learning_rate, c.data.crop_size)\n"
      "app.run(main)\n")
  out = subprocess.run([sys.executable, "-c", code, "--config=configs/default.py:psf,quickstart",
                        "--config.train.steps=200", "--config.optim.learning_rate=0.01"],
                       capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["psf", "200", "0.01", "64"]
