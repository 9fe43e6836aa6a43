"""Notebook 06's own code (notebooks/06_guard_companion.ipynb)."""
