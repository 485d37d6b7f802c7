"""The Wan2.1 model family: the causal DiT, its RoPE, text encoder, VAE and loading."""
