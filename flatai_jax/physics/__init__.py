"""Pure-JAX physics of image formation. Imports nothing else of flatai_jax."""
