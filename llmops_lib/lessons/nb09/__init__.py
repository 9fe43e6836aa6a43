"""Notebook 09's own code (notebooks/09_quantization_quality.ipynb)."""
