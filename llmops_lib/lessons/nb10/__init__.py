"""Notebook 10's own code (notebooks/10_packaging_a_service.ipynb)."""
