"""Gaussian avatars: reconstruction, fitting, animation, export."""
