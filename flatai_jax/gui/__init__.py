"""``flatai gui``: the local web app (:mod:`flatai_jax.gui.app`)."""
