"""PRNG streams: every ``jax.random.fold_in`` number of the project, named in one table.

Every random number descends from one of two roots: ``key(config.seed)`` and
``key(config.eval.seed)`` (held-out data never meets a training key). A stream
is ``fold_in(parent, NUMBER)``; the numbers are part of what a config means, so
changing one changes every run, checkpoint comparison and stored test value.

=================  ======  ===============  =============================================
parent             number  name             keys of
=================  ======  ===============  =============================================
key(seed)          0       DATA             training examples (``train_step``)
key(seed)          1       INIT             model parameter initialisation
key(seed)          2       SYNTH            ``flatai synth`` examples
SYNTH key          7       SYNTH_PANELS     the artifact sheet of ``flatai synth``
key(eval.seed)     —       (the root)       held-out crops (``evaluation.crops``)
key(eval.seed)     7       EVAL_FRAMES      held-out full frames (``evaluation.frames``)
example key        1       DEGRADE          the forward model of one example
example key        2       AUGMENT          augmentation of one clean crop
DEGRADE key        5       PSF              the optical system of one example
=================  ======  ===============  =============================================

An *example key* is ``fold_in(fold_in(stream, step), example_index)``
(``data.synthetic.example_keys``), so the data are a pure function of the step
and the same on any number of devices. Splits inside one generator
(``jax.random.split``) are local to that function and not listed here.

Constants only: no imports, so every layer (physics included) may use it.
"""

# Children of key(config.seed).
DATA = 0
INIT = 1
SYNTH = 2
# Child of the SYNTH key.
SYNTH_PANELS = 7
# Child of key(config.eval.seed).
EVAL_FRAMES = 7
# Children of an example key.
DEGRADE = 1
AUGMENT = 2
# Child of the DEGRADE key.
PSF = 5
