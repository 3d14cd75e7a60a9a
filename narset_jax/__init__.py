"""narset-jax."""
