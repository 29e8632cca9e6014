"""Storage (fsspec URIs) and image decoding."""
