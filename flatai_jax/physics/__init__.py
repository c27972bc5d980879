"""Pure-JAX physics of image formation. Imports nothing else of flatai_jax but the PRNG
stream table (``flatai_jax.rng``, constants only)."""
