"""Experiment runner (train, cross-validate, compare) and reports."""
