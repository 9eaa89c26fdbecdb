"""Training stages; the only package that imports accelerate."""
