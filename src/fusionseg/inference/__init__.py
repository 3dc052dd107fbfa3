"""Whole-case inference: slice-wise prediction and label-map writing."""
