"""Aberration correction: the physics deconvolution, then a learned cleanup (issue 15).

Commands (run from the repository root):

  flatai train --config=configs/psf.py:quickstart --workdir=runs/psf_cleanup
  flatai train --config=configs/psf.py:base --workdir=runs/psf_base --config.train.batch_size=64

The network does not learn deconvolution: it sees the frame already deconvolved to the target
PSF by the spatially varying Richardson–Lucy of ``physics/deconvolve.py`` (``model.input =
'deconvolved'``; in training the RL runs inside the jitted step with each crop's true PSF
field and the correction's restoration rule for the seeing the crop keeps, at correction time
with the field fitted to the frame's stars), and learns to remove
what that leaves — the noise it amplified and its ringing — towards the clean sky seen through
the target PSF (the diffraction-limited one; Tikhonet-style, Sureau et al. 2020). So a crop
need not hold a 40-px corner PSF, and CPU-sized training suffices. Its residual is bounded to
``model.residual_bound`` noise σ (``models/unet.py``): unbounded, the first trained cleanup dug
−54 σ holes beside the evaluation's 7500 σ stars, far outside what it had seen.

The optics are drawn wider than the default config's: corners up to several times the
centre's FWHM (coma to 0.7 waves RMS, astigmatism 0.4, field curvature 0.35), seeing 0.6–3 px
on top; star fields dense and sparse, clusters, galaxies and nebulae (``configs/default.py``'s
sky). The PSF sampling (λ/D = ``q`` = 2 px), pupil and kernel are static shapes of one model.

Arguments: as ``configs/default.py`` (``quickstart | base | large``, ``seed=N``,
``channels=1|3``); the task is always ``psf``.
"""
from flatai_jax.config_args import default_config


def get_config(arg=None):
  c = default_config("psf" if not arg else f"psf,{arg}")  # configs/default.py, mutated
  c.model.input = "deconvolved"
  c.model.deconvolve_iterations = 60
  c.model.residual_bound = 8.0  # the cleanup moves a pixel by at most ~8 noise σ
  c.model.coord_inputs = False  # after deconvolution the residue does not depend on the field
  c.data.crop_size = 128  # ≥ 4 PSF kernels: RL's stars see their whole PSF
  # the cleanup is local: a 16-px blend between its 128-px tiles scores as the default 32 px
  # (README "The cleanup's tiles") at 27 % less work on a large frame
  c.predict.overlap = 16
  c.data.sensor_hw = (1024, 1536)
  c.degrade.apply_flat = False
  c.degrade.psf.grid = (3, 3)
  p = c.degrade.psf
  p.coma = (-0.7, 0.7)
  p.astigmatism = (-0.4, 0.4)
  p.field_curvature = (-0.35, 0.35)
  p.defocus = (-0.15, 0.15)
  p.sensor_tilt = 0.08
  c.sky.fwhm_px = (0.6, 3.0)  # seeing on top of the optics
  # Stars up to ~10⁴ σ above the sky (a deep frame's bright stars; 10× the default's full well)
  c.degrade.noise.full_well_e = ("loguniform", 8000.0, 500000.0)
  c.loss.consistency = 0.0  # the output is at the target PSF, not the clean sky
  c.loss.lpips = 0.0
  c.loss.clean_l1 = 1.0
  if c.size == "quickstart":
    c.sky.max_stars = 200  # the default's density on a 128-px crop
    c.sky.psf_size = 15
    c.train.steps = 1500
    c.train.checkpoint_every = 100
    c.optim.learning_rate = 1e-3
  return c
