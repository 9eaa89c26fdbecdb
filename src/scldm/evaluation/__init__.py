"""Evaluation: metrics, feature and attribute extractors (the SynthVox oracle among them)."""
