"""Image file input/output and display stretches. Imports nothing else of flatai_jax."""
