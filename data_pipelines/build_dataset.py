"""Run-once job: turn a folder of clean images into the TFDS array_record dataset.

  python data_pipelines/build_dataset.py INPUT_DIR OUTPUT_DIR [--min_size 128] [--val_percent 10]

Same as ``flatai build_dataset --input_dir=… --output_dir=…`` (see flatai_jax/data/image_dataset.py
for the conversion rules). Prints the counts and every skipped file with its reason.
"""
import argparse
import json

from flatai_jax.data.image_dataset import build_dataset

if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("input_dir")
  p.add_argument("output_dir")
  p.add_argument("--min_size", type=int, default=128)
  p.add_argument("--val_percent", type=int, default=10)
  a = p.parse_args()
  print(json.dumps(build_dataset(a.input_dir, a.output_dir, a.min_size, a.val_percent), indent=2))
