"""The VAE, its training, the device it runs on and its checkpoints."""
