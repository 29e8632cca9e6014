"""Diffusion-conditioned view and pose synthesis (GAS-style) feeding the fitter."""
