"""Host side of the procedural pipeline: which example indices each process feeds.

Procedural skies need no files: a step's global batch is the indices
``[step * B, (step + 1) * B)``; each process takes its contiguous slice. The
position is therefore a pure function of the step, and resuming at step s
reproduces the data order exactly.
"""
from __future__ import annotations

import numpy as np


def process_indices(step: int, global_batch: int, process_index: int,
                    process_count: int) -> np.ndarray:
  """``(global_batch // process_count,) int32`` indices of this process at ``step``."""
  if global_batch % process_count:
    raise ValueError(f"batch size {global_batch} is not divisible by {process_count} processes")
  local = global_batch // process_count
  start = step * global_batch + process_index * local
  return np.arange(start, start + local, dtype=np.int32)


def iterator_state(step: int, global_batch: int) -> dict:
  """JSON-able data position saved with each checkpoint."""
  return {"source": "procedural", "next_step": int(step),
          "next_example": int(step * global_batch)}
