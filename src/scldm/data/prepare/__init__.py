"""Preparers: raw corpora on disk → a prepared dataset folder (manifest.jsonl + audio + faces)."""
