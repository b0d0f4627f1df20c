"""Helpers for the reliability tests (the inference tests' helpers are in tests/inference/helpers.py)."""

# Small limits, so every one of them can be exceeded cheaply (the defaults are 10 MiB, 40 MP, 256, 16 MiB).
SMALL_LIMITS = dict(max_batch_size=16, max_image_bytes=200_000, max_image_pixels=4_000_000, max_message_bytes=1_000_000)
