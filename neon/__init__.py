"""Neon: a frozen vision-language backbone sees, small trainable heads act, for the Unitree G1."""

__version__ = "0.1.0"
