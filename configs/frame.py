"""Frame-level flat/background correction: the *global stage* sees the whole frame at once.

Commands (run from the repository root):

  flatai train --config=configs/frame.py:quickstart --workdir=runs/frame
  flatai train --config=configs/frame.py:base --workdir=runs/frame_base --config.train.batch_size=64

Vignetting, gradients, domes and glow are frame-scale: one tile cannot tell them
from sky. Here the model is trained on *whole virtual frames at the working
grid* (``data.sensor_hw``, landscape 96 × 128): ``flatai correct`` bins a real
frame robustly to that grid (block medians reject stars and hot pixels; portrait
frames are turned), predicts log F and G for the whole frame in one pass and
upsamples them smoothly to full resolution, so F and G are band-limited fields
and ``(observed − G) / F`` passes pixel noise and stars through unchanged.

One grid cell is ``b`` sensor pixels (b ≈ 10–60 for 1–60 Mpx cameras), so the
physics is rendered for big pixels: the pixel pitch is ``b`` times a real one
(dust shadows d/N shrink to grid scale), the noise of a block median of b² pixels
is that of a full well b² times larger, pixel-scale PRNU averages away (not
estimated), and isolated stars vanish in the median (few, faint stars remain;
clusters, galaxies and nebulae that fill the frame stay).

Arguments: as ``configs/default.py`` (``quickstart | base | large``, ``seed=N``,
``channels=1|3``); the task is always ``flat``.
"""
from flatai_jax.config_args import default_config


def get_config(arg=None):
  c = default_config("flat" if not arg else f"flat,{arg}")  # configs/default.py, mutated
  c.data.whole_frame = True  # examples are whole frames at the working grid, not crops
  c.data.sensor_hw = (96, 128)  # working grid (H, W), cells; frames are binned to it
  c.data.crop_size = 128  # unused for whole frames beyond divisibility checks
  c.augment.rot90 = True  # half turns only: frames stay landscape
  c.model.base_width = 16 if c.size == "quickstart" else c.model.base_width
  c.model.width_multipliers = (1, 2, 4, 8, 8)  # 6 × 8 bottleneck: a whole-frame view
  c.model.groups = 8 if c.size == "quickstart" else c.model.groups
  c.model.bottleneck_heads = 4  # self-attention at the bottleneck: every cell sees every cell

  s = c.sky  # what survives a block median of a binned frame
  s.max_stars = 40
  s.star_fraction = (0.0, 1.0)
  s.star_flux_max = 5.0
  s.psf_size = 7
  s.fwhm_px = (0.8, 1.6)
  s.cluster_probability = 0.2
  s.cluster_radius_px = ("loguniform", 2.0, 20.0)
  s.max_galaxies = 2
  s.galaxy_probability = 0.35
  s.galaxy_radius_px = ("loguniform", 2.0, 60.0)  # up to a galaxy that fills the frame
  s.galaxy_flux = ("loguniform", 1.0, 3000.0)
  s.nebula_probability = 0.5
  s.nebula_amplitude = (0.02, 1.0)

  f = c.degrade.flat
  f.pixel_size_um = 40.0  # one grid cell ≈ 10 real 4-µm pixels (shadow size in cells ∝ 1/b)
  f.dust_distance_mm = ("loguniform", 0.2, 15.0)  # shadows ≈ 0.6 … 90 cells at f/4 … f/8
  f.focal_ratio = (2.0, 10.0)
  f.dust_mean = 3.0
  f.max_dust = 8
  f.dust_depth = ("loguniform", 0.003, 0.10)  # 0.3 … 10 %
  f.vignetting_strength = (0.0, 0.5)  # 0 … 50 % corner loss
  f.centre_offset = (-0.15, 0.15)
  f.asymmetry = (0.0, 0.2)  # also covers the squeeze of 4:3 … 16:9 frames onto the 3:4 grid
  f.prnu = False  # pixel-scale PRNU averages away in a block median; not estimated
  f.prnu_blotches = False
  f.specks = False
  f.gradient_level = (0.0, 0.1)
  f.gradient_slope = (0.0, 0.05)
  f.glow_scale = (0.03, 0.3)

  c.degrade.noise.full_well_e = ("loguniform", 1e5, 5e7)  # b² × a real full well (block median)
  c.degrade.noise.read_noise_e = (1.5, 8.0)

  c.loss.clean_l1 = 0.5
  c.loss.lpips = 0.0
  c.train.batch_size = 8
  if c.size == "quickstart":
    c.train.steps = 1500
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 50
    c.train.checkpoint_every = 250
    c.train.sample_every = 500
    c.train.log_every = 50
  c.predict.tile = 128  # unused by whole-frame models (kept for config validation)
  c.predict.overlap = 32
  return c
