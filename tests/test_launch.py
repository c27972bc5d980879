"""Every launcher runs the same `flatai train` command; --dry-run shows it."""
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/default.py:combined,base"


def dry_run(script, *args):
  out = subprocess.run(["bash", f"launch/{script}", "--dry-run", f"CONFIG={CONFIG}",
                        "WORKDIR=runs/t", *args, "--config.train.steps=7"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
  return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


def _train_args(words):
  i = words.index("flatai")
  return words[i:i + 2] + sorted(words[i + 2:])


EXPECTED = ["flatai", "train"] + sorted([f"--config={CONFIG}", "--config.train.steps=7",
                                         "--workdir=runs/t"])


@pytest.mark.parametrize("script", ["local.sh", "gpu.sh", "slurm.sbatch"])
def test_single_command_launchers(script):
  (words,) = dry_run(script)
  assert _train_args(words) == EXPECTED
  if script == "slurm.sbatch":
    assert words[0] == "srun"


def test_multiprocess_launcher_numbers_the_processes():
  lines = dry_run("multiprocess.sh", "NPROC=3", "DEVICES=2", "PORT=5555")
  assert len(lines) == 3
  for i, words in enumerate(lines):
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=2" in words
    assert {"--coordinator_address=localhost:5555", "--num_processes=3",
            f"--process_id={i}", f"--config={CONFIG}", "--workdir=runs/t"} <= set(words)


@pytest.mark.parametrize("script", ["tpu_vm.sh", "xpk.sh"])
def test_remote_launchers_run_flatai_train_on_every_worker(script):
  lines = dry_run(script, "TPU=t1", "CLUSTER=c1")
  remote = lines[-1]
  command = next(w for w in remote if w.startswith("--command="))[len("--command="):]
  words = ["flatai" if w.endswith("/flatai") else w for w in shlex.split(command)]
  assert _train_args(words) == EXPECTED
  if script == "tpu_vm.sh":
    assert all("--worker=all" in l for l in lines)
