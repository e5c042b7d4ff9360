"""Single cells from the trained VAE: per-type cells, rates and the bulk-informed shifts."""
