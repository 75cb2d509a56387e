"""Neon's trainer (`neon-train`), evaluation and Hugging Face Jobs scripts. Imports `neon`, never `neon_runtime`."""
