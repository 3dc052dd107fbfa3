"""Data layer: case discovery, NIfTI I/O, validation, preprocessing cache, samplers,
synthetic phantoms. Knows files and modalities, never models."""
