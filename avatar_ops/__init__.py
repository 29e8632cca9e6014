"""avatar_ops: the operators that turn a photo into an animatable Gaussian avatar.

This package holds the maths and the operators; it imports torch, never ray.
"""

__version__ = "0.1.0"
