"""Evaluation, in one package (like big_vision's ``evaluators/``).

- ``crops``: held-out crop metrics, jitted; the only part training imports.
- ``frames``: the full-frame report (``flatai evaluate``, ``flatai_jax.evaluate``).
- ``quality``: image-quality metrics (PSNR, SSIM, F/G errors, dust, corners).
- ``baselines``: classical background/flat corrections (polynomial, RBF, median flat).
- ``stars``: star detection and PSF measurements.
- ``report``: the report's JSON, Markdown and PNG writers.
"""
