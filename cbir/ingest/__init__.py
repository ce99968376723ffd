"""Ingest: scan a folder, decode images in parallel, encode in batches, persist, index."""
