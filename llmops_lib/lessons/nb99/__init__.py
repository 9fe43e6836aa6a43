"""Notebook 99's own code (notebooks/99_wrap_up.ipynb)."""
