"""Notebook 11's own code (notebooks/11_drift_detection.ipynb)."""
