"""Rendering: Gaussian splatting."""
