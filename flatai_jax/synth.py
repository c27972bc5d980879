"""``flatai synth``: write degraded examples with their truth, to look at what the model learns from.

Uses exactly the training generators (procedural sky → forward model), so
what you see is what the train step makes; full frames come from the one
full-frame generator ``data.synthetic.make_full_frames`` that ``flatai evaluate`` uses.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flatai_jax import metrics, rng
from flatai_jax.data import synthetic
from flatai_jax.io import images
from flatai_jax.io.atomic import write_text_atomic
from flatai_jax.physics import flat, geometry
from flatai_jax.physics.sky import fractal_noise

ZOOM = 96  # side of the zoomed panels (specks, pixel PRNU), px


def synth_key(config):
  """Base key of synth examples, distinct from training and evaluation keys."""
  return jax.random.fold_in(jax.random.key(config.seed), rng.SYNTH)


def make_examples(config, num: int, full_frame: bool = False) -> dict[str, np.ndarray]:
  """``num`` examples in linear units.

  Args:
    config: full config.
    num: number of examples.
    full_frame: render the whole virtual sensor (``config.data.sensor_hw``)
      instead of training crops, with ``data.synthetic.make_full_frames`` (the
      training crops' star density, as ``flatai evaluate``'s frames).
  Returns:
    dict of ``(num, H, W, C) float32``: ``observed``, ``clean``, ``F``, ``G``;
    for the psf/combined tasks also ``psf`` ``(num, gy, gx, k, k)``, the true
    PSFs at the grid nodes (a full frame gets ``config.eval.frame_psf_grid``
    nodes, since the training grid spans only one crop).
  """
  if full_frame:
    return synthetic.make_full_frames(synth_key(config), config, num, with_dust=False)

  @jax.jit
  def one(key):
    clean, coords = synthetic.procedural_example(key, config)
    deg = synthetic.degrade_example(key, clean, coords, config)
    extra = {"psf": deg["psf"]} if "psf" in deg else {}
    return {"observed": deg["observed"], "clean": clean, "F": deg["F"], "G": deg["G"], **extra}

  keys = synthetic.example_keys(synth_key(config), 0, np.arange(num, dtype=np.int32))
  outs = [jax.device_get(one(keys[i])) for i in range(num)]
  return {k: np.stack([o[k] for o in outs]) for k in outs[0]}


def _forced(cfg, **changes):
  out = copy.deepcopy(cfg)
  for k, v in changes.items():
    out[k] = v
  return out


def artifact_panels(config, example=None) -> dict[str, tuple[np.ndarray, str]]:
  """Every artifact type alone on the full virtual sensor, then a whole example.

  ``example``: a dict of ``(H, W, C)`` ``F``, ``G``, ``clean``, ``observed``
  to show last; default: a full-frame example from :func:`make_examples`.

  Parameters come from ``config.degrade.flat`` with the artifact's presence
  probability set to 1; specks and pixel PRNU are shown zoomed (``ZOOM`` px).
  Returns title → (``(H, W, C)`` array, ``"field"`` | ``"image"``) for
  :func:`metrics.save_panel_grid`.
  """
  sensor = tuple(int(v) for v in config.data.sensor_hw)
  c = config.data.channels
  base = _forced(config.degrade.flat, dust_mean=float(config.degrade.flat.max_dust),
                 speck_probability=1.0, dome_probability=1.0, glow_probability=1.0,
                 obstruction_probability=0.0, dust_cluster_probability=0.0)
  ring = _forced(base, obstruction_probability=1.0)
  cluster = _forced(base, dust_cluster_probability=1.0)
  g_off = dict(gradient=False, quadratic=False, dome=False, glow=False)
  only = lambda **on: _forced(base, **{**g_off, **on})
  key = jax.random.fold_in(synth_key(config), rng.SYNTH_PANELS)

  def panels(key):  # (title, field) in display order
    ks = jax.random.split(key, 6)
    coords = geometry.frame_coords(jnp.zeros(2), sensor, jnp.asarray(sensor, jnp.float32))
    p = flat.draw_flat_params(ks[0], base, c)
    p_ring = flat.draw_flat_params(ks[1], ring, c)
    p_cluster = flat.draw_flat_params(ks[2], cluster, c)
    speck_px = (p.speck_xy[0] * 0.5 + 0.5) * jnp.array([sensor[1], sensor[0]], jnp.float32)
    offset = jnp.clip(jnp.round(speck_px[::-1]) - ZOOM // 2, 0,
                      jnp.array(sensor, jnp.float32) - ZOOM)
    zoom = geometry.frame_coords(offset, (ZOOM, ZOOM), jnp.asarray(sensor, jnp.float32))
    no_pedestal = p._replace(level=jnp.float32(0.0))
    field = lambda x: x[..., None]
    g_only = lambda **on: flat.additive_field(no_pedestal, coords, only(**on), sensor)
    blotches = fractal_noise(ks[4], sensor, tuple(base.prnu_blotch_scales_px), slope=0.0)
    return [
        ("F: vignetting (cos⁴ + mechanical)", field(flat.vignetting(p, coords, sensor))),
        ("F: dust, unobstructed (discs)", field(flat.dust_shadows(p, coords, base, sensor))),
        ("F: dust, obstructed (rings)", field(flat.dust_shadows(p_ring, coords, ring, sensor))),
        ("F: dust cluster", field(flat.dust_shadows(p_cluster, coords, cluster, sensor))),
        (f"F: bright speck ({ZOOM} px)", field(flat.specks(p, zoom, sensor))),
        (f"F: pixel PRNU ({ZOOM} px)",
         1.0 + p.prnu_sigma * jax.random.normal(ks[3], (ZOOM, ZOOM, c))),
        ("F: PRNU blotches", field(1.0 + p.blotch_sigma * blotches)),
        ("G: linear + quadratic gradient", g_only(gradient=True, quadratic=True)),
        ("G: light-pollution dome", g_only(dome=True)),
        ("G: amplifier glow", g_only(glow=True)),
    ]

  titles = []  # filled while tracing: strings cannot leave a jitted function

  def arrays(k):
    titled = panels(k)
    titles[:] = [t for t, _ in titled]
    return [v for _, v in titled]

  values = jax.device_get(jax.jit(arrays)(key))
  out = {t: (np.asarray(v), "field") for t, v in zip(titles, values)}
  if example is None:
    example = {k: v[0] for k, v in make_examples(config, 1, full_frame=True).items()}
  out["F (all)"] = (example["F"], "field")
  out["G (all)"] = (example["G"], "field")
  out["clean"] = (example["clean"], "image")
  out["observed"] = (example["observed"], "image")
  return out


def point_source_grid(shape_hw, spacing: int) -> np.ndarray:
  """``(H, W, 1)`` zeros with a unit point source every ``spacing`` px (half a spacing from the edges)."""
  img = np.zeros(tuple(shape_hw) + (1,), np.float32)
  img[spacing // 2::spacing, spacing // 2::spacing] = 1.0
  return img


def psf_panels(config, psfs: np.ndarray, shape_hw) -> dict[str, tuple[np.ndarray, str]]:
  """What the optics do across the frame: the true PSF grid, and a grid of point sources seen
  through that PSF field (whole frame, then zooms on the centre and a corner).

  Args:
    psfs: ``(gy, gx, k, k)`` PSFs of one example (``make_examples(...)["psf"][i]``).
    shape_hw: the example's ``(H, W)``.
  """
  from flatai_jax.physics import optics
  h, w = (int(v) for v in shape_hw)
  k = psfs.shape[-1]
  stars = optics.blur(jnp.asarray(point_source_grid((h, w), 2 * k)), jnp.asarray(psfs))
  stars = np.asarray(jax.device_get(stars))
  z = min(4 * k, h // 2, w // 2)
  gy, gx = psfs.shape[:2]
  return {f"true PSFs at the {gy}×{gx} nodes": (metrics.psf_mosaic(psfs[None])[0], "image"),
          "point sources through the field": (stars, "image"),
          f"centre ({z} px)": (stars[(h - z) // 2:(h + z) // 2, (w - z) // 2:(w + z) // 2], "image"),
          f"top-left corner ({z} px)": (stars[:z, :z], "image"),
          f"bottom-right corner ({z} px)": (stars[-z:, -z:], "image")}


def write_examples(config, output_dir, num: int, full_frame: bool = False) -> list[Path]:
  """Writes ``NNNN_{observed,clean,F,G}.fits``, ``contact_sheet.png`` (observed / clean / F / G
  per example) and ``artifacts.png`` (:func:`artifact_panels`); for the psf/combined tasks also
  ``NNNN_psf.fits`` (the PSF grid as a mosaic) and ``psf_field.png`` (:func:`psf_panels`).
  Returns the FITS paths."""
  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  ex = make_examples(config, num, full_frame)
  paths = []
  for i in range(num):
    for name in ("observed", "clean", "F", "G"):
      p = out / f"{i:04d}_{name}.fits"
      images.write_image(p, ex[name][i], history=f"flatai synth {name}, task={config.task}, "
                         f"seed={config.seed}, example={i}")
      paths.append(p)
    if "psf" in ex:
      p = out / f"{i:04d}_psf.fits"
      images.write_image(p, metrics.psf_mosaic(ex["psf"][i:i + 1])[0],
                         history=f"flatai synth true PSF grid {ex['psf'].shape[1:3]}, "
                         f"task={config.task}, seed={config.seed}, example={i}")
      paths.append(p)
  sheet = {"observed": ex["observed"], "clean": ex["clean"], "F": ex["F"], "G": ex["G"]}
  if "psf" in ex:
    sheet["PSF grid"] = metrics.psf_mosaic(ex["psf"])
    metrics.save_panel_grid(out / "psf_field.png",
                            psf_panels(config, ex["psf"][0], ex["observed"].shape[1:3]), cols=5)
  metrics.save_sample_grid(out / "contact_sheet.png", sheet, max_rows=min(num, 8))
  first = {k: v[0] for k, v in ex.items()}
  metrics.save_panel_grid(out / "artifacts.png", artifact_panels(config, first), cols=7)
  write_text_atomic(out / "synth_config.json",
                    json.dumps(json.loads(config.to_json_best_effort()), indent=2))
  return paths
