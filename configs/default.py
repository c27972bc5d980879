"""FlatAI-JAX training configuration: task × size variants.

Commands (run from the repository root):

  flatai train --config=configs/default.py:flat,quickstart --workdir=runs/quick
  flatai train --config=configs/default.py:combined,base --workdir=runs/base \
      --config.train.batch_size=64
  flatai train --config=configs/default.py:psf,large,seed=7 --workdir=runs/large
  flatai train --config=configs/default.py:flat,tiny --workdir=/tmp/tiny

Arguments: task ``flat | psf | combined``; size ``tiny | quickstart | base | large``
(tiny: the tests' 4-step run, 32-px crops, seconds per step; quickstart: 0.57 M
parameters, 64-px crops, minutes on 2 CPU cores; base: the PyTorch original's 36.3 M network;
large: 1.5× wider); ``seed=N``; ``channels=1|3``.

Coupled fields are derived, not copied: ``predict.tile`` follows
``data.crop_size`` and ``predict.overlap`` is a quarter of the tile, unless
overridden themselves. ``flatai_jax.config_validate`` checks every loaded config.
"""
import ml_collections

from flatai_jax.config_args import parse_arg
from flatai_jax.config_validate import CHOICES

TASKS = CHOICES["task"]
SIZES = ("tiny", "quickstart", "base", "large")


def get_config(arg=None):
  arg = parse_arg(arg, choices={"task": TASKS, "size": SIZES},
                  task="flat", size="base", seed=0, channels=1)
  c = ml_collections.ConfigDict()
  c.task = arg.task
  c.size = arg.size
  c.seed = arg.seed  # base of every PRNG key: same config → same run

  # --- Data: clean images and where crops sit on the sensor -----------------
  c.data = ml_collections.ConfigDict()
  c.data.source = "procedural"  # 'procedural' skies made on device, or 'images' (tfds_dir)
  c.data.tfds_dir = ""  # data_dir given to `flatai build_dataset` (source='images')
  c.data.procedural_fraction = 0.0  # source='images': share of examples that are procedural skies
  c.data.workers = 0  # grain worker processes for image decoding/cropping (0 = in-process)
  c.data.channels = arg.channels  # 1 mono, 3 RGB
  c.data.crop_size = 128  # training crop side, px (multiple of 2**depth)
  c.data.sensor_hw = (2048, 3072)  # virtual sensor (H, W), px; crops get its global coordinates
  c.data.whole_frame = False  # True: examples are whole frames of sensor_hw (configs/frame.py)

  # --- Procedural sky (units: 1.0 = saturation) -----------------------------
  c.sky = ml_collections.ConfigDict()  # physics/sky.py; distribution specs as in c.degrade.flat
  c.sky.background = (0.01, 0.08)  # sky level, sky units
  c.sky.max_stars = 400  # static upper bound of stars per crop (padded by psf_size // 2)
  c.sky.star_fraction = (0.2, 1.0)  # share of max_stars present in a normal field
  c.sky.sparse_probability = 0.15  # frames that are sparse fields
  c.sky.sparse_fraction = (0.0, 0.1)  # share of max_stars present in a sparse field
  c.sky.cluster_probability = 0.15  # frames with a star cluster
  c.sky.cluster_fraction = 0.5  # share of the star slots in the cluster
  c.sky.cluster_radius_px = ("loguniform", 3.0, 30.0)  # Plummer radius of a cluster, px
  c.sky.star_flux_min = 0.02  # faintest star, total flux (sum over its pixels), sky units
  c.sky.star_flux_alpha = 1.3  # power-law index of N(>flux) ∝ flux^-alpha (truncated)
  c.sky.star_flux_max = 60.0  # brightest star total flux (saturates its core)
  c.sky.star_temperature_k = ("loguniform", 3000.0, 15000.0)  # RGB: black-body colour temperature, K
  c.sky.max_galaxies = 3  # static number of galaxy slots per crop
  c.sky.galaxy_probability = 0.3  # chance that each slot holds a galaxy
  c.sky.sersic_index = (0.5, 4.0)  # Sérsic n (0.5 ≈ Gaussian, 1 disc, 4 de Vaucouleurs)
  c.sky.galaxy_radius_px = ("loguniform", 1.5, 12.0)  # effective (half-light) radius, px
  c.sky.galaxy_axis_ratio = (0.3, 1.0)  # minor / major axis
  c.sky.galaxy_flux = ("loguniform", 0.3, 20.0)  # total flux, sky units
  c.sky.fwhm_px = (1.8, 4.0)  # seeing FWHM, px
  c.sky.moffat_beta = 3.0  # Moffat index of star profiles
  c.sky.psf_size = 25  # star rendering kernel side, px (odd)
  c.sky.nebula_probability = 0.5  # fraction of frames with nebulosity
  c.sky.nebula_amplitude = (0.02, 0.3)  # nebula brightness, sky units
  c.sky.dark_lane_probability = 0.5  # nebulous frames with absorbing dark lanes
  c.sky.dark_lane_depth = (0.5, 3.0)  # peak optical depth scale of the lanes

  # --- Degradation: the forward model's random parts -------------------------
  c.degrade = ml_collections.ConfigDict()
  c.degrade.apply_flat = arg.task in ("flat", "combined")
  c.degrade.apply_psf = arg.task in ("psf", "combined")
  c.degrade.saturation = 1.0  # full-well level in sky units
  f = c.degrade.flat = ml_collections.ConfigDict()  # physics/flat.py; distributions: physics/distributions.py
  # A distribution is (low, high) uniform, ('loguniform', low, high), ('normal', mean, sd) or ('fixed', v).
  f.pixel_size_um = 3.76  # sensor pixel pitch, µm (dust optics in mm → px on the virtual sensor)
  f.vignetting = True
  f.vignetting_strength = (0.0, 0.4)  # corner darkening s: corner/centre = 1 - s (0.6 … 1.0)
  f.mechanical_fraction = (0.0, 1.0)  # share of ln(corner/centre) from the mechanical clip (rest: cos⁴)
  f.mechanical_onset = (0.5, 0.9)  # field radius where the mechanical clip starts (1 = corner)
  f.centre_offset = (-0.1, 0.1)  # optical-axis offset per axis, sensor half-widths/half-heights
  f.asymmetry = (0.0, 0.08)  # ellipticity of the falloff (radii × 1 ± a), random orientation
  f.dust = True
  f.max_dust = 6  # static upper bound of dust particles per frame
  f.dust_mean = 2.5  # Poisson mean number of particles per frame (capped at max_dust)
  f.dust_distance_mm = ("loguniform", 0.3, 3.0)  # particle-to-sensor distance d, mm
  f.focal_ratio = (4.0, 8.0)  # beam focal ratio N: shadow diameter ≈ d / N
  f.exit_pupil_mm = (80.0, 600.0)  # exit-pupil distance L, mm: sets the off-axis shift d·tanθ
  f.obstruction_probability = 0.5  # share of frames from an obstructed telescope (ring shadows)
  f.obstruction = (0.25, 0.45)  # central obstruction ratio (diameters) when obstructed
  f.dust_depth = ("loguniform", 0.005, 0.10)  # fractional darkening inside the shadow (0.5 … 10 %)
  f.dust_softness = (0.05, 0.2)  # edge width, fraction of the shadow radius
  f.dust_cluster_probability = 0.1  # frames whose particles cluster around one point, at one distance
  f.dust_cluster_spread = (0.03, 0.15)  # cluster RMS radius, sensor half-widths
  f.specks = True
  f.max_specks = 2  # static number of speck slots per frame
  f.speck_probability = 0.05  # chance that each slot holds a bright speck
  f.speck_gain = (0.02, 0.15)  # F excess at a speck's centre (relative)
  f.speck_sigma_px = (0.6, 1.5)  # speck Gaussian sigma, px
  f.prnu = True
  f.prnu_sigma = (0.002, 0.01)  # pixel-scale response non-uniformity, relative RMS
  f.prnu_blotches = True
  f.prnu_blotch_sigma = (0.0, 0.01)  # low-frequency PRNU blotches, relative RMS
  f.prnu_blotch_scales_px = (8, 16, 32)  # blotch octaves, px (each < crop size)
  f.gradient_level = (0.0, 0.05)  # additive pedestal (always present), sky units
  f.gradient = True
  f.gradient_slope = (0.0, 0.02)  # linear gradient per sensor half-width, random direction
  f.quadratic = True
  f.quadratic_amplitude = (0.0, 0.01)  # quadratic gradient (x², y², xy) coefficient norm, sky units
  f.dome = True
  f.dome_probability = 0.4  # frames with a light-pollution dome from one side
  f.dome_amplitude = (0.005, 0.05)  # dome level at its side (direction · coords = 1), sky units
  f.dome_scale = (0.3, 1.5)  # dome e-folding distance, global coordinate units (1 = half the sensor)
  f.dome_colour = (1.0, 0.8, 0.55)  # RGB relative colour of light pollution (R, G, B)
  f.glow = True
  f.glow_probability = 0.3  # frames with amplifier glow at a corner or an edge midpoint
  f.glow_amplitude = (0.005, 0.05)  # glow level at its site, sky units
  f.glow_scale = (0.05, 0.3)  # glow e-folding distance, sensor half-widths
  f.channel_spread = 0.1  # RGB: relative per-channel spread of each G component's colour
  p = c.degrade.psf = ml_collections.ConfigDict()  # optics: physics/psf.py, optics.py, convolve.py
  p.n_pupil = 64  # pupil samples across the diameter (rays beyond q·n_pupil/2 px would wrap)
  p.q = 2.0  # PSF sampling, detector px per λ/D at the reference wavelength (≥ 2: Nyquist)
  p.oversample = 4  # sub-samples per pixel side summed into each pixel (pixel integration)
  p.kernel_size = 31  # PSF side, px (odd); each PSF sums to 1 over it
  p.num_modes = 11  # Noll modes carried, j = 1 … num_modes (≥ 11: up to primary spherical)
  p.obstruction = 0.0  # central obstruction, fraction of the pupil diameter (0 = refractor)
  p.spider_vanes = 0  # straight spider vanes from the centre (0 = none)
  p.spider_width = 0.01  # vane width, fraction of the pupil diameter
  p.wavelengths = (1.0,)  # band, λ / λ_ref; e.g. (0.85, 1.0, 1.15) for a polychromatic PSF
  p.wavelength_weights = (1.0,)  # relative photon weight of each wavelength
  p.pupil_supersample = 4  # sub-samples per pupil sample side for anti-aliased pupil edges
  p.grid = (3, 3)  # PSF nodes (rows, cols) across each crop; bilinear in between
  # Random optical system per example; waves RMS at λ_ref; field |h| = 1 at the sensor corner.
  p.defocus = (-0.1, 0.1)  # constant Z4, uniform range
  p.spherical = (-0.05, 0.05)  # constant Z11, uniform range
  p.trefoil = (0.0, 0.05)  # constant Z9/Z10 magnitude, uniform range, random orientation
  p.coma = (-0.2, 0.2)  # Z7/Z8 at the corner, ∝ h, radial; > 0 = flare pointing outwards
  p.astigmatism = (-0.15, 0.15)  # Z5/Z6 at the corner, ∝ h², oriented with the field angle
  p.field_curvature = (-0.12, 0.12)  # Z4 added at the corner, ∝ h²
  p.sensor_tilt = 0.06  # max Z4 gradient per unit field (random direction): tilted sensor
  n = c.degrade.noise = ml_collections.ConfigDict()
  n.enabled = True
  n.full_well_e = (8000.0, 50000.0)  # electrons at saturation (1.0 sky units), sets shot noise
  n.read_noise_e = (1.5, 8.0)  # read noise, electrons RMS

  # --- Augmentation of clean crops, in the train step ---------------------
  c.augment = ml_collections.ConfigDict()
  c.augment.flips = True  # random left-right flip
  c.augment.rot90 = True  # random quarter turns (square crops)
  c.augment.intensity_scale = (0.7, 1.4)  # log-uniform brightness factor; (1, 1) = off

  # --- Model ----------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.base_width = 64  # width of the first level
  c.model.width_multipliers = (1, 2, 4, 8, 16)  # per level; last = bottleneck
  c.model.norm = "group"  # 'group' (GroupNorm) | 'layer' (LayerNorm over channels) | 'none'
  c.model.groups = 32  # GroupNorm groups (gcd with each width is used)
  c.model.up_block = "conv"  # decoder upsampling: 'conv' (×2 + conv3×3) | 'resblock' (×2 + ResBlock)
  c.model.coord_inputs = True  # feed the global (x, y) coordinate channels
  c.model.noise_input = True  # feed the noise-level map
  c.model.attention_gates = True  # additive attention gates on the skip connections
  c.model.bottleneck_heads = 0  # self-attention heads at the bottleneck (0 = off)
  c.model.f_max = 3.0  # F bounded to [1/f_max, f_max]
  c.model.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16'
  c.model.remat = False  # rematerialise residual blocks
  c.model.input = "observed"  # 'observed' | 'deconvolved': the physics deconvolution first (configs/psf.py)
  c.model.deconvolve_iterations = 60  # 'deconvolved': cap on the in-step Richardson–Lucy iterations
  c.model.residual_bound = 0.0  # psf: > 0 bounds the residual to ± this many noise σ (configs/psf.py)
  c.model.zernike_head = False  # psf/combined: predict Noll coefficients (waves) at degrade.psf.grid nodes

  # --- Loss weights ---------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.clean_l1 = 1.0  # L1 of the corrected image vs the truth after removing the mean difference
  c.loss.log_f_l1 = 1.0  # L1 of log F vs the known F
  c.loss.g_l1 = 1.0  # L1 of G vs the known G after removing the mean difference, normalised units
  c.loss.pedestal_l1 = 0.1  # L1 of the mean of G (the sky/G pedestal split), normalised units
  c.loss.consistency = 0.5  # predicted clean re-rendered with the true F, G, PSF vs observed
  c.loss.flux = 0.0  # relative total-flux error of the corrected image
  c.loss.smooth_f = 0.0  # roughness of log F beyond the true field's
  c.loss.smooth_g = 0.0  # roughness of G beyond the true field's
  c.loss.lpips = 0.1  # LPIPS of the display-transformed corrected vs clean image (PyTorch FlatAI: AlexNet)
  c.loss.style = 0.0  # VGG16 Gram-matrix style loss, same inputs (G = F Fᵀ / (C·H·W))
  c.perceptual = ml_collections.ConfigDict()  # settings of the lpips / style terms
  c.perceptual.lpips_net = "alex"  # LPIPS backbone: 'alex' (fast) or 'vgg'
  c.perceptual.style_layers = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")  # VGG16 taps in style
  c.perceptual.softening = 0.1  # asinh knee of the display transform, normalised units
  c.perceptual.dtype = "float32"  # compute dtype of the loss nets: 'float32' or 'bfloat16'
  c.perceptual.weights_dir = ""  # folder of lpips_{vgg,alex}.npz ("" = flatai_jax/assets)
  c.loss.zernike_psf = 0.0  # Zernike head: Σ|PSF re-rendered − true PSF| per node (0 … 2), mean

  # --- Optimiser ------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 3e-4  # peak learning rate
  c.optim.warmup_steps = 200
  c.optim.weight_decay = 1e-4  # AdamW decoupled weight decay
  c.optim.clip_norm = 1.0  # global-norm clipping of the true gradients
  c.optim.grad_accum = 1  # micro-batches per update (scanned inside one step)
  c.optim.ema_decay = 0.0  # EMA of parameters for evaluation (0 = off, e.g. 0.999)
  c.optim.max_nonfinite = 10  # consecutive NaN/Inf updates skipped before the run fails

  # --- Training loop --------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.steps = 100_000
  c.train.batch_size = 16  # global batch, divisible by the number of devices
  c.train.log_every = 50  # steps between metric writes
  c.train.sample_every = 1000  # steps between sample-grid / loss-curve PNGs
  c.train.checkpoint_every = 1000  # steps between checkpoints
  c.train.eval_every = 5000  # steps between held-out evaluations (0 = only at the end)
  c.train.max_to_keep = 3  # checkpoints kept
  c.train.init_params = ""  # exported model or run dir whose parameters start a new run (a
  #                           fine-tune: fresh optimizer and schedule; ignored when resuming)
  c.train.profile_steps = ()  # (first, last) step of a jax.profiler trace in <workdir>/profile

  # --- Mesh -----------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel axis size (-1 = all remaining devices)
  c.mesh.fsdp = 1  # parameter-sharding axis size
  c.mesh.rules = (("conv_out", "fsdp"),)  # logical parameter axis → mesh axis

  # --- Evaluation and correction -------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.num_examples = 64  # fixed held-out set size
  c.eval.batch_size = 16
  c.eval.seed = 1_000_003  # held-out keys never meet training keys
  c.eval.set_path = ""  # stored held-out set (.npz from data_pipelines/make_eval_set.py); "" = generate
  c.eval.num_frames = 4  # full sensor frames scored by `flatai evaluate` (model and baselines)
  c.eval.frame_psf_grid = (5, 5)  # PSF nodes (rows, cols) across an evaluation frame
  c.eval.max_stars = 200  # stars measured per frame (psf/combined), brightest isolated unsaturated
  c.eval.baseline_degree = 3  # polynomial background baseline: total degree (Siril: 1–4)
  c.eval.baseline_grid = 16  # background sample boxes along the frame's shorter side
  c.eval.median_size = 0.125  # median-filter flat baseline: window, fraction of the shorter side
  c.predict = ml_collections.ConfigDict()
  c.predict.tile = c.data.get_oneway_ref("crop_size")  # tile side at correction time, px
  c.predict.overlap = c.predict.get_ref("tile") // 4  # tile overlap, px (≤ tile / 2)
  c.predict.batch_size = 8  # tiles per forward pass
  c.predict.match_tiles = True  # solve per-tile G pedestals so overlapping tiles agree (flat/combined)
  c.predict.auto_strength = True  # whole-frame models: scale the correction back where it does not flatten

  if arg.size in ("tiny", "quickstart"):
    _quickstart(c)
  if arg.size == "tiny":
    _tiny(c)
  elif arg.size == "large":
    _large(c)
  return c


def _quickstart(c):
  """0.57 M parameters on 64-px crops: trains in minutes on 2 CPU cores."""
  c.model.base_width = 16
  c.model.width_multipliers = (1, 2, 4, 8)
  c.model.groups = 8
  c.data.crop_size = 64
  c.data.sensor_hw = (384, 576)
  c.sky.max_stars = 60
  c.sky.psf_size = 15
  c.degrade.psf.grid = (2, 2)  # PSF nodes on the 64-px crop's corners (4 PSFs per example)
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 50
  c.train.steps = 600
  c.loss.lpips = 0.0  # pretrained nets off: CPU training stays fast
  c.train.batch_size = 8
  c.train.log_every = 20
  c.train.sample_every = 200
  c.train.checkpoint_every = 200
  c.train.eval_every = 0
  c.eval.num_examples = 32
  c.eval.batch_size = 8
  c.eval.num_frames = 2


def _tiny(c):
  """Quickstart shrunk for tests (big_vision's ``runlocal``): 3 levels of 8-32 channels on
  32-px crops of a 96×128 sensor, 4 steps, a checkpoint every 2; seconds per step on CPU."""
  c.model.base_width = 8
  c.model.width_multipliers = (1, 2, 4)
  c.model.groups = 4
  c.data.crop_size = 32
  c.data.sensor_hw = (96, 128)
  c.sky.max_stars = 16
  c.sky.psf_size = 9
  c.train.steps = 4
  c.train.log_every = 2
  c.train.sample_every = 4
  c.train.checkpoint_every = 2
  c.eval.num_examples = 8


def _large(c):
  """1.5× wider than base, bottleneck attention, bf16 compute, 256-px crops."""
  c.model.base_width = 96
  c.model.bottleneck_heads = 8
  c.model.dtype = "bfloat16"
  c.perceptual.dtype = "bfloat16"
  c.model.remat = True
  c.data.crop_size = 256
