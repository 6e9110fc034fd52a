"""Shared pytest setup: CPU-only, deterministic, quiet."""

import os

# Tests never need an accelerator; keep JAX on the CPU even where one is present.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
