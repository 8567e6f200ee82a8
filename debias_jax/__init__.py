"""debias_jax: loss weightings for diffusion models (Unmasking Bias in Diffusion Model Training, ECCV 2024)."""
