"""Run-once job: write the fixed held-out evaluation set with its checksum.

  python data_pipelines/make_eval_set.py --config=configs/default.py:combined,base --output=data/eval_combined.npz

The set (observed, noise map, coordinates, clean, F, G, PSF grid, normalisation) is generated from
``config.eval.seed`` by the training generators; rebuilding it gives the identical file (checked by
the checksum in ``<output>.sha256``). Use it with ``--config.eval.set_path=<output>`` so that numbers
compare across runs and code versions.
"""
from absl import app, flags
from ml_collections import config_flags

from flatai_jax.config_validate import validate
from flatai_jax.evaluation import crops

config_flags.DEFINE_config_file("config", None, "Config file with ':arguments'.")
flags.DEFINE_string("output", None, "Output .npz path.", required=True)


def main(_):
  config = flags.FLAGS.config
  validate(config)
  data = crops.make_eval_set(config)
  digest = crops.save_eval_set(data, flags.FLAGS.output)
  n = next(iter(data.values())).shape[0]
  print(f"wrote {n} examples to {flags.FLAGS.output} (sha256 {digest})")


if __name__ == "__main__":
  app.run(main)
