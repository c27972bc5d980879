"""The layout's promises: correction apart from training and evaluation; small shipped models."""
import subprocess
import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "flatai_jax" / "assets"

PROBE = """
import sys
import flax.nnx, orbax.checkpoint  # what every model import needs (flax.nnx itself imports optax)
before = set(sys.modules)
import flatai_jax.correct
print("\\n".join(sorted(set(sys.modules) - before)))
"""


def test_correct_imports_nothing_of_training_or_evaluation():
  out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parents[1]).stdout.split()
  forbidden = ("flatai_jax.train", "flatai_jax.evaluation", "flatai_jax.losses", "flatai_jax.data",
               "optax", "grain", "clu", "tensorflow", "tensorflow_datasets")
  bad = [m for m in out if m.split(".")[0] in forbidden or m.startswith(forbidden)]
  assert not bad, bad
  assert "flatai_jax.models.forward" in out and "flatai_jax.checkpointing" in out


def _size_mb(path: Path) -> float:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20


def test_shipped_models_are_parameters_and_config_only():
  for name in ("default_model", "frame_model"):
    folder = ASSETS / name
    assert (folder / "model.json").is_file() and (folder / "config.json").is_file()
    assert not (folder / "checkpoints").exists()  # no optimizer state, no data position
  assert _size_mb(ASSETS / "default_model") <= 2.5  # 0.57 M float32 parameters
