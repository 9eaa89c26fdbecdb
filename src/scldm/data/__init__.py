"""Prepared datasets: the manifest format, speaker-disjoint splits, datasets and preparers."""
