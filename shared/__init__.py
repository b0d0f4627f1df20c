"""Code that both services use: data, networks, checkpoints, image pipeline, metrics and settings."""
